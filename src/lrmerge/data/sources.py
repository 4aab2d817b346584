"""Where text comes from, and in which order: the generated languages (mini), local jsonl
files, or any `datasets.load_dataset` source, optionally as named subsets mixed at weights.

A corpus is read as a **seeded sample**, never in its stored order (a corpus stored by source,
site, date or file would otherwise give a budget one slice of it). The order is prefix-stable --
reading further never changes what came first -- so a larger budget extends the text of the
smaller ones instead of replacing it:

- local jsonl files, and hub datasets that are downloaded (`streaming: false`): every document
  of every file in one seeded permutation (`lrmerge.data.order.Permutation`), so any prefix is
  a uniform sample of the whole corpus;
- streamed hub datasets (`streaming: true`), which cannot be read at random: the files in a
  seeded order, `open_files` of them read at once (the next document from a random one), through
  a shuffle buffer of `shuffle_buffer` documents;
- subsets (`subsets`): each subset's documents in their own seeded order, mixed so that every
  prefix holds each subset's target share of tokens (the next document goes to the subset
  furthest below its share, as Megatron's BlendedDataset does), or, when one source's rows name
  their subset (`subsets.field`), rows of a subset above its share are passed over.

Each source is a lazy iterator, so a paper-scale corpus never sits in memory and the data stage
reads only as far as it needs."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lrmerge.config import corpus_key, language_entry, text_language
from lrmerge.data import synthetic
from lrmerge.data.order import LineIndex, Permutation, buffered, interleaved, seed_key

BATCH_ROWS = 1000  # rows fetched at once from a downloaded hub dataset


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


def files(given: str | list[str], key: str) -> list[str]:
    """A path, a glob or a list of them (config key `key`) -> the files, each glob's sorted;
    a glob that matches nothing or a file that does not exist stops, naming the key."""
    out = []
    for p in [given] if isinstance(given, str) else given:
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise SourceError(f"{key}: no file matches {p}")
        for m in matches:
            if not Path(m).is_file():
                raise SourceError(f"{key}: file {m} not found")
        out.extend(matches)
    return out


def paths(spec: dict, where: str) -> list[str]:
    """The files of a jsonl entry's `path`."""
    if not spec.get("path"):
        raise ValueError(f"config key {where}.path is required for kind: jsonl")
    return files(spec["path"], f"{where}.path")


def field_value(row: dict, dotted: str):
    """row["a"]["b"] for "a.b". A nested level stored as a JSON string (some parquet
    conversions keep `meta` so) is read as the object it holds. KeyError says which part is
    missing where, and what is there."""
    value, seen = row, []
    for part in dotted.split("."):
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if not isinstance(value, dict) or part not in value:
            present = ", ".join(value) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"{'.'.join(seen) or 'the row'} has no {part!r} ({present})")
        value, seen = value[part], [*seen, part]
    return value


