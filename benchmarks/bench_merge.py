"""Merge engine benchmark: `lrmerge merge` against `mergekit-yaml` and a plain safetensors script.

Builds (once, cached under benchmarks/_work/) three random Llama checkpoints in bf16 -- a base and
two fine-tunes (base + independent noise) -- then runs, side by side in one run, each as its own
process:

  mergekit-yaml   TIES (density 0.2), linear, task_arithmetic   (YAML: dtype float32, out bf16)
  lrmerge merge   on the SAME YAML files, and (lrmerge only, native configs) TIES-SV (slack 0.1),
                  TIES-SV with slack: auto (target 0.05), chat_vector (ratio 1: its output must
                  equal mergekit's task_arithmetic with weights 1, 1) and layer_swap (bottom 4,
                  top 2, transition 1 of the full size's 16 layers; 2, 1, 1 of the quick size's 8)
  plain script    reads the three models with safetensors and writes one

Each process is measured for wall time (perf_counter around the process) and peak resident memory:
the kernel's high-water mark of the process as GNU time reports it (`/usr/bin/time -f %M`), or the
largest sum of RSS over its process tree seen by psutil polling every 20 ms, whichever is larger.
lrmerge is run once, unmeasured, before the measured runs so that numba's one-time JIT compile
(cached on disk afterwards) is not counted; that first run's time is printed.

Targets (issue 2, TIES): >= 10x faster than mergekit, <= 0.5x its peak memory, <= 2x the plain
script's time. Exit status 1 when one is missed (unless --no-check). Outputs of lrmerge and mergekit
are compared tensor by tensor (max abs difference, number of differing entries).

    .venv/bin/python benchmarks/bench_merge.py [--quick] [--repeat N] [--no-check]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"

SIZES = {
    # ~271M parameters (518 MB in bf16), as the reference points in paper-recipe.md
    "full": dict(hidden=1024, layers=16, heads=16, intermediate=2816, vocab=32000),
    # ~34M parameters, a smoke run
    "quick": dict(hidden=512, layers=8, heads=8, intermediate=1408, vocab=8000),
}
TARGETS = {"speedup": 10.0, "memory_ratio": 0.5, "vs_plain": 2.0}
LRMERGE_ONLY = {"ties_sv", "ties_auto", "chat_vector", "layer_swap"}  # against the plain script
SAME_AS_MERGEKIT = {"chat_vector": "task_arithmetic"}  # ratio 1: weights (1, 1)


# ---------------------------------------------------------------------------------------------
# inputs


def llama_config(hidden, layers, heads, intermediate, vocab) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (h, h)
        shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, i)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048}))


def build_models(work: Path, size: str) -> dict[str, Path]:
    """base, ft1 = base + noise, ft2 = base + other noise (bf16). Cached: rebuilt only when the
    size spec changes."""
    import torch
    from safetensors.torch import save_file

    root = work / f"models_{size}"
    spec = SIZES[size]
    marker = root / "spec.json"
    paths = {name: root / name for name in ("base", "ft1", "ft2")}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cfg = llama_config(**spec)
    shapes = tensor_shapes(cfg)
    print(f"building {size} models ({sum(_numel(s) for s in shapes.values()) / 1e6:.0f}M "
          f"parameters each) under {root}", flush=True)
    gen = torch.Generator().manual_seed(1234)
    base = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen) * 0.02
        if "norm" in name:
            t = t + 1.0
        base[name] = t.to(torch.bfloat16)
    for key, noise in (("base", None), ("ft1", 0.004), ("ft2", 0.006)):
        folder = paths[key]
        folder.mkdir()
        if noise is None:
            tensors = base
        else:
            tensors = {n: (b.float() + torch.randn(b.shape, generator=gen) * noise).to(
                torch.bfloat16) for n, b in base.items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        (folder / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
        write_tokenizer(folder, cfg["vocab_size"])
        del tensors
    marker.write_text(json.dumps(spec))
    return paths


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_configs(work: Path, paths: dict[str, Path], layers: int) -> dict[str, Path]:
    import yaml

    models = [str(paths["ft1"]), str(paths["ft2"])]
    configs = {
        "ties": {"merge_method": "ties", "base_model": str(paths["base"]),
                 "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.2}}
                            for m in models],
                 "dtype": "float32", "out_dtype": "bfloat16"},
        "linear": {"merge_method": "linear",
                   "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
                   "dtype": "float32", "out_dtype": "bfloat16"},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(paths["base"]),
                            "models": [{"model": m, "parameters": {"weight": 1.0}}
                                       for m in models],
                            "dtype": "float32", "out_dtype": "bfloat16"},
        # lrmerge only (mergekit has no TIES-SV): the study's method, native config
        "ties_sv": {"method": "ties_sv", "base": str(paths["base"]),
                    "models": [{"path": models[0], "name": "ct"}, {"path": models[1], "name": "sft"}],
                    "density": 0.2, "slack": 0.1, "protect": "sft", "out_dtype": "bfloat16"},
        "ties_auto": {"method": "ties_sv", "base": str(paths["base"]),
                      "models": [{"path": models[0], "name": "ct"},
                                 {"path": models[1], "name": "sft"}],
                      "density": 0.2, "slack": "auto", "target_discarded": 0.05,
                      "protect": "sft", "out_dtype": "bfloat16"},
        "chat_vector": {"method": "chat_vector", "base": str(paths["base"]),
                        "models": [{"path": models[0], "name": "ct"},
                                   {"path": models[1], "name": "sft"}],
                        "ratio": 1.0, "out_dtype": "bfloat16"},
        "layer_swap": {"method": "layer_swap",
                       "models": [{"path": models[0], "name": "ct"},
                                  {"path": models[1], "name": "sft"}],
                       # a quarter of the layers at the bottom, an eighth at the top
                       "task_model": "sft", "bottom": layers // 4, "top": layers // 8,
                       "transition": 1,
                       "out_dtype": "bfloat16"},
    }
    out = {}
    for name, cfg in configs.items():
        out[name] = work / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


PLAIN_SCRIPT = textwrap.dedent("""
    import sys
    from safetensors import safe_open
    from safetensors.torch import save_file
    inputs, out = sys.argv[1:4], sys.argv[4]
    handles = [safe_open(p, framework="pt") for p in inputs]
    result = {}
    for name in handles[0].keys():
        tensors = [h.get_tensor(name) for h in handles]
        result[name] = tensors[0]
        del tensors
    save_file(result, out, metadata={"format": "pt"})
