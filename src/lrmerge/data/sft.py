"""The English instruction data ("SFT-flan") as a task mixture, tokenized once (`prepare_sft`).

Sources (`sft.data.kind`): the mini FLAN (generated), local jsonl files, or a hub dataset. Each
row {prompt_field, response_field} belongs to a task: the row's `task_field`, or, when that is
null, the name of the file it comes from (`task_pattern`, a regular expression with one group
over the file's base name). `Muennighoff/flan` stores one file per FLAN task
(train/anli_r1_10templates_train.jsonl, ...), alphabetically: read in file order, a run would see
the first tasks only and end on one long block of a single task. The generated mini FLAN's
task is its family.

The mixture (`lrmerge.data.mixture`, FLAN 2021's recipe): each task gives a seeded uniform sample
of min(its examples, max_per_task) x its weight (`task_weights`, default 1), and all of them are
put in one seeded stratified shuffle, so every prefix of the order holds the tasks in their
final shares; `max_examples` keeps the start of that order. The token folder is written in that
order, which is the order SFT trains in (`lrmerge.train.stream.Packed` packs it in order).

Memory at any source size: pass 1 reads every row once and keeps only its task number (4 bytes a
row; -1 for an empty response), the sample is index arrays (about 24 bytes a selected example),
pass 2 tokenizes the selected rows in source order into a temporary token folder, and the final
folder is copied from it in the mixture's order a chunk at a time (benchmarks/bench_sft.py).
"""

from __future__ import annotations

import fnmatch
import mmap
import os
import random
import re
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrmerge.data import budget, mixture, synthetic
from lrmerge.data.shards import DataShortError, ShardWriter, TokenShards
from lrmerge.data.sources import SourceError, files, jsonl_rows, load_hf, paths
from lrmerge.data.tokenize import (
    _encode_sft,
    document_marks,
    encoded_batches,
    load_tokenizer,
    tokenizer_identity,
)

WHERE = "sft.data"
EMPTY = -1  # pass 1's task number of a row with an empty response: not an example
COPY_DOCS = 8192  # examples copied into the final folder per chunk
GENERATED_TASK_FIELD = "family"


def generated_rows(cfg: dict) -> list[dict]:
    """The mini FLAN: the four task families in turn, the English test items held out."""
    mini = cfg["mini"]
    g = synthetic.Grammar(random.Random(f"sft:{cfg['seed']}"))
    lex = synthetic.Lexicon("en", None, 0)
    # The English test items stay unseen: an SFT prompt equal to one is drawn again.
    held_out = set()
    sources = cfg["evaluate"]["sources"]
    for task in cfg["english"]["tasks"]:
        if sources[task]["kind"] == "generated":
            held_out |= {r["query"] for r in synthetic.task_rows(
                cfg, "en", task, sources[task]["family"], "test", mini["eval_examples"])}
    rows = []
    for i in range(mini["sft_examples"]):
        while True:
            item = synthetic.mc_item(synthetic.FAMILIES[i % len(synthetic.FAMILIES)], g, lex)
            if item["query"] not in held_out:
                break
        rows.append({"prompt": item["query"], "response": item["choices"][item["gold"]],
                     "family": item["family"]})
    return rows


