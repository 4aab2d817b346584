"""The benchmarks' records, read in their real layouts and normalised into one row format.

Every source is read with `datasets.load_dataset` arguments, so the hub id and a local copy (or an
offline mirror) differ only in config. A normalised row holds the fields its prompt uses (see
templates/prompts.yaml) plus:
    target       what follows the prompt in a few-shot example (label, letter, worked solution)
    answer       the gold answer a generation is scored against
    answer_kind  label | letter | number (how lrmerge.evaluate.scoring parses a generation)
    family       the task's family (classification rows are also scored by macro-F1)
    choices, gold  the candidates and gold index of the log-likelihood protocol

Kinds: milic (MiLiC-Eval: data/<folder>/<lang>/{train_1..3,test}.json), sib200 (TSV or hub),
belebele (parquet, jsonl or hub), mgsm (TSV without header, or hub), generated (the mini).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lrmerge.data.synthetic import task_rows

LETTERS = "ABCDE"

# MiLiC-Eval's task folder per family (the reference repo's data layout).
MILIC_FOLDERS = {"classification": "text_classification_sentence",
                 "reading_comprehension": "reading_comprehension",
                 "response_selection": "response_selection", "math": "math"}
# Test items per language of each release, for `lrmerge tasks` before the data is read.
PUBLISHED_ITEMS = {("milic", "text_classification_sentence"): 432,
                   ("milic", "text_classification_passage"): 504,
                   ("milic", "reading_comprehension"): 200, ("milic", "response_selection"): 407,
                   ("milic", "math"): 200, ("sib200", None): 204, ("belebele", None): 900,
                   ("mgsm", None): 250}
# Record fields per kind (config `fields` renames them).
FIELDS = {
    "sib200": {"id": "index_id", "text": "text", "label": "category"},
    "belebele": {"passage": "flores_passage", "question": "question", "answer": "correct_answer_num",
                 "options": ["mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4"]},
    "mgsm": {"question": "question", "answer": "answer_number", "cot": None},
}


class BenchmarkError(ValueError):
    """A benchmark that cannot be read: names the task and the file, id, record or field."""


@dataclass
class Benchmark:
    """A task's rows: the test items and one list of few-shot examples per shot set."""
    test: list[dict]
    shot_sets: dict[str, list[dict]] = field(default_factory=dict)
    source: str = ""
    held_out: int = 0  # test items removed because they serve as shots


# ----------------------------------------------------------------------------------------------
# Loading


def load_records(args: dict, where: str) -> list[dict]:
    """`datasets.load_dataset(**args)` as a list of dicts. With no split named, a dataset of one
    split is taken whole; several splits must be chosen."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(**args)
    except Exception as e:  # datasets' own messages do not say which task asked
        raise BenchmarkError(f"{where}: load_dataset({show_args(args)}) failed: "
                             f"{type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise BenchmarkError(f"{where}: load_dataset({show_args(args)}) has splits "
                                 f"{', '.join(ds)}; name one with 'split'")
        ds = next(iter(ds.values()))
    rows = ds.to_list()
    if not rows:
        raise BenchmarkError(f"{where}: load_dataset({show_args(args)}) holds no records")
    return rows


def show_args(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _get(row: dict, name: str, where: str, i: int):
    if name not in row or row[name] is None:
        # datasets gives every record the union of all records' fields, absent ones as None
        present = ", ".join(k for k, v in row.items() if v is not None)
        raise BenchmarkError(f"{where}: record {i} has no field {name!r} (fields: {present})")
    return row[name]


def _turns(value, where: str, i: int, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise BenchmarkError(f"{where}: record {i} field {name!r} is neither text nor a list of "
                         f"texts: {value!r}")


def _lang_value(value, lang: str, where: str, i: int, name: str) -> str:
    """MiLiC-Eval's bilingual fields ({"en": ..., "zh": ...}) in the prompt language."""
    if isinstance(value, dict):
        if lang not in value:
            raise BenchmarkError(f"{where}: record {i} field {name!r} has no {lang!r} entry "
                                 f"(entries: {', '.join(value)})")
        return str(value[lang])
    return str(value)


# ----------------------------------------------------------------------------------------------
# Normalised rows per family


def classification_row(rid, text: str, label: str, max_chars: int) -> dict:
    return {"id": rid, "text": text[:max_chars], "target": label, "answer": label,
            "answer_kind": "label"}


def choice_row(rid, context: list[str], question: str | None, options: list[str], gold: int,
               where: str, i: int) -> dict:
    if not 2 <= len(options) <= len(LETTERS):
        raise BenchmarkError(f"{where}: record {i} has {len(options)} options (2-5 expected)")
    if not 0 <= gold < len(options):
        raise BenchmarkError(f"{where}: record {i}: answer {LETTERS[gold] if gold >= 0 else gold}"
                             f" is not one of its {len(options)} options")
    row = {"id": rid, "context": context, "options": [str(o) for o in options],
           "target": LETTERS[gold], "answer": LETTERS[gold], "answer_kind": "letter",
           "choices": list(LETTERS[: len(options)]), "gold": gold}
    if question is not None:
        row["question"] = question
    return row


