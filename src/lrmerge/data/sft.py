"""The English instruction data ("SFT-flan"): the mini FLAN, generated, or a real FLAN
collection from local jsonl files or the hub. Rows are {"prompt", "response"}; the data stage
tokenizes them once (`prepare_sft`)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import numpy as np

from lrmerge.data import budget, synthetic
from lrmerge.data.shards import DataShortError, ShardWriter
from lrmerge.data.sources import SourceError, jsonl_rows, load_hf
from lrmerge.data.tokenize import (
    _encode_sft,
    document_marks,
    encoded_batches,
    load_tokenizer,
    tokenizer_identity,
)


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


def sft_rows(cfg: dict) -> Iterator[dict]:
    """Rows {"prompt", "response"} of `sft.data`, in order; empty responses are skipped."""
    spec = cfg["sft"]["data"]
    kind = spec["kind"]
    if kind == "generated":
        yield from generated_rows(cfg)
        return
    pf, rf = spec["prompt_field"], spec["response_field"]
    if kind == "jsonl":
        if not spec.get("path"):
            raise ValueError("config key sft.data.path is required for kind: jsonl")
        paths = [spec["path"]] if isinstance(spec["path"], str) else spec["path"]
        rows = jsonl_rows(paths, "sft.data", (pf, rf), "sft.data.prompt_field/response_field")
    elif kind == "hf":
        rows = load_hf(spec, "sft.data")
    else:
        raise ValueError(f"sft.data.kind: {kind!r} is not one of generated, jsonl, hf")
    limit = spec.get("max_examples")
    n = 0
    for i, row in enumerate(rows):
        if limit is not None and n >= int(limit):
            break
        if pf not in row or rf not in row:
            raise SourceError(f"sft.data: row {i} lacks {pf!r} or {rf!r} (fields: "
                              f"{', '.join(row)}); set sft.data.prompt_field/response_field")
        if str(row[rf]).strip():
            n += 1
            yield {"prompt": str(row[pf]), "response": str(row[rf])}
    if n == 0:
        raise SourceError("sft.data: the source gave no examples")


# --------------------------------------------------------------------------------------------
# SFT data: examples tokenized with their prompt length (the loss mask), packed at train time
# --------------------------------------------------------------------------------------------
def prepare_sft(cfg: dict, tokenizer: str, out: str | os.PathLike, workers: int = 1,
                log=print) -> dict:
    t0 = time.time()
    sft = cfg["sft"]
    tok = load_tokenizer(tokenizer)
    marks = document_marks(tok, cfg["data"])
    pairs = ((r["prompt"], sft["join"] + r["response"]) for r in sft_rows(cfg))
    writer = ShardWriter(out, len(tok), cfg["data"]["shard_tokens"], with_prompts=True)
    lengths_all = []
    try:
        batches = encoded_batches(tok, marks, pairs, workers, _encode_sft)
        for flat, lengths, prompts, text, _ in batches:
            writer.add(flat, lengths, prompts, text)
            lengths_all.append(lengths)
        if writer.documents == 0:
            raise ValueError("sft.data: the source gave no examples")
        lengths = np.concatenate(lengths_all)
        sequences = len(budget.pack(lengths, sft["seq_len"])) - 1
        need = sft["steps"] * sft["batch_size"]
        allow = sft["data"]["allow_repeat"]
        if sequences < need and not allow:
            raise DataShortError(
                f"sft.data: {writer.documents} examples pack into {sequences} sequences of "
                f"{sft['seq_len']} tokens, but sft.steps x sft.batch_size needs {need}; add "
                "examples, or set sft.data.allow_repeat: true to run several epochs")
        manifest = writer.finish({
            "kind": "sft", "tokenizer": tokenizer_identity(tok), **marks.manifest,
            "source": sft["data"],
            "join": sft["join"], "seq_len": sft["seq_len"], "sequences": sequences,
            "need_sequences": need, "allow_repeat": allow,
            "passes_needed": round(max(1.0, need / sequences), 4),
            "longer_than_seq_len": budget.longer_than(lengths, sft["seq_len"]),
            "seconds": round(time.time() - t0, 2), "workers": workers})
    except BaseException:
        writer.abort()
        raise
    log(f"sft: {manifest['documents']} examples, {manifest['tokens']} tokens, {sequences} packed "
        f"sequences (need {need}; {manifest['longer_than_seq_len']} examples cut to seq_len; "
        f"{marks.describe()})")
    return manifest