# --------------------------------------------------------------------------------------------
# The source as parts (a file, a dataset), each read afresh on every pass
# --------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One file or dataset of the source. `rows()` starts a new pass over its rows in stored
    order; `task` is every row's task (from the file name), or None: each row's task field."""

    label: str
    rows: Callable[[], Iterable[dict]]
    task: str | None


@dataclass
class Source:
    parts: list[Part]
    prompt_field: str
    response_field: str
    task_field: str | None  # None: the task is the part's
    checked: bool  # the parts' readers check the fields themselves (jsonl_rows)


def _task_regex(spec: dict) -> re.Pattern:
    pattern = spec["task_pattern"]
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{WHERE}.task_pattern: {pattern!r} is not a regular expression "
                         f"({e})") from None
    if rx.groups != 1:
        raise ValueError(f"{WHERE}.task_pattern: {pattern!r} has {rx.groups} groups; it needs "
                         "exactly one, the task")
    return rx


def task_of_file(name: str, rx: re.Pattern) -> str:
    """The task a file holds, from its base name (Muennighoff/flan:
    anli_r1_10templates_train.jsonl -> anli_r1)."""
    base = name.rsplit("/", 1)[-1]
    m = rx.fullmatch(base)
    if not m or not m.group(1):
        raise SourceError(f"{WHERE}.task_pattern: file {name} does not match "
                          f"{rx.pattern!r}, so its task is unknown; set task_pattern, or "
                          "task_field (a row field naming the task)")
    return m.group(1)


def _hub_files(spec: dict) -> list[tuple[str, Callable[[], str]]]:
    """kind hf, the task from file names: (name, a function giving a local copy) of each file
    of the dataset matching data_files (default <split>/*.jsonl). `path` is a hub dataset, a
    local folder of the same layout, or `json` with local data_files."""
    path, split = spec["path"], spec.get("split") or "train"
    patterns = spec.get("data_files") or f"{split}/*.jsonl"
    if isinstance(patterns, dict):
        if split not in patterns:
            raise ValueError(f"{WHERE}.data_files: no entry for split {split!r}")
        patterns = patterns[split]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if path == "json":  # the json builder's own data_files: local files
        return [(f, lambda f=f: f) for f in files(patterns, f"{WHERE}.data_files")]
    if Path(path).is_dir():
        root = Path(path)
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

        def fetch(name: str) -> str:
            return str(root / name)
    else:
        import huggingface_hub

        revision = spec.get("revision")
        try:
            names = sorted(huggingface_hub.list_repo_files(path, repo_type="dataset",
                                                           revision=revision))
        except Exception as e:  # name the config entry: the hub's errors do not
            raise RuntimeError(f"{WHERE}: cannot list the files of dataset {path!r} ({e}); "
                               "sft.data.task_field is null, so each row's task is its file's "
                               "name") from e

        def fetch(name: str) -> str:
            return huggingface_hub.hf_hub_download(path, name, repo_type="dataset",
                                                   revision=revision)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise SourceError(f"{WHERE}.data_files: no file of {path} matches "
                          f"{', '.join(patterns)}")
    return [(n, lambda n=n: fetch(n)) for n in chosen]


def source(cfg: dict) -> Source:
    """The parts of `sft.data`, each with its task or the field that names it."""
    spec = cfg["sft"]["data"]
    kind = spec["kind"]
    if kind == "generated":
        rows = generated_rows(cfg)
        return Source([Part("generated", lambda: rows, None)], "prompt", "response",
                      GENERATED_TASK_FIELD, True)
    pf, rf, tf = spec["prompt_field"], spec["response_field"], spec.get("task_field")
    fields = (pf, rf) + ((tf,) if tf else ())
    hint = f"{WHERE}.prompt_field/response_field" + ("/task_field" if tf else "")
    rx = None if tf else _task_regex(spec)

    def jsonl_part(name: str, local: Callable[[], str]) -> Part:
        return Part(name, lambda: jsonl_rows([local()], WHERE, fields, hint),
                    task_of_file(name, rx) if rx else None)

    if kind == "jsonl":
        return Source([jsonl_part(f, lambda f=f: f) for f in paths(spec, WHERE)], pf, rf, tf,
                      True)
    if kind != "hf":
        raise ValueError(f"{WHERE}.kind: {kind!r} is not one of generated, jsonl, hf")
    if not spec.get("path"):
        raise ValueError(f"config key {WHERE}.path is required for kind: hf")
    if tf:
        return Source([Part(spec["path"], lambda: load_hf(spec, WHERE), None)], pf, rf, tf,
                      False)
    cache: dict[str, str] = {}  # each hub file fetched once

    def once(name: str, fetch: Callable[[], str]) -> Callable[[], str]:
        def local() -> str:
            if name not in cache:
                cache[name] = fetch()
            return cache[name]
        return local

    return Source([jsonl_part(n, once(n, f)) for n, f in _hub_files(spec)], pf, rf, None, True)


# --------------------------------------------------------------------------------------------
# Pass 1: every row's task; the plan of the mixture
# --------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What the mixture takes: `tasks` (sorted names), per task the examples `available` and
    `taken` (repeats counted), the order as (task, row) per position, `rows` the source rows
    read (all parts, stored order), `empty` those skipped for an empty response."""

    tasks: list[str]
    available: np.ndarray
    weights: np.ndarray
    taken: np.ndarray
    order_task: np.ndarray  # task of each position of the order
    order_row: np.ndarray  # source row (over all parts, stored order) of each position
    rows: int
    empty: int
    files: dict  # task -> the files it came from (tasks from file names)

    def manifest(self, spec: dict, seed: int) -> dict:
        total = max(1, int(self.taken.sum()))
        task_from = ("family" if spec["kind"] == "generated" else
                     f"field {spec['task_field']!r}" if spec.get("task_field") else "file name")
        return {
            "task_from": task_from,
            "task_pattern": spec.get("task_pattern") if task_from == "file name" else None,
            "max_per_task": spec.get("max_per_task"), "task_weights": spec.get("task_weights"),
            "max_examples": spec.get("max_examples"), "seed": seed,
            "order": "stratified shuffle: every prefix holds each task within one example of "
                     "its share",
            "rows_read": self.rows, "rows_empty_response": self.empty,
            "examples": int(self.taken.sum()),
            "tasks": {name: {"available": int(a), "weight": float(w), "taken": int(k),
                             "share": round(int(k) / total, 6),
                             **({"files": self.files[name]} if name in self.files else {})}
                      for name, a, w, k in zip(self.tasks, self.available, self.weights,
                                               self.taken, strict=True)}}


def _task_numbers(src: Source) -> tuple[np.ndarray, list[str], dict]:
    """Pass 1: each row's task number (in order of first appearance; EMPTY: an empty
    response), the task names, and the files of each task."""
    index: dict[str, int] = {}
    numbers = array("i")
    files: dict[str, list[str]] = {}
    pf, rf, tf = src.prompt_field, src.response_field, src.task_field
    for part in src.parts:
        if part.task is not None:
            files.setdefault(part.task, []).append(part.label)
        for i, row in enumerate(part.rows()):
            if not src.checked:
                for f in (pf, rf, tf):
                    if f not in row:
                        key = ("task_field" if f == tf else
                               "prompt_field/response_field")
                        raise SourceError(f"{WHERE}: row {i} of {part.label} has no field {f!r} "
                                          f"(fields: {', '.join(row)}); set {WHERE}.{key}")
            if not str(row[rf]).strip():
                numbers.append(EMPTY)
                continue
            task = part.task
            if task is None:
                value = row[tf]
                if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
                    raise SourceError(f"{WHERE}: row {i} of {part.label}: task field {tf!r} is "
                                      f"{value!r}, not a task name ({WHERE}.task_field)")
                task = str(value)
            n = index.get(task)
            if n is None:
                n = index[task] = len(index)
            numbers.append(n)
    return np.frombuffer(numbers, dtype=np.int32), list(index), files


def _weights(spec: dict, tasks: list[str]) -> np.ndarray:
    given = spec.get("task_weights") or {}
    unknown = sorted(set(given) - set(tasks))
    if unknown:
        shown = ", ".join(tasks[:20]) + (", ..." if len(tasks) > 20 else "")
        raise ValueError(f"{WHERE}.task_weights: {', '.join(map(repr, unknown))} "
                         f"{'is not a task' if len(unknown) == 1 else 'are not tasks'} of the "
                         f"data (its {len(tasks)} tasks: {shown})")
    w = np.array([float(given.get(t, 1.0)) for t in tasks], dtype=np.float64)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"{WHERE}.task_weights: weights must be >= 0 and sum to a positive "
                         f"number over the data's tasks (given: {dict(given)})")
    return w


def plan_mixture(cfg: dict, src: Source) -> Plan:
    """Pass 1 over the source, then the sample and order of the mixture (seeded by `seed`)."""
    spec, seed = cfg["sft"]["data"], int(cfg["seed"])
    cap = spec.get("max_per_task")
    if cap is not None and int(cap) < 1:
        raise ValueError(f"{WHERE}.max_per_task: {cap} (an integer >= 1, or null for no cap)")
    numbers, first_seen, files = _task_numbers(src)
    rows = len(numbers)
    if rows == 0 or (numbers == EMPTY).all():
        raise SourceError(f"{WHERE}: the source gave no examples")
    # tasks renumbered in name order: the plan does not depend on the order of the files
    tasks = sorted(first_seen)
    renumber = np.array([tasks.index(t) for t in first_seen] + [EMPTY], dtype=np.int32)
    numbers = renumber[numbers]  # EMPTY (-1) indexes the last entry, itself EMPTY
    empty = int((numbers == EMPTY).sum())
    available = np.bincount(numbers[numbers != EMPTY], minlength=len(tasks))
    weights = _weights(spec, tasks)
    counts = mixture.task_counts(available, cap, weights)
    if counts.sum() == 0:
        raise SourceError(f"{WHERE}: the mixture is empty (max_per_task {cap}, task_weights "
                          f"{spec.get('task_weights')})")
    order_task, j = mixture.stratified_order(counts, mixture.rng_for(seed, "sft mixture order"))
    limit = spec.get("max_examples")
    if limit is not None and int(limit) < len(order_task):
        order_task, j = order_task[:int(limit)], j[:int(limit)]
    taken = np.bincount(order_task, minlength=len(tasks))
    # rows grouped by task (stored order kept within each): the empty ones first, then task 0..
    by_task = np.argsort(numbers, kind="stable")
    bounds = empty + np.concatenate([[0], np.cumsum(available)])
    order_row = np.empty(len(order_task), dtype=np.int64)
    for t, name in enumerate(tasks):
        if not taken[t]:
            continue
        rows_t = by_task[bounds[t]:bounds[t + 1]]
        at = order_task == t
        draws = mixture.draw(len(rows_t), int(counts[t]), mixture.rng_for(seed, "sft task", name))
        order_row[at] = rows_t[draws[j[at]]]
    return Plan(tasks, available, weights, taken, order_task, order_row, rows, empty, files)


def _selected_pairs(src: Source, rows: np.ndarray, join: str, n_rows: int) -> Iterator[tuple]:
    """Pass 2: (prompt, join + response) of the rows at the sorted positions `rows`, in stored
    order."""
    pf, rf = src.prompt_field, src.response_field
    k, at = 0, 0
    nxt = int(rows[0]) if len(rows) else -1
    for part in src.parts:
        for row in part.rows():
            if at == nxt:
                yield str(row[pf]), join + str(row[rf])
                k += 1
                nxt = int(rows[k]) if k < len(rows) else -1
            at += 1
    if at != n_rows or k != len(rows):
        raise SourceError(f"{WHERE}: the source gave {at} rows on its second read, {n_rows} on "
                          "its first: it changed while the data stage read it")


def sft_rows(cfg: dict) -> list[dict]:
    """The mixture's examples {"prompt", "response", "task"} in training order, in memory (for
    small data and inspection; `prepare_sft` writes the same examples without holding them)."""
    src = source(cfg)
    plan = plan_mixture(cfg, src)
    uniq, inv = np.unique(plan.order_row, return_inverse=True)
    pairs = list(_selected_pairs(src, uniq, "", plan.rows))
    return [{"prompt": pairs[d][0], "response": pairs[d][1], "task": plan.tasks[t]}
            for d, t in zip(inv.tolist(), plan.order_task.tolist(), strict=True)]


# --------------------------------------------------------------------------------------------
# SFT data: examples tokenized with their prompt length (the loss mask), in the mixture's order
# --------------------------------------------------------------------------------------------
class _Mapped:
    """A read-only map of a token folder's flat token file (one shard), whose pages can be
    dropped from this process after each chunk (they stay in the page cache)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self._fh = open(path, "rb")
        size = os.fstat(self._fh.fileno()).st_size
        self._mm = mmap.mmap(self._fh.fileno(), size, access=mmap.ACCESS_READ) if size else None
        self.tokens = (np.frombuffer(self._mm, dtype=dtype) if self._mm is not None
                       else np.zeros(0, dtype))

    def drop_pages(self) -> None:
        if self._mm is not None:
            self._mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.tokens = None
        if self._mm is not None:
            self._mm.close()
        self._fh.close()


def _drop_pages(*arrays) -> None:
    """Unmap the pages of np.memmap arrays read so far (as TokenShards does for tokens)."""
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if mm is not None:
            mm.madvise(mmap.MADV_DONTNEED)


def _gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The documents [starts, starts + lengths) of a flat token array, back to back."""
    if not len(lengths):
        return tokens[:0]
    before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return tokens[np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))]


def _copy_in_order(rows_dir: Path, inv: np.ndarray, order_task: np.ndarray,
                   writer: ShardWriter) -> np.ndarray:
    """Write the examples of the temporary folder (one per selected row) in the mixture's
    order; returns the examples' lengths in that order."""
    rows = TokenShards(rows_dir)
    mapped = _Mapped(rows_dir / rows.manifest["shards"][0]["file"], rows.dtype)
    lengths_all = []
    try:
        for a in range(0, len(inv), COPY_DOCS):
            d = inv[a:a + COPY_DOCS]
            ends = np.asarray(rows.doc_ends[d], dtype=np.int64)
            starts = np.where(d > 0, np.asarray(rows.doc_ends[np.maximum(d - 1, 0)],
                                                dtype=np.int64), 0)
            lengths = ends - starts
            text = np.asarray(rows.text[d], dtype=np.int64) - np.where(
                (d > 0)[:, None], np.asarray(rows.text[np.maximum(d - 1, 0)], dtype=np.int64), 0)
            writer.add(_gather(mapped.tokens, starts, lengths), lengths,
                       np.asarray(rows.prompts[d]), text, groups=order_task[a:a + COPY_DOCS])
            lengths_all.append(lengths)
            mapped.drop_pages()
            _drop_pages(rows.doc_ends, rows.text, rows.prompts)
    finally:
        mapped.close()
    return np.concatenate(lengths_all)


def prepare_sft(cfg: dict, tokenizer: str, out: str | os.PathLike, workers: int = 1,
                log=print) -> dict:
    t0 = time.time()
    sft = cfg["sft"]
    spec = sft["data"]
    out = Path(out)
    tok = load_tokenizer(tokenizer)
    marks = document_marks(tok, cfg["data"])
    src = source(cfg)
    plan = plan_mixture(cfg, src)
    uniq, inv = np.unique(plan.order_row, return_inverse=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, len(tok), cfg["data"]["shard_tokens"], with_prompts=True,
                         groups=("task", plan.tasks))
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.rows.", dir=out.parent) as tmp:
            # the selected rows tokenized in stored order (one shard), then copied in order
            rows_writer = ShardWriter(Path(tmp) / "rows", len(tok), 1 << 62, with_prompts=True)
            try:
                pairs = _selected_pairs(src, uniq, sft["join"], plan.rows)
                for flat, lengths, prompts, text, _ in encoded_batches(tok, marks, pairs, workers,
                                                                        _encode_sft):
                    rows_writer.add(flat, lengths, prompts, text)
                rows_writer.finish({"kind": "sft rows (temporary, stored order)"})
            except BaseException:
                rows_writer.abort()
                raise
            lengths = _copy_in_order(Path(tmp) / "rows", inv, plan.order_task, writer)
        sequences = len(budget.pack(lengths, sft["seq_len"])) - 1
        need = sft["steps"] * sft["batch_size"]
        allow = spec["allow_repeat"]
        if sequences < need and not allow:
            raise DataShortError(
                f"{WHERE}: {writer.documents} examples pack into {sequences} sequences of "
                f"{sft['seq_len']} tokens, but sft.steps x sft.batch_size needs {need}; add "
                "examples (max_per_task, task_weights), or set sft.data.allow_repeat: true to "
                "run several epochs")
        manifest = writer.finish({
            "kind": "sft", "tokenizer": tokenizer_identity(tok), **marks.manifest,
            "source": spec, "mixture": plan.manifest(spec, int(cfg["seed"])),
            "join": sft["join"], "seq_len": sft["seq_len"], "sequences": sequences,
            "need_sequences": need, "allow_repeat": allow,
            "passes_needed": round(max(1.0, need / sequences), 4),
            "longer_than_seq_len": budget.longer_than(lengths, sft["seq_len"]),
            "seconds": round(time.time() - t0, 2), "workers": workers})
    except BaseException:
        writer.abort()
        raise
    tokens = max(1, manifest["tokens"])
    top = sorted(manifest["groups"]["tokens"].items(), key=lambda kv: -kv[1])[:5]
    most = ", ".join(f"{k} {v / tokens:.1%}" for k, v in top)
    log(f"sft: {manifest['documents']} examples of {len(plan.tasks)} tasks, {manifest['tokens']} "
        f"tokens (most: {most}), {sequences} packed sequences (need {need}; "
        f"{manifest['longer_than_seq_len']} examples cut to seq_len; {marks.describe()})")
    return manifest
