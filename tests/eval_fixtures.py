"""Benchmark files in the real formats of the real releases, tiny (see
../shared/reference/eval-benchmarks.md for the formats):
- MiLiC-Eval: data/<task_folder>/<lang>/{train_1,train_2,train_3,test}.json, JSON lists with the
  release's field names (label {"en","zh"}, context a list of turns, answer a letter or a number,
  cot {"en","zh"});
- SIB-200: data/annotated/<code>/{train,dev,test}.tsv, columns index_id, category, text, some rows
  CSV-quoted;
- MGSM: mgsm_<lang>.tsv, question and numeric answer, no header;
- Belebele: a jsonl of the hub's records (flores_passage, question, mc_answer1..4,
  correct_answer_num as text).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LABELS = [{"en": "politics", "zh": "政治"}, {"en": "sports", "zh": "体育"},
          {"en": "economy", "zh": "经济"}]
TIBETAN = ["བོད་ཡིག", "རྒྱལ་ཁབ", "རྩེད་མོ", "དཔལ་འབྱོར", "སློབ་གྲྭ", "ཚོང་ཁང"]


def _dump(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def milic(root: Path, lang: str = "bo", n_test: int = 6) -> Path:
    """A MiLiC-Eval copy with the four families of one language; returns its root."""
    def text(i):
        return " ".join(TIBETAN[(i + k) % len(TIBETAN)] for k in range(3)) + " ། " + "ཀ" * 600

    def cls(i, split):
        return {"id": f"{split}-cls-{i}", "text": text(i), "label": LABELS[i % 3]}

    def turns(i):
        return [f"A: {TIBETAN[i % 6]}", f"B: {TIBETAN[(i + 1) % 6]} ?"]

    def mrc(i, split):
        return {"id": f"{split}-mrc-{i}", "context": turns(i), "question": f"{TIBETAN[i % 6]} ?",
                "options": [TIBETAN[(i + k) % 6] for k in range(4)], "answer": "ABCD"[i % 4]}

    def resp(i, split):
        return {"id": f"{split}-rs-{i}", "context": turns(i),
                "options": [TIBETAN[(i + k) % 6] for k in range(3)], "answer": "ABC"[i % 3]}

    def math(i, split):
        a, b = 3 + i, 1200 + 7 * i
        return {"id": f"{split}-math-{i}", "question": f"{TIBETAN[i % 6]} {a} + {b} = ?",
                "answer": a + b if i % 2 else float(a + b) + 0.5,
                "cot": {"en": f"{a} plus {b} is {a + b}. The answer is {a + b}.",
                        "zh": f"{a}加{b}等于{a + b}。答案是{a + b}。"}}

    folders = {"text_classification_sentence": cls, "reading_comprehension": mrc,
               "response_selection": resp, "math": math}
    for folder, make in folders.items():
        d = root / "data" / folder / lang
        _dump(d / "test.json", [make(i, "test") for i in range(n_test)])
        for k in (1, 2, 3):
            # Shot files hold more than the shots; classification ones one label twice.
            _dump(d / f"train_{k}.json", [make(10 * k + i, f"train{k}") for i in range(5)])
    return root


SIB_LABELS = ["science/technology", "travel", "politics", "sports", "health", "entertainment",
              "geography"]


def sib200(root: Path, code: str = "ben_Beng", n_test: int = 7, grouped: bool = False) -> Path:
    """data/annotated/<code>/{train,dev,test}.tsv; returns the folder of the TSVs. `grouped`: the
    test rows ordered by category, as the release's test.tsv is (its first rows one class)."""
    d = root / "data" / "annotated" / code
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 14), ("dev", 3), ("test", n_test)):
        lines = ["index_id\tcategory\ttext"]
        for i in range(n):
            label = SIB_LABELS[i % len(SIB_LABELS)]
            if grouped and split == "test":
                label = SIB_LABELS[i * len(SIB_LABELS) // n]
            body = f"বাংলা বাক্য {i} ({label})"
            if i % 3 == 0:  # quoted: holds a tab and doubled quotes, as CSV writers emit
                body = f'"{body}\tসে বলল ""হ্যাঁ"""'
            lines.append(f"{100 + i}\t{label}\t{body}")
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def mgsm(root: Path, lang: str = "bn", n: int = 5) -> Path:
    """mgsm_<lang>.tsv: question TAB answer, no header; a question holds a bare quote char."""
    rows = []
    for i in range(n):
        quote = ' "মা" বললেন' if i == 1 else ""
        rows.append(f"রাজুর {12 + i}টি আম আছে{quote}। সে আরও 1,000টি কিনল। কয়টি?\t{1012 + i}")
    path = root / f"mgsm_{lang}.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def belebele(root: Path, code: str = "ben_Beng", n: int = 9) -> Path:
    path = root / f"belebele_{code}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({
                "link": f"https://en.wikibooks.org/wiki/x{i // 3}", "question_number": i % 3 + 1,
                "flores_passage": f"অনুচ্ছেদ {i // 3}। এটি একটি দীর্ঘ লেখা।",
                "question": f"প্রশ্ন {i}?", "mc_answer1": "এক", "mc_answer2": "দুই",
                "mc_answer3": "তিন", "mc_answer4": "চার",
                "correct_answer_num": str(i % 4 + 1), "dialect": code, "ds": "2023-05-03",
            }, ensure_ascii=False) + "\n")
    return path


