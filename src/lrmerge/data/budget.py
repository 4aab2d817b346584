"""How many tokens each training job reads: the one place where the data stage (which sizes the
corpora) and the train stage (which streams them) agree on the block layout.

A CT run of budget B reads ceil(B / seq_len) blocks of seq_len tokens; English takes the blocks
where floor(i * r) steps up (`mix_counts`), so every prefix of the run holds the exact ratio. A
budget counts CT tokens, target and English together. SFT
examples are packed whole, in order, into sequences of seq_len (`pack`)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def ratio(english_ratio: float) -> Fraction:
    """The English share as the exact fraction the stream uses."""
    return Fraction(english_ratio).limit_denominator(1000)


def mix_counts(n_blocks: int, english_ratio: float) -> tuple[int, int]:
    """(target, English) blocks among the first n_blocks of a CT run."""
    e = math.floor(n_blocks * ratio(english_ratio))
    return n_blocks - e, e


def blocks_for(tokens: int, seq_len: int) -> int:
    return -(-int(tokens) // int(seq_len))


def segments(budgets: list[int], seq_len: int, english_ratio: float) -> tuple[list, list]:
    """(target, English) blocks that each CT budget of a chain has read by its end (the last
    block of a budget that is not a whole number of blocks counted: it is read partly). The
    train stream shuffles the blocks of each increment among themselves (`Blocks`)."""
    counts = [mix_counts(blocks_for(b, seq_len), english_ratio) for b in budgets]
    return [t for t, _ in counts], [e for _, e in counts]


def ct_reads(cfg: dict, lang: str) -> tuple[int, int]:
    """(target, English) tokens a language's largest budget reads (whole blocks)."""
    ct = cfg["continual_pretrain"]
    n = blocks_for(max(cfg["languages"][lang]["budgets"]), ct["seq_len"])
    t, e = mix_counts(n, ct["english_ratio"])
    return t * ct["seq_len"], e * ct["seq_len"]


def ct_need(cfg: dict, lang: str) -> int:
    """Target tokens a language's largest budget reads."""
    return ct_reads(cfg, lang)[0]


def english_need(cfg: dict) -> tuple[int, dict]:
    """English tokens: the most any language's CT replay reads, and for a built base (mini) the
    pre-training run, which reads the same English from the start. Returns (need, per reader)."""
    readers = {f"continual_pretrain.{lang}": ct_reads(cfg, lang)[1] for lang in cfg["languages"]}
    if cfg["base_model"] is None:
        pt = cfg["pretrain"]
        readers["pretrain"] = pt["steps"] * pt["batch_size"] * pt["seq_len"]
    return max(readers.values(), default=0), readers


def with_margin(need: int, margin: float) -> int:
    return math.ceil(need * margin)


def pack(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Greedy packing of whole examples, in order, into sequences of at most seq_len tokens.
    Returns the first example of each sequence plus a final sentinel (len(lengths)). An example
    longer than seq_len gets a sequence of its own and is cut (`longer_than`)."""
    starts = [0]
    fill = 0
    for i, n in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        if fill and fill + n > seq_len:
            starts.append(i)
            fill = 0
        fill += n
    starts.append(len(lengths))
    return np.asarray(starts, dtype=np.int64)


def longer_than(lengths: np.ndarray, seq_len: int) -> int:
    return int((np.asarray(lengths) > seq_len).sum())


def corpus_tokens_needed(cfg: dict, lang: str) -> tuple[int, dict]:
    """(tokens needed, per reader) of a language's corpus or, for "en", the English corpus."""
    if lang == "en":
        return english_need(cfg)
    need = ct_need(cfg, lang)
    return need, {f"continual_pretrain.{lang}": need}