class _Rows:
    """One source's rows in its seeded sample order, as (text, subset value or None)."""

    def __init__(self, spec: dict, where: str, key: tuple, field_of_subset: str | None):
        self.spec, self.where, self.key = spec, where, key
        self.text_field, self.subset_field = spec["text_field"], field_of_subset
        kind = spec.get("kind")
        if kind not in ("jsonl", "hf"):
            raise ValueError(f"{where}.kind: {kind!r} is not one of generated, jsonl, hf")
        self.kind = kind
        self.size_bytes: int | None = None
        self.sampling: dict = {}
        if kind == "jsonl":
            self.index = LineIndex(paths(spec, where))
            self.size_bytes = int(self.index.lengths.sum(dtype=np.int64))
            self.sampling = {"order": "permutation", "documents": len(self.index),
                             "files": len(self.index.paths)}
        else:
            self.ds = load_hf(spec, where)
            if spec.get("streaming"):
                n_files = int(getattr(self.ds, "num_shards", 1) or 1)
                self.sampling = {"order": "stream", "files": n_files,
                                 "open_files": min(n_files, int(spec["open_files"])),
                                 "shuffle_buffer": int(spec["shuffle_buffer"])}
                info = getattr(self.ds, "info", None)
                self.size_bytes = getattr(info, "dataset_size", None) if info else None
            else:
                self.sampling = {"order": "permutation", "documents": len(self.ds)}
                self.size_bytes = int(self.ds.data.nbytes)

    def _pick(self, row, at) -> tuple:
        """(text, subset value) of a row; `at()` says where the row is, for the error."""
        if not isinstance(row, dict):
            raise SourceError(f"{at()} is not a JSON object ({self.where})")
        if self.text_field not in row:
            raise SourceError(f"{at()} has no text field {self.text_field!r} (fields: "
                              f"{', '.join(row)}); set {self.where}.text_field")
        sub = None
        if self.subset_field:
            try:
                sub = str(field_value(row, self.subset_field))
            except KeyError:
                raise SourceError(f"{at()} has no subset field {self.subset_field!r} (fields: "
                                  f"{', '.join(row)}); set {self.where}.subsets.field") from None
        return row[self.text_field], sub

    def __iter__(self) -> Iterator[tuple]:
        if self.kind == "jsonl":
            yield from self._jsonl()
        elif self.spec.get("streaming"):
            yield from self._stream()
        else:
            yield from self._table()

    def _jsonl(self) -> Iterator[tuple]:
        idx = self.index
        perm = Permutation(len(idx), *self.key)
        try:
            for start in range(0, len(idx), BATCH_ROWS):
                for i in perm.take(np.arange(start, min(len(idx), start + BATCH_ROWS))).tolist():
                    f, raw = idx.line(i)

                    def at(i=i, f=f):
                        return f"{idx.paths[f]}: line {idx.line_number(i)}"

                    try:
                        row = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise SourceError(f"{at()} is not JSON ({e}) ({self.where})") from None
                    yield self._pick(row, at)
        finally:
            idx.close()

    def _table(self) -> Iterator[tuple]:
        perm = Permutation(len(self.ds), *self.key)
        for start in range(0, len(self.ds), BATCH_ROWS):
            rows = perm.take(np.arange(start, min(len(self.ds), start + BATCH_ROWS)))
            for i, row in zip(rows.tolist(), self.ds.select(rows), strict=True):
                yield self._pick(row, lambda i=i: f"{self.where}: row {i}")

    def _stream(self) -> Iterator[tuple]:
        rng = np.random.default_rng(seed_key("stream", *self.key))
        ds, n = self.ds, self.sampling["open_files"]
        # files in a seeded order, `n` groups of them read at once
        parts = [ds.shard(num_shards=n, index=j).shuffle(seed=int(rng.integers(2**31)),
                                                         buffer_size=1)
                 for j in range(n)] if n > 1 else [ds.shuffle(seed=int(rng.integers(2**31)),
                                                              buffer_size=1)]
        rows = interleaved(parts, rng)
        for k, row in enumerate(buffered(rows, self.sampling["shuffle_buffer"], rng)):
            yield self._pick(row, lambda k=k: f"{self.where}: streamed row {k}")