""")


# ---------------------------------------------------------------------------------------------
# measuring one process


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run cmd; return (wall seconds, peak RSS in GB). Fails loudly on a non-zero exit.

    The command runs under `/usr/bin/time -f %M` (a small process: on Linux a forked child's
    ru_maxrss starts from its parent's RSS, so forking from this Python process would inflate it).
    Descendants of the command are also polled with psutil (sum of RSS over the tree, every
    20 ms); the larger of the two peaks is reported."""
    import psutil

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    rss_file = log.with_suffix(".maxrss")
    tree_peak = 0
    done = threading.Event()
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_file), *cmd], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)

        def poll():
            nonlocal tree_peak
            try:
                timer = psutil.Process(proc.pid)
                while not done.is_set():
                    try:
                        kids = timer.children(recursive=True)
                        tree_peak = max(tree_peak, sum(k.memory_info().rss for k in kids))
                    except psutil.Error:
                        pass
                    done.wait(0.02)
            except psutil.Error:
                pass

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        proc.wait()
        wall = time.perf_counter() - start
        done.set()
        poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{log.read_text()[-3000:]}")
    maxrss_kib = int(rss_file.read_text().split()[-1])
    return wall, max(maxrss_kib * 1024, tree_peak) / 1e9


def warm_page_cache(paths: dict[str, Path]) -> None:
    """Read every input once so that every measured run sees the same (warm) page cache."""
    for folder in paths.values():
        for f in folder.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


# ---------------------------------------------------------------------------------------------
# comparing outputs


def weight_files(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in wm.items()}
    from safetensors import safe_open

    f = folder / "model.safetensors"
    with safe_open(str(f), framework="pt") as fh:
        return {k: f for k in fh.keys()}


