"""Where text comes from: the generated languages (mini), local jsonl files, or any
`datasets.load_dataset` source. Each source is a lazy iterator of documents in a fixed order, so a
paper-scale corpus never sits in memory and the data stage reads only as far as it needs."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from lrmerge.config import corpus_key, language_entry
from lrmerge.data import synthetic


class SourceError(ValueError):
    """A corpus that cannot be read; the message names the file, line and key, or the config key."""


def load_hf(spec: dict, where: str):
    """`datasets.load_dataset` from a config entry: path, name, split, data_files, revision,
    streaming, plus free-form `args` passed through."""
    import datasets

    if not spec.get("path"):
        raise ValueError(f"config key {where}.path is required for kind: hf")
    args = {k: spec[k] for k in ("path", "name", "split", "data_files", "revision", "streaming")
            if spec.get(k) is not None}
    args.setdefault("split", "train")
    args.update(spec.get("args") or {})
    try:
        return datasets.load_dataset(**args)
    except Exception as e:  # name the config entry: datasets' own errors do not
        raise RuntimeError(f"{where}: load_dataset({args}) failed: {e}") from e


def jsonl_rows(paths: list[str], where: str, fields: tuple[str, ...], hint: str) -> Iterator[dict]:
    """Rows of local jsonl files in order; a missing file, a line that is not a JSON object, or
    a row without `fields` stops with the file, line and key."""
    for path in paths:
        if not Path(path).is_file():
            raise SourceError(f"{where}.path: file {path} not found")
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}: line {i} is not JSON ({e.msg}) ({where})") from None
                if not isinstance(row, dict):
                    raise SourceError(f"{path}: line {i} is not a JSON object ({where})")
                for f in fields:
                    if f not in row:
                        raise SourceError(f"{path}: line {i} has no key {f!r} (fields: "
                                          f"{', '.join(row)}); set {hint}")
                yield row


def _paths(spec: dict, where: str) -> list[str]:
    given = spec.get("path")
    if not given:
        raise ValueError(f"config key {where}.path is required for kind: jsonl")
    out = []
    for p in [given] if isinstance(given, str) else given:
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise SourceError(f"{where}.path: no file matches {p}")
        out.extend(matches)
    return out


def _hf_texts(spec: dict, where: str, field: str) -> Iterator[str]:
    for i, row in enumerate(load_hf(spec, where)):
        if field not in row:
            raise SourceError(f"{where}: row {i} has no text field {field!r} "
                              f"(fields: {', '.join(row)}); set {where}.text_field")
        yield row[field]


def corpus_documents(cfg: dict, lang: str) -> Iterator[str]:
    """The documents of a language's corpus ("en": the English corpus), in order, empty ones
    skipped. Generated corpora are endless; config errors raise before the first document."""
    spec = language_entry(cfg, lang).get("corpus") or {}
    where = corpus_key(lang)
    kind = spec.get("kind")
    if kind == "generated":
        # English keeps its own seed stream ("pretrain"): the mini base is trained on it.
        return synthetic.documents(cfg, lang, "pretrain" if lang == "en" else "ct")
    field = spec["text_field"]
    if kind == "jsonl":
        rows = jsonl_rows(_paths(spec, where), where, (field,), f"{where}.text_field")
        texts = (r[field] for r in rows)
    elif kind == "hf":
        texts = _hf_texts(spec, where, field)
    else:
        raise ValueError(f"{where}.kind: {kind!r} is not one of generated, jsonl, hf")
    return _non_empty(texts, where)


def _non_empty(texts, where: str) -> Iterator[str]:
    n = 0
    for t in texts:
        if not isinstance(t, str):
            raise SourceError(f"{where}: document {n} is a {type(t).__name__}, not text")
        if t.strip():
            n += 1
            yield t
    if n == 0:
        raise SourceError(f"{where}: the corpus holds no documents")