class Corpus:
    """A language's corpus ("en": the English corpus) as the data stage reads it: `documents()`
    gives (text, subset number) in the seeded order (subset 0 when it has no subsets), `names`
    the subsets (`subset_kind` None without), `sampling` what the manifest records of how it
    was drawn. A corpus with weighted subsets is told the exact tokens written so far
    (`observe`), so its mix holds in tokens, not in characters."""

    def __init__(self, cfg: dict, lang: str):
        spec = language_entry(cfg, lang).get("corpus") or {}
        self.where = where = corpus_key(lang)
        self.kind = spec.get("kind")
        self.key = ("corpus", cfg.get("seed", 0), text_language(cfg, lang) if lang != "en"
                    else "en")
        subsets = spec.get("subsets")
        self.subset_kind = "subset" if subsets else None
        self.names: list[str] = []
        self.weights: np.ndarray | None = None
        self.sampling: dict = {}
        self.field: str | None = None
        self._written = None  # () -> the writer's counts per subset (`observe`)
        # the subsets' shape (field or sources, weights of subsets that exist, summing to a
        # positive number, none for generated text) is lrmerge.config.check_config's
        if self.kind == "generated":
            # English keeps its own seed stream ("pretrain"): the mini base is trained on it.
            self._gen = (cfg, lang, "pretrain" if lang == "en" else "ct")
            self.sampling = {"order": "generated"}
            return
        if self.kind not in ("jsonl", "hf"):
            raise ValueError(f"{where}.kind: {self.kind!r} is not one of generated, jsonl, hf")
        if not subsets:
            self.sources = [_Rows(spec, where, self.key, None)]
            self.names = ["all"]
            self.sampling = self.sources[0].sampling
            return
        weights = subsets.get("weights", "proportional")
        if subsets.get("field"):
            self.field = subsets["field"]
            self.sources = [_Rows(spec, where, self.key, self.field)]
            if weights != "proportional":
                self.names = list(weights)
                self.weights = _normalised(weights)
            self.sampling = {**self.sources[0].sampling, "subsets": {"field": self.field}}
        else:
            given = subsets["sources"]
            base = {k: v for k, v in spec.items() if k != "subsets"}
            self.names = list(given)
            self.sources = [_Rows({**base, **(given[name] or {})}, f"{where}.subsets.sources."
                                  f"{name}", (*self.key, name), None) for name in self.names]
            if weights == "proportional":
                sizes = {}
                for name, src in zip(self.names, self.sources, strict=True):
                    if not src.size_bytes:
                        raise ValueError(
                            f"{where}.subsets.weights: proportional, but the size of subset "
                            f"{name!r} is not known before reading it (a streamed hub "
                            "dataset without size information); give weights")
                    sizes[name] = src.size_bytes
                weights = sizes
            else:  # a subset without a weight is left out
                weights = {n: weights.get(n, 0.0) for n in self.names}
            self.weights = _normalised(weights)
            self.sampling = {"order": "subsets", "subsets": {
                n: src.sampling for n, src in zip(self.names, self.sources, strict=True)}}
        if self.weights is not None:
            self.sampling["target_shares"] = dict(zip(self.names, (round(float(w), 6) for w in
                                                                   self.weights), strict=True))
            self.sampling["weights_unit"] = "tokens"

    def observe(self, written) -> None:
        """`written()`: the writer's per-subset counts so far (subsets x documents, tokens,
        characters, bytes), which the mix reads before each choice."""
        self._written = written

    def documents(self) -> Iterator[tuple[str, int]]:
        if self.kind == "generated":
            return ((t, 0) for t in synthetic.documents(*self._gen))
        if self.field:
            return _non_empty(self._filtered(), self.where)
        if len(self.sources) == 1:
            return _non_empty(((t, 0) for t, _ in self.sources[0]), self.where)
        return _non_empty(self._mixed(), self.where)

    # -- mixing: estimated tokens of what was chosen, made exact as the writer catches up ----
    def _taken(self, chosen_chars: np.ndarray) -> np.ndarray:
        """Tokens per subset of everything chosen so far: exact for what the writer has
        written, the rest estimated at each subset's characters per token so far."""
        k = len(self.names)
        written = None if self._written is None else self._written()
        if written is None or len(written) < k:
            done = np.zeros((k, 2))
        else:
            done = written[:k, 1:3].astype(float)  # tokens, characters
        tokens, chars = done[:, 0], done[:, 1]
        known = tokens.sum()
        overall = chars.sum() / known if known else 1.0
        cpt = np.where(tokens > 0, chars / np.maximum(tokens, 1), overall)
        return tokens + np.maximum(chosen_chars - chars, 0) / np.maximum(cpt, 1e-9)

    def _mixed(self) -> Iterator[tuple[str, int]]:
        its = [iter(s) for s in self.sources]
        open_ = np.ones(len(its), dtype=bool)
        chars = np.zeros(len(its))
        while open_.any():
            taken = self._taken(chars)
            gap = self.weights * taken.sum() - taken
            gap[~open_ | (self.weights == 0)] = -np.inf
            if not np.isfinite(gap).any():
                return
            s = int(np.argmax(gap))
            try:
                text, _ = next(its[s])
            except StopIteration:
                open_[s] = False
                self.sampling.setdefault("exhausted", []).append(self.names[s])
                continue
            chars[s] += len(text) if isinstance(text, str) else 0
            yield text, s

    def _filtered(self) -> Iterator[tuple[str, int]]:
        """One source whose rows name their subset: proportional keeps every row (subsets in
        the order first seen); weights pass over a row whose subset is above its share."""
        index = {n: i for i, n in enumerate(self.names)}
        chars = np.zeros(max(1, len(self.names)))
        passed, other = 0, {}
        for text, sub in self.sources[0]:
            if self.weights is None:
                if sub not in index:
                    index[sub] = len(self.names)
                    self.names.append(sub)
                yield text, index[sub]
                continue
            s = index.get(sub)
            if s is None and (sub in other or len(other) < 20):  # values without a weight
                other[sub] = other.get(sub, 0) + 1
                self.sampling["other_subsets"] = other
            if s is None or self.weights[s] == 0 or \
                    (taken := self._taken(chars))[s] > self.weights[s] * taken.sum():
                passed += 1
                self.sampling["rows_passed_over"] = passed
                continue
            chars[s] += len(text) if isinstance(text, str) else 0
            yield text, s


def _normalised(weights: dict) -> np.ndarray:
    w = np.array([float(v) for v in weights.values()], dtype=float)
    return w / w.sum()


def corpus_documents(cfg: dict, lang: str) -> Iterator[str]:
    """The documents of a language's corpus ("en": the English corpus), in the data stage's
    seeded order, empty ones skipped. Generated corpora are endless; config errors raise before
    the first document."""
    return (text for text, _ in Corpus(cfg, lang).documents())


def _non_empty(docs, where: str) -> Iterator[tuple[str, int]]:
    n = 0
    for t, g in docs:
        if not isinstance(t, str):
            raise SourceError(f"{where}: document {n} is a {type(t).__name__}, not text")
        if t.strip():
            n += 1
            yield t, g
    if n == 0:
        raise SourceError(f"{where}: the corpus holds no documents")