def sources(root: Path, sib_test: int = 7, sib_grouped: bool = False) -> dict:
    """evaluate.sources entries for all the fixtures, as a user would write them."""
    sib = sib200(root / "sib-200", n_test=sib_test, grouped=sib_grouped)
    return {
        "milic_topic_bo": {"kind": "milic", "family": "classification", "lang": "bo"},
        "milic_mrc_bo": {"kind": "milic", "family": "reading_comprehension", "lang": "bo"},
        "milic_response_bo": {"kind": "milic", "family": "response_selection", "lang": "bo"},
        "milic_math_bo": {"kind": "milic", "family": "math", "lang": "bo"},
        "sib200_ben_Beng": {
            "kind": "sib200", "family": "classification",
            "test": {"path": "csv", "data_files": str(sib / "test.tsv"), "delimiter": "\t"},
            "fewshot": {"path": "csv", "data_files": str(sib / "train.tsv"), "delimiter": "\t"}},
        "belebele_ben_Beng": {
            "kind": "belebele", "family": "reading_comprehension", "fewshot": "test",
            "test": {"path": "json", "data_files": str(belebele(root))}},
        "mgsm_bn": {
            "kind": "mgsm", "family": "math", "shots": 0,
            "test": {"path": "csv", "data_files": str(mgsm(root)), "delimiter": "\t",
                     "column_names": ["question", "answer_number"], "quoting": 3}},
    }


class ScriptedLM:
    """An lm-eval LM whose outputs are scripted per test item from its gold answer, in the forms
    real models produce: right for even items, wrong or debris for odd ones. Under loglik an
    odd item's answer is its first wrong candidate."""

    def __new__(cls):
        from lm_eval.api.model import LM

        class _LM(LM):
            def generate_until(self, requests):
                return [self.say(r.doc) for r in requests]

            def loglikelihood(self, requests):
                out = []
                for r in requests:
                    right = r.doc["choices"][r.doc["gold"]] == r.args[1].strip()
                    good = self.is_even(r.doc) == right
                    out.append((0.0 if good else -5.0, False))
                return out

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            @staticmethod
            def is_even(doc):
                return is_even(doc)

            def say(self, doc):
                if not self.is_even(doc):
                    return "\ufffd\ufffd" if doc["answer_kind"] == "number" else "zzz"
                if doc["answer_kind"] == "letter":
                    return f" {doc['answer']}. that one\nB"
                if doc["answer_kind"] == "number":  # native digits and a separator
                    digits = "০১২৩৪৫৬৭৮৯"
                    value = float(doc["answer"])
                    text = f"{value:,.1f}" if value % 1 else f"{int(value):,}"
                    return "উত্তর " + "".join(digits[int(c)] if c.isdigit() else c
                                                 for c in text) + "."
                return f" {doc['answer'].upper()}\n"

        return _LM()


def is_even(doc: dict) -> bool:
    """Whether ScriptedLM answers an item right: its id's digits are even."""
    return int(re.sub(r"\D", "", str(doc["id"])) or 0) % 2 == 0


class OneLabelLM:
    """An lm-eval LM that answers `label` to every classification item, under either protocol
    (a collapsed model)."""

    def __new__(cls, label: str):
        from lm_eval.api.model import LM

        class _LM(LM):
            def generate_until(self, requests):
                return [f" {label}\n" for _ in requests]

            def loglikelihood(self, requests):
                return [(0.0 if r.args[1].strip() == label else -5.0, False) for r in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

        return _LM()
