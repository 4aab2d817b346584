"""The merge driver: validate inputs, stream tensors through a method, write the output atomically.

One tensor at a time: the next tensor is read (pread, hashed) on a reader thread while the kernels
merge the current one on all cores, and the previous result is written on a writer thread. Memory is a
few tensors' worth whatever the model size. Output goes to a `.NAME.partial` folder beside the target,
which is renamed into place only when everything, stats included, is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from lrmerge import fsutil

from .checkpoint import DTYPE_NAMES, DTYPES, ITEMSIZE, Checkpoint, OutputTensor, ShardedWriter
from .errors import MergeError
from .merge_config import MergeConfig, is_hub_id, load_merge_config
from .stats import summarize
from .vocab import (
    VOCAB_TENSORS,
    VocabPlan,
    cut_to_shared,
    fill_new_rows,
    plan_vocab,
    write_tokenizer,
)

AUX_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
             "merges.txt", "chat_template.jinja", "chat_template.json")
DEFAULT_SHARD_SIZE = 5 * 1024**3
OUT_BUFFERS = 3


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "b": 1}
    t = text.strip().lower()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


@dataclass
class Inputs:
    config: MergeConfig
    base: Checkpoint | None
    models: list[Checkpoint]
    vocab: VocabPlan | None = None  # set where the models' vocabularies differ

    def out_shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in the output: the reference's, with every token's row (a merge
        across vocabularies)."""
        shape = self.reference.tensors[name].shape
        if self.vocab is not None and name in VOCAB_TENSORS:
            return (self.vocab.size, *shape[1:])
        return shape

    @property
    def reference(self) -> Checkpoint:
        return self.base or self.models[0]

    @property
    def all(self) -> list[Checkpoint]:
        return ([self.base] if self.base else []) + self.models


def _locate(path: Path, name: str) -> Path:
    """A local folder as it is; a missing one that looks like a hub id is fetched from the hub."""
    if path.is_dir():
        return path
    text = str(path)
    if is_hub_id(text):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, allow_patterns=["*.safetensors", "*.json", "tokenizer*"]))
        except Exception as e:  # offline, unknown repo, no access: all the same to the user
            raise MergeError(f"model '{name}': {text} is not a local folder and could not be "
                             f"fetched from the hub ({type(e).__name__})") from e
    raise MergeError(f"model '{name}': folder {text} does not exist")


def open_inputs(config: MergeConfig) -> Inputs:
    base = Checkpoint(_locate(config.base, config.base_name), config.base_name) if config.base else None
    models = [Checkpoint(_locate(m.path, m.name), m.name) for m in config.models]
    inputs = Inputs(config, base, models, plan_vocab(config, base, models))
    if inputs.vocab is not None:
        cut_to_shared(inputs.vocab, inputs.all)  # the method sees the rows every input has
    _check_compatible(inputs)
    return inputs


def _check_compatible(inputs: Inputs) -> None:
    ref = inputs.reference
    vocab = {c.name: c.config().get("vocab_size") for c in inputs.all}
    known = {k: v for k, v in vocab.items() if v is not None}
    if len(set(known.values())) > 1 and inputs.vocab is None:
        sizes = ", ".join(f"{k}={v}" for k, v in known.items())
        raise MergeError(f"vocabulary-size mismatch (config.json vocab_size): {sizes}")
    for ckpt in inputs.all:
        if ckpt is ref:
            continue
        missing = sorted(set(ref.tensors) - set(ckpt.tensors))
        if missing:
            raise MergeError(f"tensor {missing[0]} is missing from model '{ckpt.name}' ({ckpt.folder})")
        extra = sorted(set(ckpt.tensors) - set(ref.tensors))
        if extra:
            raise MergeError(f"tensor {extra[0]} of model '{ckpt.name}' is missing from '{ref.name}'")
        for name, info in ref.tensors.items():
            other = ckpt.tensors[name]
            if other.shape != info.shape:
                hint = " (vocabulary-size mismatch)" if "embed" in name or "lm_head" in name else ""
                raise MergeError(f"tensor {name}: shape {list(other.shape)} in model '{ckpt.name}' "
                                 f"but {list(info.shape)} in '{ref.name}'{hint}")
            if other.dtype != info.dtype:
                raise MergeError(f"tensor {name}: dtype {other.dtype} in model '{ckpt.name}' but "
                                 f"{info.dtype} in '{ref.name}'; convert the models to one dtype")
    for name, info in ref.tensors.items():
        if info.dtype not in DTYPES:
            raise MergeError(f"tensor {name}: dtype {info.dtype} is not supported "
                             f"(supported: {', '.join(DTYPES)})")