def math_row(rid, question: str, answer, cot: str | None, where: str, i: int) -> dict:
    text = str(answer).strip().replace(",", "")
    try:
        float(text)
    except ValueError:
        raise BenchmarkError(f"{where}: record {i}: answer {answer!r} is not a number") from None
    if text.endswith(".0"):
        text = text[:-2]
    return {"id": rid, "question": question, "target": cot if cot else text, "answer": text,
            "answer_kind": "number"}


def _letter_index(value, where: str, i: int) -> int:
    s = str(value).strip()
    if len(s) != 1 or s not in LETTERS:
        raise BenchmarkError(f"{where}: record {i}: answer {value!r} is not a letter A-E")
    return LETTERS.index(s)


# ----------------------------------------------------------------------------------------------
# Kinds


def milic_rows(records: list[dict], family: str, prompt_lang: str, max_chars: int,
               where: str, shots: bool) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        rid = r.get("id", i)
        if family == "classification":
            label = _lang_value(_get(r, "label", where, i), prompt_lang, where, i, "label")
            out.append(classification_row(rid, str(_get(r, "text", where, i)), label, max_chars))
        elif family in ("reading_comprehension", "response_selection"):
            context = _turns(_get(r, "context", where, i), where, i, "context")
            question = (str(_get(r, "question", where, i))
                        if family == "reading_comprehension" else None)
            options = _get(r, "options", where, i)
            gold = _letter_index(_get(r, "answer", where, i), where, i)
            out.append(choice_row(rid, context, question, options, gold, where, i))
        else:
            cot = (_lang_value(_get(r, "cot", where, i), prompt_lang, where, i, "cot")
                   if shots else None)
            out.append(math_row(rid, str(_get(r, "question", where, i)),
                                _get(r, "answer", where, i), cot, where, i))
    return out


def sib200_rows(records, fields: dict, max_chars: int, where: str) -> list[dict]:
    return [classification_row(r.get(fields["id"], i), str(_get(r, fields["text"], where, i)),
                               str(_get(r, fields["label"], where, i)), max_chars)
            for i, r in enumerate(records)]


def belebele_rows(records, fields: dict, where: str) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        options = [str(_get(r, f, where, i)) for f in fields["options"]]
        num = _get(r, fields["answer"], where, i)
        try:
            gold = int(num) - 1  # correct_answer_num counts from 1
        except (TypeError, ValueError):
            raise BenchmarkError(f"{where}: record {i}: {fields['answer']} {num!r} is not "
                                 "a number 1-4") from None
        context = _turns(_get(r, fields["passage"], where, i), where, i, fields["passage"])
        out.append(choice_row(i, context, str(_get(r, fields["question"], where, i)), options, gold,
                              where, i))
    return out


def mgsm_rows(records, fields: dict, where: str) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        cot = r.get(fields["cot"]) if fields.get("cot") else None
        out.append(math_row(i, str(_get(r, fields["question"], where, i)),
                            _get(r, fields["answer"], where, i), cot, where, i))
    return out


# Mini items (kind generated): drawn in the data stage's synthetic language.
generated_rows = task_rows


# ----------------------------------------------------------------------------------------------
# Shot sets


def per_label_shots(pool: list[dict], labels: list[str]) -> list[dict]:
    """One example per label (the first in the pool's order), shuffled with seed 0: the
    reference's selection, with the labels in sorted rather than hash order."""
    shots = []
    for label in labels:
        found = next((r for r in pool if r["answer"] == label), None)
        if found is not None:
            shots.append(found)
    random.Random(0).shuffle(shots)
    return shots


def draw_shots(pool: list[dict], n: int | str, seed: int, labels: list[str]) -> list[dict]:
    """A shot set drawn from a pool with its own seed (benchmarks without shot files)."""
    order = list(pool)
    random.Random(f"shots:{seed}").shuffle(order)
    if n == "per_label":
        return per_label_shots(order, labels)
    return order[: int(n)]


def math_choices(test: list[dict], task: str) -> None:
    """Log-likelihood protocol for math: the gold number and three other items' answers, an
    order fixed by the task and item (our construction; the benchmarks have no distractors)."""
    values = list(dict.fromkeys(r["answer"] for r in test))
    for r in test:
        rng = random.Random(f"distractors:{task}:{r['id']}")
        others = [v for v in values if v != r["answer"]]
        choices = [r["answer"]] + rng.sample(others, min(3, len(others)))
        rng.shuffle(choices)
        r["choices"], r["gold"] = choices, choices.index(r["answer"])
