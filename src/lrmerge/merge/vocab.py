"""Merges of models whose vocabularies differ (a vocabulary-extended CT model with the chat model),
aligned by token text.

The rows every input has (the shared vocabulary: the same token at the same id in every input, a
prefix of each one's rows, as a vocabulary extension leaves it) are merged exactly as if the models
had only those rows: the engine sees each checkpoint's embedding and LM head cut to them. A row only
some inputs have (a new token) gets no task vector from the inputs without it, so its value is the
weighted mean of the rows of the models that have it (their merge weights, renormalised): with one
such model (the CT model), its row as it is, for every method. layer_swap takes the embeddings and
the head whole from the models it names, which must carry every token. The output vocabulary is the
shared rows, then the new tokens in the order the models list them (a union: two CT models
extended differently give the new tokens of both), with the tokenizer of the input that has exactly
that vocabulary, or else a union tokenizer.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .errors import MergeError

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
VOCAB_TENSORS = (EMBED, HEAD)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "vocab_extension.json", "chat_template.jinja", "chat_template.json")


@dataclass
class VocabPlan:
    shared: int  # rows every input has, the same tokens at the same ids
    tokens: list[str]  # the new tokens, output ids shared, shared + 1, ...
    rows: dict[str, dict[int, int]]  # model name -> {output id: its own row}, for new tokens
    source: Checkpoint | None  # the input whose tokenizer is the output's, if one is
    union: dict | None = None  # else the union tokenizer.json ...
    union_from: Checkpoint | None = None  # ... built on this model's (its other files copied)
    full: dict[str, dict] = field(default_factory=dict)  # model -> its uncut vocab tensor infos

    @property
    def size(self) -> int:
        return self.shared + len(self.tokens)

    def record(self) -> dict:
        """What the stats and model card say about the vocabulary."""
        return {"shared_rows": self.shared, "new_rows": len(self.tokens), "size": self.size,
                "tokenizer": self.source.name if self.source else "union",
                "new_rows_from": {m: len(r) for m, r in self.rows.items()}}


def _token_list(ckpt: Checkpoint, rows: int) -> list[str | None]:
    """The tokenizer's token at each id (None for rows it does not name, e.g. padding)."""
    path = ckpt.folder / "tokenizer.json"
    if not path.is_file():
        raise MergeError(f"model '{ckpt.name}': {ckpt.folder} has no tokenizer.json; a merge "
                         "across vocabularies aligns embedding rows by token text")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = dict(data["model"]["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise MergeError(f"{path}: no readable model.vocab ({type(e).__name__}: {e})") from None
    vocab |= {t["content"]: t["id"] for t in data.get("added_tokens") or []}
    tokens: list[str | None] = [None] * rows
    for token, i in vocab.items():
        if i >= rows:
            raise MergeError(f"{path}: token {token!r} has id {i}, but model '{ckpt.name}' has "
                             f"{rows} embedding rows")
        tokens[i] = token
    return tokens


def plan_vocab(config, base: Checkpoint | None, models: list[Checkpoint]) -> VocabPlan | None:
    """None when every input has as many embedding rows; else the alignment, after checking that
    the inputs share a prefix of tokens and that the method can take it."""
    inputs = ([base] if base else []) + models
    if not all(EMBED in c.tensors for c in inputs):
        return None
    rows = {c.name: c.tensors[EMBED].shape[0] for c in inputs}
    if len(set(rows.values())) == 1:
        return None
    shared = min(rows.values())
    tokens = {c.name: _token_list(c, rows[c.name]) for c in inputs}
    ref = next(c for c in inputs if rows[c.name] == shared)
    for c in inputs:
        for i, (mine, theirs) in enumerate(zip(tokens[c.name][:shared], tokens[ref.name],
                                               strict=True)):
            if mine != theirs:
                raise MergeError(f"model '{c.name}': token {i} is {mine!r} there but {theirs!r} in "
                                 f"'{ref.name}'; the rows all inputs have must be the same tokens")
    known = {t: i for i, t in enumerate(tokens[ref.name]) if t is not None}
    new: list[str] = []
    where: dict[str, dict[int, int]] = {}
    for c in models:
        for row in range(shared, rows[c.name]):
            token = tokens[c.name][row]
            if token is None:
                raise MergeError(f"model '{c.name}': embedding row {row} has no token in its "
                                 f"tokenizer.json ({rows[c.name]} rows, {shared} shared); a merge "
                                 "across vocabularies needs every new row to name its token")
            if token in known and known[token] < shared:
                raise MergeError(f"model '{c.name}': token {token!r} is its row {row} but row "
                                 f"{known[token]} of the shared vocabulary")
            if token not in known:
                known[token] = shared + len(new)
                new.append(token)
            where.setdefault(c.name, {})[known[token]] = row
    plan = VocabPlan(shared, new, where, None)
    plan.source = next((c for c in models if tokens[c.name][shared:] == new), None)
    if plan.source is None:
        plan.union_from = next(c for c in models if rows[c.name] > shared)
        plan.union = _union_tokenizer(models, tokens, shared, new)
    if config.method == "layer_swap":
        _check_layer_swap(config, plan, rows, models)
    return plan


def _check_layer_swap(config, plan: VocabPlan, rows: dict[str, int], models) -> None:
    for key in ("embed_from", "head_from"):
        name = getattr(config, key)
        if rows[name] != plan.size or plan.source is None or plan.source.name != name:
            raise MergeError(f"layer_swap: {key} '{name}' has {rows[name]} embedding rows but the "
                             f"merged vocabulary has {plan.size}; take the embeddings and the head "
                             "from the model whose tokenizer has every token")


def _union_tokenizer(models: list[Checkpoint], tokens: dict, shared: int, new: list[str]) -> dict:
    """The tokenizer.json of the first model with new tokens, with every other model's new tokens
    added at their output ids (and, for BPE, the merges that build them)."""
    first = next(c for c in models if len(tokens[c.name]) > shared)
    data = json.loads((first.folder / "tokenizer.json").read_text(encoding="utf-8"))
    kind = data["model"].get("type")
    if kind not in ("BPE", "WordLevel"):
        raise MergeError(f"model '{first.name}': a union of extended tokenizers is built for BPE "
                         f"and WordLevel tokenizer.json only, not {kind}")
    vocab = data["model"]["vocab"]
    merges = data["model"].get("merges")
    seen = {tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges or []}
    for c in models:
        if c is first or len(tokens[c.name]) <= shared:
            continue
        other = json.loads((c.folder / "tokenizer.json").read_text(encoding="utf-8"))
        if other["model"].get("type") != kind:
            raise MergeError(f"model '{c.name}': its tokenizer is {other['model'].get('type')}, "
                             f"'{first.name}''s is {kind}; they cannot be joined")
        high = [t["content"] for t in other.get("added_tokens") or [] if t["id"] >= shared]
        if high:
            raise MergeError(f"model '{c.name}': added token {high[0]!r} lies beyond the shared "
                             "rows; a union keeps added tokens in the shared vocabulary only")
        for m in other["model"].get("merges") or []:
            pair = tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))
            if pair not in seen:
                seen.add(pair)
                merges.append(m)
    for i, token in enumerate(new):
        vocab.setdefault(token, shared + i)
    return data