class Progress:
    """A bar on a terminal, a plain line every few seconds in a log."""

    def __init__(self, total_tensors: int, total_bytes: int, stream=None, enabled=True):
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.total, self.total_bytes, self.stream = total_tensors, total_bytes, stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.start = self.last = time.perf_counter()
        self.done = self.bytes = 0

    def update(self, nbytes: int) -> None:
        self.done += 1
        self.bytes += nbytes
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = self.bytes / max(now - self.start, 1e-9) / 1e9
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            self.stream.write(f"\rmerging [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} tensors {rate:5.2f} GB/s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif now - self.last >= 5 or self.done == self.total:
            self.last = now
            print(f"merging: {self.done}/{self.total} tensors, "
                  f"{self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB read, {rate:.2f} GB/s",
                  file=self.stream, flush=True)


def _read_tensor(inputs: Inputs, name: str, hashers: dict,
                 buffer: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Read one tensor of every input, into `buffer` (reused bytes) when given."""
    info = inputs.reference.tensors[name]
    storage = DTYPES[info.dtype][0]
    rows = len(inputs.all)
    if buffer is None:
        buffer = np.empty(rows * info.nbytes, np.uint8)
    block = buffer[: rows * info.nbytes].view(storage).reshape(rows, info.numel)
    base = None
    if inputs.base is not None:
        base = block[:1]
        inputs.base.read_into(name, base)
    xs = block[rows - len(inputs.models):]
    for i, model in enumerate(inputs.models):
        model.read_into(name, xs[i])
    tag = f"{name}|{info.dtype}|{list(info.shape)}".encode()
    for ckpt, arr in ([(inputs.base, base)] if base is not None else []) + list(zip(inputs.models, xs, strict=False)):
        h = hashers[ckpt.name]
        h.update(tag)
        h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return base, xs


def _model_scope_trim(inputs: Inputs, order: list[str]) -> dict[str, list]:
    """One top-k of |tau| over all tensors of each model (the original TIES code's trim)."""
    from . import kernels as K
    from .methods import ARITH, Scratch, trim_count_pass, trim_counts
    from .topk import Selection, radix_select

    n = len(inputs.models)
    arith = ARITH[inputs.config.dtype]
    total = sum(inputs.reference.tensors[t].numel for t in order)

    buffer = np.empty(len(inputs.all) * max(inputs.reference.tensors[t].nbytes for t in order),
                      np.uint8)

    scratch = Scratch()

    def count_pass(mode, bucket, threshold):
        # the per-tensor counts summed over the model; equal counts stacked, tensor by tensor
        rows, total = [], 0
        for name in order:
            kind = DTYPES[inputs.reference.tensors[name].dtype][1]
            base, xs = _read_tensor(inputs, name, _NullHashers(), buffer)
            counts = trim_count_pass(base, xs, kind, arith, mode, bucket, threshold, scratch)
            if mode == K.COUNT_EQUAL:
                rows.append(counts)
            else:
                total = total + counts
        return np.concatenate(rows) if mode == K.COUNT_EQUAL else total

    ks = trim_counts(total, inputs.config.densities(), inputs.config.source == "mergekit")
    selections = radix_select(count_pass, n, ks, True)
    per_tensor = {}
    for t, name in enumerate(order):
        row = []
        for sel in selections:
            if sel is None:
                row.append(None)
            else:
                quota = None if sel.quota is None else sel.quota[t * K.GROUPS:(t + 1) * K.GROUPS]
                row.append(Selection(sel.threshold, quota, sel.count, sel.candidates))
        per_tensor[name] = row
    return per_tensor


class _NullHashers(dict):
    def __missing__(self, key):
        return xxhash.xxh3_128()


def _copy_aux(src: Path, dst: Path, out_dtype: str | None) -> None:
    for fname in AUX_FILES:
        if (src / fname).is_file():
            shutil.copy2(src / fname, dst / fname)
    cfg = dst / "config.json"
    if out_dtype and cfg.is_file():
        data = json.loads(cfg.read_text())
        keys = [k for k in ("torch_dtype", "dtype") if k in data] or ["torch_dtype"]
        for k in keys:
            data[k] = out_dtype
        fsutil.write_text(cfg, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _model_card(config: MergeConfig, hashes: dict[str, str], inputs: Inputs, stats: dict) -> str:
    import yaml

    from .. import __version__

    lines = ["---", "library_name: transformers", "tags: [merge, lrmerge]", "---", "",
             f"# Merged model ({config.method})", "",
             f"Made with lrmerge {__version__} `lrmerge merge` from a {config.source} config.", "",
             "## Inputs", "", "| role | name | path | content hash (xxh3-128 of all tensors) |",
             "|---|---|---|---|"]
    for ckpt in inputs.all:
        role = "base" if ckpt is inputs.base else "model"
        lines.append(f"| {role} | {ckpt.name} | `{ckpt.folder}` | `{hashes[ckpt.name]}` |")
    lines += ["", "## Parameters", "", "```yaml",
              yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(), "```", ""]
    if config.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in config.notes] + [""]
    if "vocabulary" in stats:  # a merge across vocabularies
        v = stats["vocabulary"]
        taken = ", ".join(f"{m} {n}" for m, n in v["new_rows_from"].items())
        lines += ["## Vocabulary", "",
                  f"{v['size']} tokens: the {v['shared_rows']} every input has, merged by "
                  f"{config.method}; {v['new_rows']} new tokens (rows from: {taken}), each the "
                  "weighted mean of the rows of the models that have it (one model: its row), "
                  f"with no task vector from the others. Tokenizer: {v['tokenizer']}.", ""]
    if "source_by_layer" in stats:  # layer_swap: where each layer came from
        names = stats["models"]
        lines += ["## Layer sources", "", "| layer | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for layer, weights in stats["source_by_layer"].items():
            lines.append(f"| {layer} | " + " | ".join(f"{weights[n]:.3g}" for n in names) + " |")
        return "\n".join(lines) + "\n"
    lines += ["## Discarded entries", "", "| model | kept | discarded | fraction | reserved |",
              "|---|---|---|---|---|"]
    for name, t in zip(stats["models"], stats["totals"], strict=False):
        lines.append(f"| {name} | {t['kept']} | {t['discarded']} | "
                     f"{t['discarded_fraction']:.4f} | {t['reserved']} |")
    return "\n".join(lines) + "\n"


def run_merge(
    config: str | os.PathLike | dict | MergeConfig,
    out_dir: str | os.PathLike,
    stats_path: str | os.PathLike | None = None,
    threads: int | None = None,
    force: bool = False,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> dict:
    """Merge the models of `config` into the Hugging Face folder `out_dir`; return the stats dict."""
    cfg = config if isinstance(config, MergeConfig) else load_merge_config(config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise MergeError(f"{out_dir} already exists; pass --force to replace it")
    from .methods import plan_tensors

    inputs = open_inputs(cfg)
    reader = ThreadPoolExecutor(1)
    try:
        ref = inputs.reference
        order = sorted(ref.tensors, key=lambda t: (str(ref.tensors[t].file), ref.tensors[t].offset))
        plans = plan_tensors(cfg, order, ref.config())  # refuses bad names before any read
        stream = _Stream(inputs, order, reader)
        partial = out_dir.parent / f".{out_dir.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)  # left by an interrupted run of this same merge
        partial.mkdir(parents=True)
        try:
            per_tensor, facts = _merge_tensors(cfg, stream, plans, partial, threads, shard_size,
                                               progress)
            stats = _finish(cfg, inputs, stream.hashers, per_tensor, facts, partial, out_dir,
                            stats_path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return stats
    finally:
        reader.shutdown(cancel_futures=True)
        for ckpt in inputs.all:
            ckpt.close()


class _Stream:
    """The input tensors in file order, each read (and hashed) while the previous one is merged,
    into two buffer sets used in turn."""

    def __init__(self, inputs: Inputs, order: list[str], reader: ThreadPoolExecutor):
        self.inputs, self.order, self.reader = inputs, order, reader
        self.hashers = {c.name: xxhash.xxh3_128() for c in inputs.all}
        ref = inputs.reference
        largest_in = max((ref.tensors[t].nbytes for t in order), default=0)
        self.buffers = [np.empty(len(inputs.all) * largest_in, np.uint8) for _ in range(2)]
        # the first read overlaps the kernels' start-up (numba's import and cache load)
        self.pending = self._submit(0) if order else None

    def _submit(self, t: int):
        return self.reader.submit(_read_tensor, self.inputs, self.order[t], self.hashers,
                                  self.buffers[t % 2])

    def __iter__(self):
        for t, name in enumerate(self.order):
            base, xs = self.pending.result()
            if t + 1 < len(self.order):
                self.pending = self._submit(t + 1)
            yield t, name, base, xs


def _merge_tensors(cfg: MergeConfig, stream: _Stream, plans, partial: Path, threads: int | None,
                   shard_size, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Merge every tensor into shards under `partial`; return per-tensor counts and facts."""
    # Threads that spin between the kernels' many short parallel regions steal the cores the
    # other threads need on a shared machine; sleeping costs microseconds per region.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba

    from . import kernels
    from .methods import REGISTRY, Scratch, TensorTask

    numba.set_num_threads(max(1, min(threads or os.cpu_count() or 1,
                                      numba.config.NUMBA_NUM_THREADS)))
    kernels.warm_up()
    inputs, order = stream.inputs, stream.order
    ref = inputs.reference
    out_dtypes = {name: DTYPE_NAMES[cfg.out_dtype] if cfg.out_dtype else ref.tensors[name].dtype
                  for name in order}
    trims = _model_scope_trim(inputs, order) if cfg.trim_scope == "model" and cfg.spec.trims \
        else None
    method = REGISTRY[cfg.method]
    per_tensor: dict[str, np.ndarray] = {}
    facts: dict[str, dict] = {}
    bar = Progress(len(order), sum(ref.tensors[t].nbytes * len(inputs.all) for t in order),
                   enabled=progress)
    writer = ShardedWriter(
        partial, [OutputTensor(t, out_dtypes[t], inputs.out_shape(t)) for t in order],
        parse_size(shard_size), {"lrmerge_method": cfg.method},
    )
    # OUT_BUFFERS output buffers reused in turn, so that writing out a large tensor (the
    # embeddings) does not hold up the merge of the next ones
    largest_out = max((ITEMSIZE[out_dtypes[t]] * int(np.prod(inputs.out_shape(t))) for t in order),
                      default=0)
    out_buffers = [np.empty(largest_out, np.uint8) for _ in range(OUT_BUFFERS)]
    scratch = Scratch()
    with ThreadPoolExecutor(1) as write_pool:
        writes = []
        for t, name, base, xs in stream:
            if t >= OUT_BUFFERS:
                writes[t - OUT_BUFFERS].result()  # its output buffer is about to be reused
            info = ref.tensors[name]
            out_storage, out_kind = DTYPES[out_dtypes[name]]
            numel = int(np.prod(inputs.out_shape(name)))
            out = out_buffers[t % OUT_BUFFERS][:np.dtype(out_storage).itemsize * numel]
            out = out.view(out_storage).reshape(1, numel)
            task = TensorTask(name, cfg, base, xs, DTYPES[info.dtype][1], out[:, :info.numel],
                              out_kind,
                              trims[name] if trims else None, scratch,
                              plans[name] if plans else None)
            per_tensor[name] = method(task)
            if numel > info.numel:  # the new tokens' rows, from the models that have them
                task.facts["new_rows"] = _new_rows(cfg, inputs, name, info, out[0, info.numel:],
                                                   out_kind, stream.hashers)
            if task.facts:
                facts[name] = task.facts
            writes.append(write_pool.submit(writer.write, name, out))
            bar.update(info.nbytes * len(inputs.all))
            del base, xs, task
        for w in writes:
            w.result()
    writer.close()
    return per_tensor, facts


def _new_rows(cfg: MergeConfig, inputs: Inputs, name: str, info, out: np.ndarray, out_kind: int,
              hashers: dict) -> dict[str, int]:
    """layer_swap takes them from the model its embeddings (or head) come from; every other method
    from the models that have each token, by their merge weights."""
    models = inputs.models
    if cfg.method == "layer_swap":
        source = cfg.embed_from if name == VOCAB_TENSORS[0] else cfg.head_from
        models = [c for c in models if c.name == source]
    weights = {m.name: m.weight for m in cfg.models}
    storage, kind = DTYPES[info.dtype]
    width = info.numel // info.shape[0]
    return fill_new_rows(inputs.vocab, name, models, weights, kind, storage, width, out, out_kind,
                         hashers)


def _finish(cfg: MergeConfig, inputs: Inputs, hashers: dict, per_tensor: dict, facts: dict,
            partial: Path, out_dir: Path, stats_path) -> dict:
    """Write the stats, tokenizer files and model card, then move the folder into place."""
    stats = summarize(cfg.method, cfg.names, per_tensor, facts)
    hashes = {name: h.hexdigest() for name, h in hashers.items()}
    stats["input_hashes"] = hashes
    stats["parameters"] = cfg.to_dict()
    _copy_aux(inputs.reference.folder, partial, cfg.out_dtype)
    if inputs.vocab is not None:
        stats["vocabulary"] = inputs.vocab.record()
        write_tokenizer(inputs.vocab, partial)
        model_config = fsutil.read_json(partial / "config.json")
        model_config["vocab_size"] = inputs.vocab.size
        fsutil.write_text(partial / "config.json", json.dumps(model_config, indent=2,
                                                             sort_keys=True) + "\n")
    fsutil.write_text(partial / "README.md", _model_card(cfg, hashes, inputs, stats))
    fsutil.write_json(partial / "lrmerge_merge.json", {"parameters": cfg.to_dict(), "inputs": hashes})
    inside = None
    if stats_path is not None:
        stats_path = Path(stats_path)
        try:
            inside = stats_path.resolve().relative_to(out_dir.resolve())
        except ValueError:
            inside = None
        if inside is not None:
            fsutil.write_json(partial / inside, stats)
    fsutil.replace_dir(partial, out_dir)  # with --force, the old folder goes only now
    if stats_path is not None and inside is None:
        fsutil.write_json(stats_path, stats)
    return stats
