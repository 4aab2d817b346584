"""Training benchmark: tokens/s and MFU of `lrmerge train ct` on a Llama-architecture model under
several efficiency settings, and the peak memory of a CT job at two budgets / corpus sizes.

Everything is built here (cached under benchmarks/_work/train/): a randomly initialised
LlamaForCausalLM, a word-level tokenizer of the model's vocabulary size, and token shards of
random ids written with the data stage's shard writer. Each setting runs as its own process
(`lrmerge train ct`, the real loop: memory-mapped shards, AdamW, the schedule); tokens/s and MFU
come from its train_summary.json (MFU = tokens/s x FLOPs per token / peak, FLOPs per token =
6 x non-embedding parameters + 12 x layers x hidden x seq), peak RSS from GNU time.

  CPU (default)   a ~12M-parameter model (hidden 256, 4 layers, vocab 8,000), seq 256, fp32; the
                  peak is 0.157 TFLOPS (2 Zen 3 cores x 32 FLOP/cycle x 2.45 GHz)
  --gpu           a ~1.1B-parameter model (hidden 2048, 16 layers, 16 heads, intermediate 5632,
                  vocab 32,000), seq 2048, bf16 autocast, on one GPU; peak from the device table
                  (H100/H200 989 TFLOPS bf16). Goal (issue 7): >= 40% MFU.

Settings: default (SDPA attention, fused AdamW, no activation checkpointing), activation
checkpointing, eager attention, unfused AdamW, and with --compile torch.compile.
Memory: a CT job of budget B on a corpus of 1.25 B tokens and of budget 10 B on 12.5 B tokens
(tiny model); goal: peak RSS within 10%.

    .venv/bin/python benchmarks/bench_train.py [--gpu] [--compile] [--steps N] [--no-check]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "train"
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"

MODELS = {
    "cpu": dict(hidden=256, layers=4, heads=4, intermediate=688, vocab=8000, seq=256, batch=8,
                micro=4),
    "gpu": dict(hidden=2048, layers=16, heads=16, intermediate=5632, vocab=32000, seq=2048,
                batch=16, micro=4),
    "tiny": dict(hidden=64, layers=2, heads=2, intermediate=172, vocab=2000, seq=128, batch=8,
                 micro=8),
}
SETTINGS = {
    "default (sdpa, fused AdamW)": {},
    "activation checkpointing": {"activation_checkpointing": True},
    "eager attention": {"attention": "eager"},
    "unfused AdamW": {"fused_adamw": False},
}


def build(name: str, spec: dict, corpus_tokens: int) -> Path:
    """Model folder (random Llama + tokenizer) and a token folder of random ids."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lrmerge.data.shards import ShardWriter
    from lrmerge.data.tokenize import tokenizer_identity

    root = WORK / name
    model_dir, tokens_dir = root / "model", root / f"tokens_{corpus_tokens}"
    if not (model_dir / "config.json").exists():
        vocab = {f"w{i}": i for i in range(spec["vocab"] - 1)} | {"<eos>": spec["vocab"] - 1}
        wl = Tokenizer(WordLevel(vocab, unk_token="w0"))
        wl.pre_tokenizer = WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<eos>", pad_token="<eos>")
        conf = LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"],
                           intermediate_size=spec["intermediate"],
                           num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                           max_position_embeddings=spec["seq"], eos_token_id=spec["vocab"] - 1)
        torch.manual_seed(0)
        LlamaForCausalLM(conf).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    if not (tokens_dir / "manifest.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
        w = ShardWriter(tokens_dir, spec["vocab"], 1 << 30)
        rng = np.random.default_rng(0)
        left = corpus_tokens
        while left > 0:
            n = min(left, 1 << 22)
            w.add(rng.integers(0, spec["vocab"] - 1, n), np.array([n]))
            left -= n
        w.finish({"kind": "corpus", "lang": "bn", "tokenizer": tokenizer_identity(tok),
                  "allow_repeat": False})
    return root


def run(name: str, spec: dict, corpus_tokens: int, budget: int, overrides: dict, device: str,
        tag: str) -> dict:
    root = build(name, spec, corpus_tokens)
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    cfg["languages"] = {"bn": {"name": "bench", "budgets": [budget], "tasks": ["topic_bn"],
                               "corpus": {"kind": "generated"}}}
    cfg["merge"]["multi"] = []
    ct = cfg["continual_pretrain"]
    ct.update(batch_size=spec["batch"], micro_batch_size=spec["micro"], seq_len=spec["seq"],
              english_ratio=0.0, checkpoint_every=0, log_every=1000, warmup_steps=0,
              device=device, save_dtype="float32",
              precision="bf16" if device == "cuda" else "fp32",
              peak_tflops=None if device == "cuda" else 0.157)
    ct.update(overrides)
    config = root / f"config_{tag}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = root / f"run_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run([TIME, "-f", "%M", str(BIN / "lrmerge"), "train", "ct", "--config",
                        str(config), "--lang", "bn", "--tokens", str(budget), "--init",
                        str(root / "model"), "--data", str(root / f"tokens_{corpus_tokens}"),
                        "--out", str(out), "--threads", str(os.cpu_count())],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{tag}: lrmerge train ct failed\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    s = json.loads((out / "train_summary.json").read_text())
    s["rss_mb"] = int(r.stderr.strip().splitlines()[-1]) / 1024
    s["process_s"] = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the ~1B model on one GPU, bf16")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per setting")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if args.gpu else "cpu"
    spec = MODELS[kind]
    steps = args.steps or (20 if args.gpu else 12)
    budget = steps * spec["batch"] * spec["seq"]
    settings = dict(SETTINGS)
    if args.compile:
        settings["torch.compile"] = {"compile": True}
    rows = {}
    for label, overrides in settings.items():
        tag = label.split(" ")[0].replace("(", "").replace(".", "_")
        rows[label] = run(kind, spec, budget, budget, overrides,
                          "cuda" if args.gpu else "cpu", tag)
    first = next(iter(rows.values()))
    print(f"\n{kind}: Llama hidden {spec['hidden']}, {spec['layers']} layers, vocab "
          f"{spec['vocab']}, seq {spec['seq']}, {spec['batch']} sequences per step "
          f"(micro-batch {spec['micro']}), {steps} steps; FLOPs per token "
          f"{first['flops_per_token'] / 1e9:.3f} G; peak {first['peak_tflops']} TFLOPS")
    print(f"{'setting':<30}{'tokens/s':>12}{'MFU':>8}{'vs default':>12}{'peak mem GB':>13}")
    base = first["tokens_per_s"]
    for label, s in rows.items():
        mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a"
        print(f"{label:<30}{s['tokens_per_s']:>12,.0f}{mfu:>8}{s['tokens_per_s'] / base:>11.2f}x"
              f"{s['peak_mem_gb']:>13.2f}")
    ok = True
    if args.gpu:
        best = max(s["mfu"] or 0 for s in rows.values())
        print(f"best MFU {best:.1%} (goal >= 40%)")
        ok = best >= 0.40
    else:
        # memory: budget and corpus 10x larger, the same peak RSS (tiny model, fast)
        t = MODELS["tiny"]
        small = 100 * t["batch"] * t["seq"]
        mem = {n: run("tiny", t, int(n * 1.25), n, {}, "cpu", f"mem{n}") for n in
               (small, 10 * small)}
        a, b = mem[small]["rss_mb"], mem[10 * small]["rss_mb"]
        print(f"\nCT job peak RSS: {a:.0f} MB at budget {small:,} (corpus {int(small * 1.25):,}"
              f" tokens), {b:.0f} MB at budget {10 * small:,} (corpus "
              f"{int(12.5 * small):,}): {b / a - 1:+.1%} (goal within 10%)")
        ok = abs(b / a - 1) <= 0.10
    (WORK / f"results_{kind}.json").write_text(json.dumps(
        {k: {f: v[f] for f in ("tokens_per_s", "mfu", "peak_mem_gb", "flops_per_token")}
         for k, v in rows.items()}, indent=2))
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
