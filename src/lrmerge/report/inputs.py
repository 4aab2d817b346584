"""What went into each training run, from the token folders: `tables/data.csv`.

One row per (run, token folder, group): each CT budget's target text and English replay (a
corpus with subsets: a row per subset, e.g. RedPajama's; without: one row, `all`) and the
SFT-flan run's data (a row per FLAN task). `tokens_read` is what the run reads of that group
(a CT budget reads the folder's first blocks up to its end: `lrmerge.data.budget.segments`; SFT
the first steps x batch_size packed sequences), `share` its part of the run's tokens from that
folder, `target_share` the share the data stage aimed at (`subsets.weights`; SFT: the task's
share of the selected examples' tokens), `passes` how often the folder is read (over 1: repeated,
allow_repeat).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lrmerge.config import Layout
from lrmerge.data import budget
from lrmerge.data.shards import TokenShards

DATA_COLUMNS = ["run", "language", "tokens", "folder", "group_kind", "group", "tokens_read",
                "share", "target_share", "passes"]


def _group_rows(shards: TokenShards, stop: int, base: dict, targets: dict | None) -> list[dict]:
    """Rows of one run's read of one folder: its first `stop` tokens of the stream (a stop past
    the end: the folder read stop / tokens times, the groups in proportion)."""
    passes = stop / shards.tokens if shards.tokens else 0.0
    within = min(stop, shards.tokens)
    groups = shards.group_tokens(within)
    if groups is None:
        groups, kind = {"all": within}, None
    else:
        kind = shards.manifest["groups"]["kind"]
    if passes > 1:  # every pass reads the whole folder
        groups = {g: round(n * passes) for g, n in groups.items()}
    total = sum(groups.values()) or 1
    return [{**base, "group_kind": kind, "group": g, "tokens_read": int(n),
             "share": n / total,
             "target_share": (targets or {}).get(g, 1.0 if kind is None else None),
             "passes": round(passes, 4)}
            for g, n in groups.items()]


def _sft_stop(shards: TokenShards, sft: dict) -> int:
    """Tokens of the SFT data (its stream) the first steps x batch_size packed sequences hold
    (past the end: the folder's tokens x passes)."""
    ends = np.asarray(shards.doc_ends, dtype=np.int64)
    seqs = budget.pack(np.diff(ends, prepend=0), sft["seq_len"])
    need = int(sft["steps"]) * int(sft["batch_size"])
    n = len(seqs) - 1
    if need <= n:
        return int(ends[seqs[need] - 1])
    return round(shards.tokens * need / max(n, 1))


def data_rows(config: dict, results: Layout,
              on_missing: Callable[[str, str, Path, Exception], None]) -> list[dict]:
    """tables/data.csv (module docstring). `on_missing(kind, name, path, error)` is told of a
    token folder that cannot be read (strict: it raises; partial: it notes it)."""
    folders: dict[str, TokenShards | None] = {}

    def open_folder(corpus: str) -> TokenShards | None:
        if corpus not in folders:
            path = Path(results.tokens(corpus))
            try:
                folders[corpus] = TokenShards(path)
            except (OSError, ValueError) as exc:
                on_missing("token folder", corpus, path, exc)
                folders[corpus] = None
        return folders[corpus]

    def targets(shards: TokenShards) -> dict | None:
        return (shards.manifest.get("sampling") or {}).get("target_shares")

    ct, rows = config["continual_pretrain"], []
    L, ratio = int(ct["seq_len"]), float(ct["english_ratio"])
    for lang, entry in config["languages"].items():
        budgets = entry["budgets"]
        target_seg, english_seg = budget.segments(budgets, L, ratio)
        for corpus, seg in ((lang, target_seg), ("en", english_seg)):
            shards = open_folder(corpus) if any(seg) else None
            if shards is None:
                continue
            for tokens, blocks in zip(budgets, seg, strict=True):
                base = {"run": "ct", "language": lang, "tokens": tokens, "folder": corpus}
                rows += _group_rows(shards, blocks * L, base, targets(shards))
    sft_shards = open_folder("sft")
    if sft_shards is not None:
        sft = config["sft"]
        tasks = sft_shards.manifest.get("groups") or {}
        whole = tasks.get("tokens") or {}
        total = sum(whole.values()) or 1
        base = {"run": "sft", "language": "en", "tokens": None, "folder": "sft"}
        rows += _group_rows(sft_shards, _sft_stop(sft_shards, sft), base,
                            {g: n / total for g, n in whole.items()} if whole else None)
    return rows
