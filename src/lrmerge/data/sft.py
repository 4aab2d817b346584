"""The English instruction data ("SFT-flan"): the mini FLAN, generated, or a real FLAN
collection from local jsonl files or the hub. Rows are {"prompt", "response"}; the data stage
tokenizes them once (`lrmerge.data.tokenize.prepare_sft`)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from lrmerge.data import synthetic
from lrmerge.data.sources import SourceError, jsonl_rows, load_hf


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
