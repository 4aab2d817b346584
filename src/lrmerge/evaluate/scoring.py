"""What lm-eval's YAML cannot say: answer parsing, per-item scoring and macro-F1.

The task YAMLs name these through a one-line module written next to them (`lrmerge_tasks.py`,
`from lrmerge.evaluate.scoring import *`), since lm-eval resolves `!function` against the YAML's
folder. Parsing follows MiLiC-Eval's reference `eval.py`:
- the generation is stripped and cut at its first line (`infer.py`);
- label: lower-cased exact match with the gold label;
- letter: the first character if it is A-E, else the whole output, compared with the gold letter;
- number: commas removed, one trailing '.' dropped, the last number (`\\d+\\.\\d+|\\d+`) as a
  float. Python's `\\d` and `float` already accept every script's decimal digits; we also map them
  with `unicodedata.digit` explicitly and drop the Arabic thousands separator.
Like the reference, a sign is not read: every answer in these benchmarks is non-negative.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["first_line", "is_debris", "parse_label", "parse_letter", "parse_number",
           "process_generation", "process_loglik", "macro_f1"]

LETTERS = "ABCDE"
# ASCII and Arabic thousands separators; the Arabic decimal separator reads as '.'.
_THOUSANDS = {",": "", "\u066c": "", "\u066b": "."}
_NUMBER = re.compile(r"\d+\.\d+|\d+")


def first_line(text: str) -> str:
    """The reference's post-processing: strip, then the first line."""
    return text.strip().split("\n")[0]


def is_debris(text: str) -> bool:
    """Output that is byte-fallback debris: U+FFFD from undecodable bytes, or lone surrogates."""
    return "\ufffd" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def parse_label(text: str) -> str:
    return first_line(text).lower()


def parse_letter(text: str) -> str:
    out = first_line(text)
    return out[0] if out and out[0] in LETTERS else out


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) if c.isdecimal() else _THOUSANDS.get(c, c)
                   for c in text)


def parse_number(text: str) -> float | None:
    """The last number of the first line, or None when there is none."""
    s = _ascii_digits(first_line(text))
    if s.endswith("."):
        s = s[:-1]
    found = _NUMBER.findall(s)
    return float(found[-1]) if found else None


def _same_number(pred: float | None, gold) -> bool:
    return pred is not None and pred == float(_ascii_digits(str(gold)))  # separators dropped there


def _correct(doc: dict, output: str):
    """(is it correct, the parsed prediction) for a generated output."""
    kind = doc["answer_kind"]
    if kind == "label":
        pred = parse_label(output)
        return pred == str(doc["answer"]).lower(), pred
    if kind == "letter":
        pred = parse_letter(output)
        return pred == str(doc["answer"]), pred
    if kind == "number":
        pred = parse_number(output)
        return _same_number(pred, doc["answer"]), pred
    raise ValueError(f"answer_kind {kind!r} is not label, letter or number")


def process_generation(doc: dict, results: list[str]) -> dict:
    """Per-item metrics of a generative task: acc, debris, and (gold, pred) for macro-F1."""
    output = results[0]
    debris = is_debris(output)
    correct, pred = _correct(doc, output)
    out = {"acc": float(correct), "debris": float(debris)}
    if doc["family"] == "classification":
        out["macro_f1"] = (str(doc["answer"]).lower(), pred)
    return out


def process_loglik(doc: dict, results: list) -> dict:
    """Per-item metrics of a log-likelihood task: the choice of highest log-likelihood."""
    lls = [r[0] if isinstance(r, tuple | list) else r for r in results]
    pred = max(range(len(lls)), key=lls.__getitem__)
    gold = int(doc["gold"])
    out = {"acc": float(pred == gold)}
    if doc["family"] == "classification":
        out["macro_f1"] = (doc["choices"][gold].lower(), doc["choices"][pred].lower())
    return out


def macro_f1(pairs: list) -> float:
    """Macro-F1 over the gold classes. A prediction outside them (an unparsable answer) is a
    miss for its item's class, never a class of its own (sklearn's default would add one)."""
    golds = sorted({g for g, _ in pairs})
    if not golds:
        return float("nan")
    f1s = []
    for c in golds:
        tp = sum(1 for g, p in pairs if g == c and p == c)
        fp = sum(1 for g, p in pairs if g != c and p == c)
        fn = sum(1 for g, p in pairs if g == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)
