"""SFT data benchmark: peak memory and time of `lrmerge data sft` (the task mixture of
`lrmerge.data.sft`) on FLAN-layout folders of growing size.

Builds (once, cached under benchmarks/_work/sft/) a folder in Muennighoff/flan's layout:
train/<task>_10templates_train.jsonl for 66 tasks whose sizes follow a Zipf law (the largest
holds ~20% of the rows, the smallest a few hundred), rows of ~10 words {inputs, targets}; and a
4,000-token byte-level BPE trained on them. Then runs, each as its own process under GNU time
(%M, the kernel's high-water mark of the process's resident memory):

  lrmerge data sft --threads 2   with max_per_task 30000 (the paper config's cap), at each size

The pass over the source keeps 4 bytes a row (its task number) plus the index arrays of the
sample; text is held one batch at a time. Printed: rows, examples taken, seconds, peak RSS and
its growth per source row between the sizes. Goal: peak RSS at the largest size within
`--max-rss-mb` (default 1,000 MB); exit status 1 when missed (unless --no-check).

    .venv/bin/python benchmarks/bench_sft.py [--rows 1000000,10000000] [--quick] [--no-check]
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
WORK = HERE / "_work" / "sft"
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"
TASKS = 66
CAP = 30000
WORDS = ("the a of to and in is was for on that with as by at from his her it be are this "
         "which or an had not but what all were when we there can more if no out so said up "
         "one about into than them some could time these two may then first any new like "
         "question answer passage premise hypothesis summary article title sentence").split()


def make_folder(root: Path, rows: int) -> dict[str, int]:
    """66 task files of Zipf-distributed sizes summing to `rows` (written once per size)."""
    sizes_w = 1.0 / np.arange(1, TASKS + 1) ** 1.1
    sizes = np.maximum(200, np.floor(rows * sizes_w / sizes_w.sum())).astype(np.int64)
    sizes[0] += rows - sizes.sum()
    names = [f"task{t:02d}" for t in range(TASKS)]
    done = root / "sizes.json"
    if done.is_file():
        return json.loads(done.read_text())
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for name, n in zip(names, sizes.tolist(), strict=True):
        path = root / "train" / f"{name}_10templates_train.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for start in range(0, n, 100_000):
                k = min(100_000, n - start)
                picks = words[rng.integers(0, len(words), (k, 10))]
                fh.writelines(
                    json.dumps({"inputs": f"{name} {' '.join(p[:8])} ?",
                                "targets": " ".join(p[8:]), "task": name}) + "\n"
                    for p in picks)
    out = dict(zip(names, sizes.tolist(), strict=True))
    done.write_text(json.dumps(out))
    return out


def make_tokenizer(folder: Path, text: Path) -> None:
    code = textwrap.dedent(f"""
        import json
        from tokenizers import ByteLevelBPETokenizer
        from transformers import PreTrainedTokenizerFast
        def docs():
            with open({str(text)!r}, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i == 200000:
                        return
                    row = json.loads(line)
                    yield row["inputs"] + " " + row["targets"]
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(docs(), vocab_size=4000, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
        tok.save_pretrained({str(folder)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def config(root: Path, path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    cfg["sft"]["data"] = {"kind": "jsonl", "path": str(root / "train" / "*.jsonl"),
                          "prompt_field": "inputs", "response_field": "targets",
                          "max_per_task": CAP, "allow_repeat": True}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cfg: Path, tok: Path, out: Path) -> dict:
    """`lrmerge data sft` under GNU time: peak RSS (MB), wall seconds, the manifest."""
    cmd = [TIME, "-f", "%M %e", str(BIN / "lrmerge"), "data", "sft", "--config", str(cfg),
           "--tokenizer", str(tok), "--threads", "2", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"lrmerge data sft failed:\n{p.stderr[-3000:]}")
    rss_kb, wall = p.stderr.strip().splitlines()[-1].split()
    m = json.loads((out / "manifest.json").read_text())
    return {"rss_mb": int(rss_kb) / 1024, "wall_s": float(wall), "manifest": m}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000,10000000",
                    help="source rows of each folder, comma-separated")
    ap.add_argument("--quick", action="store_true", help="100,000 and 1,000,000 rows")
    ap.add_argument("--max-rss-mb", type=float, default=1000.0)
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [int(x) for x in args.rows.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    results = []
    tok = None
    for rows in sizes:
        root = WORK / f"flan_{rows}"
        t0 = time.perf_counter()
        per_task = make_folder(root, rows)
        built = time.perf_counter() - t0
        if tok is None:
            tok = WORK / "tokenizer"
            if not (tok / "tokenizer.json").is_file():
                make_tokenizer(tok, root / "train" / "task00_10templates_train.jsonl")
        r = run(config(root, WORK / f"config_{rows}.yaml"), tok, WORK / f"out_{rows}")
        m = r["manifest"]
        mix = m["mixture"]
        results.append({"rows": mix["rows_read"], "tasks": len(per_task),
                        "examples": mix["examples"], "tokens": m["tokens"],
                        "rss_mb": round(r["rss_mb"], 1), "wall_s": r["wall_s"],
                        "seconds_in_manifest": m["seconds"], "folder_built_s": round(built, 1)})
        print(f"{mix['rows_read']:>11,} rows  {mix['examples']:>9,} examples  "
              f"{m['tokens']:>12,} tokens  {r['wall_s']:7.1f} s  peak RSS {r['rss_mb']:7.1f} MB",
              flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = (b["rss_mb"] - a["rss_mb"]) * 2**20 / max(1, b["rows"] - a["rows"])
        print(f"peak RSS grows {growth:.1f} bytes a source row between {a['rows']:,} and "
              f"{b['rows']:,} rows")
    (WORK / "results.json").write_text(json.dumps(results, indent=1))
    worst = max(r["rss_mb"] for r in results)
    if not args.no_check and worst > args.max_rss_mb:
        print(f"MISSED: peak RSS {worst:.0f} MB > {args.max_rss_mb:.0f} MB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