def compare(ours: Path, theirs: Path, inputs: list[Path] | None = None,
            density: float | None = None) -> dict:
    """Tensor-by-tensor agreement. With inputs (base first) and a TIES density, differing entries
    are split into those at trim-threshold ties (some model's |tau| equals its k-th largest and
    more than k entries reach it: allowed by the spec) and those elsewhere (not allowed)."""
    import torch
    from safetensors import safe_open

    a, b = weight_files(ours), weight_files(theirs)
    if set(a) != set(b):
        return {"same_names": False, "only_lrmerge": sorted(set(a) - set(b))[:5],
                "only_mergekit": sorted(set(b) - set(a))[:5]}
    in_files = [weight_files(p) for p in inputs] if inputs else None
    max_abs, differing, outside, total, dtype_ok = 0.0, 0, 0, 0, True
    for name in sorted(a):
        with safe_open(str(a[name]), framework="pt") as fa, \
                safe_open(str(b[name]), framework="pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        dtype_ok &= x.dtype == y.dtype
        max_abs = max(max_abs, float((x.float() - y.float()).abs().max()))
        diff = x != y
        differing += int(diff.sum())
        total += x.numel()
        if in_files is not None and density is not None and diff.any():
            tensors = []
            for files in in_files:
                with safe_open(str(files[name]), framework="pt") as fh:
                    tensors.append(fh.get_tensor(name).float())
            base = tensors[0]
            ties = torch.zeros_like(diff)
            for t in tensors[1:]:
                mag = (t - base).abs().flatten()
                k = max(1, int(density * mag.numel())) if density < 1 else mag.numel()
                thr = torch.kthvalue(mag, mag.numel() - k + 1).values
                if int((mag >= thr).sum()) > k:
                    ties |= ((t - base).abs() == thr)
            outside += int((diff & ~ties).sum())
    out = {"same_names": True, "same_dtypes": dtype_ok, "max_abs_diff": max_abs,
           "differing": differing, "entries": total}
    if in_files is not None:
        out["differing_outside_ties"] = outside
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~34M-parameter models (smoke run)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each command (median kept)")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even if a target is missed")
    ap.add_argument("--threads", type=int, default=None, help="lrmerge --threads")
    every = "ties,linear,task_arithmetic,ties_sv,ties_auto,chat_vector,layer_swap"
    ap.add_argument("--methods", default=every, help=f"comma-separated subset of {every}")
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    args = ap.parse_args(argv)

    size = "quick" if args.quick else "full"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    paths = build_models(work, size)
    configs = write_configs(work, paths, SIZES[size]["layers"])
    methods = [m for m in args.methods.split(",") if m]
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    (work / "plain.py").write_text(PLAIN_SCRIPT)
    lrmerge_threads = ["--threads", str(args.threads)] if args.threads else []

    jobs: list[tuple[str, str, list[str], Path]] = []
    for m in methods:
        if m not in LRMERGE_ONLY:
            jobs.append(("mergekit", m, [str(BIN / "mergekit-yaml"), str(configs[m]),
                                         str(runs / f"mergekit_{m}")], runs / f"mergekit_{m}"))
        jobs.append(("lrmerge", m, [str(BIN / "lrmerge"), "merge", str(configs[m]), "--out",
                                    str(runs / f"lrmerge_{m}"), "--stats",
                                    str(runs / f"lrmerge_{m}.stats.json"), *lrmerge_threads],
                     runs / f"lrmerge_{m}"))
    plain_out = runs / "plain" / "model.safetensors"
    jobs.append(("plain", "read3+write1",
                 [sys.executable, str(work / "plain.py"),
                  *[str(paths[k] / "model.safetensors") for k in ("base", "ft1", "ft2")],
                  str(plain_out)], plain_out.parent))

    warm_page_cache(paths)
    for tool, method, cmd, out in jobs:
        if tool == "lrmerge":  # numba compiles its kernels on a first run, then reuses the cache
            shutil.rmtree(out, ignore_errors=True)
            (runs / f"lrmerge_{method}.stats.json").unlink(missing_ok=True)
            wall, _ = measure(cmd, runs / f"warmup_{method}.log")
            print(f"  [warm-up] lrmerge   {method:16s} {wall:7.2f} s (not counted)", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeat):
        for tool, method, cmd, out in jobs:
            shutil.rmtree(out, ignore_errors=True)
            (runs / f"lrmerge_{method}.stats.json").unlink(missing_ok=True)
            if tool == "plain":
                out.mkdir(parents=True)
            wall, peak = measure(cmd, runs / f"{tool}_{method}.log")
            results.setdefault((tool, method), []).append((wall, peak))
            print(f"  [{rep + 1}/{args.repeat}] {tool:9s} {method:16s} {wall:7.2f} s "
                  f"{peak:6.2f} GB", flush=True)

    def med(tool, method):
        rs = results[(tool, method)]
        return statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)

    n_params = sum(_numel(s) for s in tensor_shapes(llama_config(**SIZES[size])).values())
    print(f"\n{n_params / 1e6:.0f}M parameters per model, bf16, {args.repeat} run(s) each "
          f"(median), {os.cpu_count()} CPUs\n")
    print(f"{'tool':9s} {'method':16s} {'wall s':>8s} {'peak GB':>8s}")
    for (tool, method) in results:
        w, p = med(tool, method)
        print(f"{tool:9s} {method:16s} {w:8.2f} {p:8.2f}")
    plain_wall, plain_peak = med("plain", "read3+write1")

    print(f"\n{'method':16s} {'speedup':>8s} {'mem ratio':>9s} {'vs plain':>8s} "
          f"{'max|diff|':>10s} {'differing entries':>20s}")
    report = {"size": size, "params": n_params, "repeat": args.repeat,
              "plain": {"wall": plain_wall, "peak_gb": plain_peak}, "methods": {}}
    missed = []
    for m in methods:
        lr_w, lr_p = med("lrmerge", m)
        if m in LRMERGE_ONLY:
            note = "(lrmerge only)"
            entry = {"lrmerge": {"wall": lr_w, "peak_gb": lr_p}, "vs_plain": lr_w / plain_wall,
                     "peak_vs_plain": lr_p / plain_peak}
            twin = SAME_AS_MERGEKIT.get(m)
            if twin in methods:
                agree = compare(runs / f"lrmerge_{m}", runs / f"mergekit_{twin}")
                entry["agreement_with_mergekit_" + twin] = agree
                note = (f"(vs mergekit {twin}: {agree.get('differing', '?')} differing entries, "
                        f"max|diff| {agree.get('max_abs_diff', float('nan')):.3g})")
                if not agree.get("same_names") or agree.get("differing"):
                    missed.append(f"{m}: differs from mergekit's {twin}")
            print(f"{m:16s} {'-':>8s} {lr_p / plain_peak:8.2f}p {lr_w / plain_wall:7.2f}x {note}")
            report["methods"][m] = entry
            continue
        mk_w, mk_p = med("mergekit", m)
        agree = compare(runs / f"lrmerge_{m}", runs / f"mergekit_{m}",
                        inputs=[paths[k] for k in ("base", "ft1", "ft2")] if m == "ties" else None,
                        density=0.2 if m == "ties" else None)
        speedup, mem_ratio, vs_plain = mk_w / lr_w, lr_p / mk_p, lr_w / plain_wall
        diff = (f"{agree['max_abs_diff']:10.3g} {agree['differing']:>9d} of {agree['entries']:.3g}"
                if agree.get("same_names") else "tensor names differ")
        if "differing_outside_ties" in agree:
            diff += f" ({agree['differing_outside_ties']} outside threshold ties)"
        print(f"{m:16s} {speedup:7.1f}x {mem_ratio:9.2f} {vs_plain:7.2f}x {diff}")
        report["methods"][m] = {"mergekit": {"wall": mk_w, "peak_gb": mk_p},
                                "lrmerge": {"wall": lr_w, "peak_gb": lr_p},
                                "speedup": speedup, "memory_ratio": mem_ratio,
                                "vs_plain": vs_plain, "agreement": agree}
        if m == "ties":
            if speedup < TARGETS["speedup"]:
                missed.append(f"ties speedup {speedup:.1f}x < {TARGETS['speedup']:.0f}x")
            if mem_ratio > TARGETS["memory_ratio"]:
                missed.append(f"ties memory ratio {mem_ratio:.2f} > {TARGETS['memory_ratio']}")
            if vs_plain > TARGETS["vs_plain"]:
                missed.append(f"ties time vs plain {vs_plain:.2f}x > {TARGETS['vs_plain']:.0f}x")
        if not agree.get("same_names") or not agree.get("same_dtypes"):
            missed.append(f"{m}: output tensors or dtypes differ from mergekit")
        elif agree.get("differing_outside_ties", agree["differing"] if m != "ties" else 0):
            missed.append(f"{m}: entries differ from mergekit "
                          f"{'outside threshold ties' if m == 'ties' else ''}".rstrip())
    (work / f"results_{size}.json").write_text(json.dumps(report, indent=2))
    print("(lrmerge-only methods: 'mem ratio' is the peak over the plain script's, marked p)")
    print(f"\ntargets (ties): speedup >= {TARGETS['speedup']:.0f}x, memory ratio <= "
          f"{TARGETS['memory_ratio']}, time vs plain <= {TARGETS['vs_plain']:.0f}x")
    if missed:
        print("MISSED: " + "; ".join(missed))
        return 0 if args.no_check else 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
