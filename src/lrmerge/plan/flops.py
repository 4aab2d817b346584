"""What one trained token and one model cost: parameters and FLOPs of a Llama of given sizes,
its vocabulary grown by K rows, as the train stage counts them. The cost model (`cost`) and the
same-characters figures (`vocab`) both build on these."""

from __future__ import annotations

from lrmerge.config import extends_vocabulary, language_entry


def extension_rows(cfg: dict, lang: str) -> int:
    """The K new tokens of a language's extended tokenizer (0: the base model's)."""
    return language_entry(cfg, lang)["tokenizer"]["extend"] if extends_vocabulary(cfg, lang) else 0


def _params(sizes: dict, rows: int = 0) -> tuple[int, int]:
    """(matmul parameters, all parameters) of a Llama of these sizes, its vocabulary grown by
    `rows` tokens: the output layer's K rows are matmul parameters (tied or not), the input
    embedding's a lookup, a matrix of its own unless tied."""
    from lrmerge.train.model import llama_matmul_params

    if rows:
        sizes = {**sizes, "vocab_size": sizes["vocab_size"] + rows}
    mm = llama_matmul_params(sizes)
    tied = sizes.get("tie_word_embeddings", False)
    emb = sizes["vocab_size"] * sizes["hidden_size"]
    return mm, mm + (0 if tied else emb)


def train_flops(sizes: dict, seq_len: int, rows: int = 0) -> float:
    """FLOPs of one trained token, as the train stage counts them (lrmerge.train.model)."""
    from lrmerge.train.model import attention_flops

    return 6.0 * _params(sizes, rows)[0] + attention_flops(sizes["num_hidden_layers"],
                                                           sizes["hidden_size"], seq_len)


def _duration(hours: float) -> str:
    if hours >= 1:
        return f"{hours:,.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.1f} s"