def cut_to_shared(plan: VocabPlan, inputs: list[Checkpoint]) -> None:
    """Let the engine see each input's embedding and head as their shared rows (the uncut infos
    are kept for reading the new rows)."""
    for c in inputs:
        for name in VOCAB_TENSORS:
            info = c.tensors.get(name)
            if info is None or info.shape[0] == plan.shared:
                continue
            plan.full.setdefault(c.name, {})[name] = info
            width = int(np.prod(info.shape[1:], dtype=np.int64))
            itemsize = info.nbytes // (info.shape[0] * width)
            c.tensors[name] = replace(info, shape=(plan.shared, *info.shape[1:]),
                                      nbytes=plan.shared * width * itemsize)


def fill_new_rows(plan: VocabPlan, name: str, models: list[Checkpoint], weights: dict[str, float],
                  kind: int, storage, width: int, out: np.ndarray, out_kind: int,
                  hashers: dict) -> dict[str, int]:
    """Write the new tokens' rows of tensor `name` into `out` (those rows, flat): each the mean of
    the rows of the models that have the token, by their merge weights renormalised (one model:
    its row as it is). Reads (and hashes) only the new rows. Returns rows taken per model."""
    from . import kernels as K

    tails = {}
    for c in models:
        if plan.rows.get(c.name):
            info = plan.full[c.name][name]
            tail = np.empty((info.shape[0] - plan.shared) * width, storage)
            c.read_range(info, info.nbytes - tail.nbytes, tail)
            hashers[c.name].update(f"{name}|new rows".encode())
            hashers[c.name].update(memoryview(tail.view(np.uint8)))
            tails[c.name] = tail
    groups: dict[tuple[str, ...], list[int]] = {}
    for j in range(len(plan.tokens)):
        owners = tuple(c.name for c in models if plan.shared + j in plan.rows.get(c.name, {}))
        groups.setdefault(owners, []).append(j)
    for owners, tokens in groups.items():
        xs = np.empty((len(owners), len(tokens) * width), storage)
        for i, owner in enumerate(owners):
            own, tail = plan.rows[owner], tails[owner]
            for t, j in enumerate(tokens):
                r = own[plan.shared + j] - plan.shared
                xs[i, t * width:(t + 1) * width] = tail[r * width:(r + 1) * width]
        w = np.array([1.0] if len(owners) == 1 else [weights[o] for o in owners], np.float32)
        mixed = np.empty((1, len(tokens) * width), out.dtype)
        bad = int(K.linear(xs, kind, w, True, mixed, out_kind))
        if bad >= 0:
            token = plan.tokens[tokens[bad // width]]
            raise MergeError(f"tensor {name}: the row of new token {token!r} is not finite "
                             f"(models: {', '.join(owners)})")
        for t, j in enumerate(tokens):
            out[j * width:(j + 1) * width] = mixed[0, t * width:(t + 1) * width]
    return {c.name: len(plan.rows.get(c.name, {})) for c in models}


def write_tokenizer(plan: VocabPlan, folder: Path) -> None:
    """The output's tokenizer files: the source input's, or the union tokenizer.json."""
    src = plan.source or plan.union_from
    for fname in TOKENIZER_FILES:
        if (src.folder / fname).is_file() and (plan.source or fname not in
                                                ("tokenizer.json", "vocab_extension.json")):
            (folder / fname).write_bytes((src.folder / fname).read_bytes())
    if plan.source is None:
        (folder / "tokenizer.json").write_text(json.dumps(plan.union, ensure_ascii=False),
                                               encoding="utf-8")
