"""Data stage benchmark: `lrmerge data corpus` (tokenize once into token shards) against a plain
single-threaded loop, and its peak memory at two corpus sizes.

Builds (once, cached under benchmarks/_work/data/) a varied synthetic corpus as jsonl -- words
drawn from a Zipf law over 20,000 made-up Latin words, 15% of documents in Bengali script (which a
Latin-trained BPE splits into bytes, as Llama-2 does) -- and a 32,000-token byte-level BPE trained
on 20 MB of it with `tokenizers`. Then, side by side in one run, each as its own process:

  baseline        TOKENIZERS_PARALLELISM=false, one `tokenizer(batch)` call per 1,000 documents,
                  ids appended to a Python list (the documents read from the same jsonl)
  lrmerge         `lrmerge data corpus --threads 2` over the same documents (reads the jsonl,
                  encodes with the Rust encoder's threads, writes uint16 shards + manifest)
  lrmerge 10M     the same command sized for 10M and for 100M tokens (budgets), peak RSS of each
  lrmerge 100M    (GNU time's %M)

Goals (issue 7): tokens/s >= 1.5x the baseline on these 2 cores; peak RSS at 100M tokens within
10% of that at 10M. Exit status 1 when one is missed (unless --no-check).

`--compare SRC` runs the same commands with another checkout's `lrmerge` as well (SRC: its src/
folder, e.g. a `git worktree` of the commit before a change; its own config/mini.yaml is used),
alternating the two three times, and prints tokens/s and peak RSS side by side (issue 23's goal:
the sampled corpus order within 10% of the stored order's throughput).

    .venv/bin/python benchmarks/bench_data.py [--quick] [--no-check] [--compare SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "data"
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"
TARGETS = {"speedup": 1.5, "rss_growth": 0.10}


def make_text(path: Path, mb: float, seed: int) -> None:
    """Documents of 50-400 words as jsonl, about `mb` MB; the words are the same for every seed."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    bengali = np.array([chr(c) for c in range(0x0995, 0x09B9)])
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(20000)]
    bvocab = ["".join(rng.choice(bengali, rng.integers(2, 6))) for _ in range(5000)]
    zipf = 1.0 / np.arange(1, 20001) ** 1.1
    zipf /= zipf.sum()
    rng = np.random.default_rng(seed)
    punct = np.array([".", ",", "?", "!", ";"])
    tmp = path.with_suffix(".tmp")
    size = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        while size < mb * 1e6:
            n = int(rng.integers(50, 400))
            if rng.random() < 0.15:
                words = [bvocab[i] for i in rng.integers(0, 5000, n)]
            else:
                words = [vocab[i] for i in rng.choice(20000, n, p=zipf)]
            for j in rng.integers(0, n, n // 12):
                words[j] += str(punct[j % 5])
            line = json.dumps({"text": " ".join(words)}, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode())
    os.replace(tmp, path)


def make_tokenizer(folder: Path, text: Path) -> None:
    code = textwrap.dedent(f"""
        import json
        from tokenizers import ByteLevelBPETokenizer
        from transformers import PreTrainedTokenizerFast
        def docs():
            with open({str(text)!r}, encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)["text"]
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(docs(), vocab_size=32000, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
        tok.save_pretrained({str(folder)!r})
        print(len(tok))
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


BASELINE = textwrap.dedent("""
    import json, os, sys, time
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    eos = tok.eos_token_id
    t0 = time.perf_counter()
    ids, batch = [], []
    with open(sys.argv[2], encoding="utf-8") as fh:
        for line in fh:
            batch.append(json.loads(line)["text"])
            if len(batch) == 1000:
                for x in tok(batch)["input_ids"]:
                    ids.extend(x); ids.append(eos)
                batch = []
    if batch:
        for x in tok(batch)["input_ids"]:
            ids.extend(x); ids.append(eos)
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens": len(ids), "seconds": dt}))
""")


def config(tok: Path, corpus: Path, tokens: int, allow_repeat: bool, repo: Path = REPO,
           tag: str = "") -> Path:
    cfg = yaml.safe_load((repo / "config" / "mini.yaml").read_text())
    cfg["base_model"] = str(tok)
    cfg["languages"] = {"bn": {"name": "bench", "budgets": [tokens], "tasks": ["topic_bn"],
                               "corpus": {"kind": "jsonl", "path": str(corpus),
                                          "allow_repeat": allow_repeat}}}
    cfg["merge"]["multi"] = []
    cfg["continual_pretrain"].update(seq_len=2048, english_ratio=0.0, data_margin=1.0)
    path = WORK / f"config_{tokens}{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def run_lrmerge(cfg: Path, tok: Path, out: Path, src: Path | None = None) -> dict:
    """`lrmerge data corpus` under GNU time: (manifest, peak RSS in MB, wall s); `src`: the
    lrmerge of another checkout's src/ folder."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    t0 = time.perf_counter()
    r = subprocess.run([TIME, "-f", "%M", str(BIN / "lrmerge"), "data", "corpus", "--config",
                        str(cfg), "--lang", "bn", "--tokenizer", str(tok), "--threads", "2",
                        "--out", str(out)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"lrmerge data corpus failed:\n{r.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"manifest": manifest, "rss_mb": int(r.stderr.strip().splitlines()[-1]) / 1024,
            "wall_s": wall}


def compare(src: Path, tok: Path, text: Path, large: Path, sizes: tuple[int, int]) -> int:
    """This checkout's `lrmerge data corpus` against another's, alternating, 3 runs each."""
    other_repo = src.resolve().parent
    runs = {"this": [], "other": []}
    for i in range(3):
        for who, where, repo in (("other", src, other_repo), ("this", None, REPO)):
            cfg = config(tok, text, 10 ** 10, True, repo, f"_{who}")
            res = run_lrmerge(cfg, tok, WORK / f"cmp_{who}", where)
            m = res["manifest"]
            runs[who].append(m["tokens"] / m["seconds"])
            print(f"run {i + 1} {who:<6} {m['tokens']:,} tokens in {m['seconds']:.2f} s "
                  f"({m['tokens'] / m['seconds']:,.0f} tokens/s, peak {res['rss_mb']:.0f} MB)")
    med = {k: float(np.median(v)) for k, v in runs.items()}
    rss = {}
    for who, where, repo in (("other", src, other_repo), ("this", None, REPO)):
        for n in sizes:
            res = run_lrmerge(config(tok, large, n, False, repo, f"_{who}"), tok,
                              WORK / f"cmp_{who}_{n}", where)
            rss[who, n] = res["rss_mb"]
    print(f"\n{'':<22}{'tokens/s (median of 3)':>24}" + "".join(
        f"{f'peak RSS at {n / 1e6:.0f}M':>20}" for n in sizes))
    for who, label in (("other", f"other ({src})"), ("this", "this checkout")):
        print(f"{label[:22]:<22}{med[who]:>24,.0f}" + "".join(f"{rss[who, n]:>17.0f} MB"
                                                             for n in sizes))
    ratio = med["this"] / med["other"]
    print(f"\nthroughput: this / other = {ratio:.3f} (goal >= 0.90)")
    return 0 if ratio >= 0.9 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M / 10M tokens for the RSS runs")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--compare", type=Path, default=None,
                    help="another checkout's src/ folder to run side by side with this one")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    small, big = (1_000_000, 10_000_000) if args.quick else (10_000_000, 100_000_000)
    text = WORK / "throughput.jsonl"  # ~6M tokens
    if not text.exists():
        make_text(text, 30, seed=1)
    tok = WORK / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        make_tokenizer(tok, text)
    large = WORK / "large.jsonl"  # >= the big run's need (~6.1 bytes of jsonl per token)
    if not large.exists() or large.stat().st_size < big * 6.6:
        make_text(large, big * 6.6 / 1e6, seed=2)
    print(f"tokenizer: {tok} (32,000-token byte-level BPE); text: {text.stat().st_size / 1e6:.0f}"
          f" MB; large corpus: {large.stat().st_size / 1e6:.0f} MB")

    if args.compare is not None:
        code = compare(args.compare, tok, text, large, (small, big))
        return 0 if args.no_check else code
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", BASELINE, str(tok), str(text)], capture_output=True,
                       text=True, env=env, check=True)
    base = json.loads(r.stdout.strip().splitlines()[-1])
    base_tps = base["tokens"] / base["seconds"]
    ours = run_lrmerge(config(tok, text, 10 ** 10, True), tok, WORK / "tokens_throughput")
    m = ours["manifest"]
    if m["tokens"] != base["tokens"]:
        sys.exit(f"token counts differ: lrmerge {m['tokens']}, baseline {base['tokens']}")
    ours_tps = m["tokens"] / m["seconds"]
    speedup = ours_tps / base_tps
    rss = {n: run_lrmerge(config(tok, large, n, False), tok, WORK / f"tokens_{n}") for n in
           (small, big)}
    growth = rss[big]["rss_mb"] / rss[small]["rss_mb"] - 1

    print(f"\n{'run':<28}{'tokens':>14}{'seconds':>10}{'tokens/s':>12}{'peak RSS MB':>13}")
    print(f"{'baseline (1 thread, list)':<28}{base['tokens']:>14,}{base['seconds']:>10.2f}"
          f"{base_tps:>12,.0f}{'':>13}")
    print(f"{'lrmerge data corpus':<28}{m['tokens']:>14,}{m['seconds']:>10.2f}{ours_tps:>12,.0f}"
          f"{ours['rss_mb']:>13.0f}")
    for n, res in rss.items():
        mm = res["manifest"]
        print(f"{f'lrmerge, need {n / 1e6:.0f}M':<28}{mm['tokens']:>14,}{mm['seconds']:>10.2f}"
              f"{mm['tokens'] / mm['seconds']:>12,.0f}{res['rss_mb']:>13.0f}")
    print(f"\nthroughput: {speedup:.2f}x the single-threaded loop (goal >= {TARGETS['speedup']}x)")
    print(f"peak RSS: {rss[big]['rss_mb']:.0f} MB at {big / 1e6:.0f}M tokens vs "
          f"{rss[small]['rss_mb']:.0f} MB at {small / 1e6:.0f}M ({growth:+.1%}; goal within "
          f"{TARGETS['rss_growth']:.0%})")
    results = {"baseline": base, "lrmerge": {"tokens": m["tokens"], "seconds": m["seconds"]},
               "speedup": speedup, "rss_mb": {str(n): v["rss_mb"] for n, v in rss.items()},
               "rss_growth": growth}
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    ok = speedup >= TARGETS["speedup"] and abs(growth) <= TARGETS["rss_growth"]
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
