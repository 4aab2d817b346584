"""Tiny configs for the data/train/evaluate stage tests: the mini preset shrunk to seconds."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> dict:
    """config/mini.yaml with a 2-layer, 32-wide model, short runs and small data sets."""
    from lrmerge.config import validate_config

    with open(ROOT / "config" / "mini.yaml", encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    cfg["languages"]["bn"]["budgets"] = [3000, 5000, 9000]
    cfg["languages"]["bo"]["budgets"] = [3000, 5000, 9000]
    cfg["languages"]["bo-v90"].update(budgets=[3000, 9000])
    cfg["languages"]["bo-v90"]["tokenizer"]["sample_chars"] = 50000
    cfg["mini"].update(tokenizer_docs=300, sft_examples=80, eval_examples=12, fewshot_examples=4,
                       tokenizer_vocab=400,
                       model={"hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 2})
    small = {"batch_size": 4, "micro_batch_size": 2, "seq_len": 32, "checkpoint_every": 0,
             "log_every": 1}
    cfg["pretrain"].update(small, steps=6, warmup_steps=2)
    cfg["continual_pretrain"].update(small, warmup_steps=2)
    cfg["sft"].update(small, steps=4, warmup_steps=1)
    cfg["evaluate"].update(batch_size=8)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return validate_config(copy.deepcopy(cfg), "tiny test config")


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def quiet(*args, **kwargs):
    pass


def prepare_data(cfg: dict, root: Path, langs=("en", "bn"), sft: bool = True) -> dict:
    """The mini tokenizer and token folders of `langs` (and the SFT data) under root."""
    from lrmerge.data import sft, tokenize

    paths = {"tokenizer": root / "tokenizer", "root": root}
    tokenize.train_tokenizer(cfg, paths["tokenizer"], log=quiet)
    for lang in langs:
        paths[lang] = root / "tokens" / lang
        tokenize.prepare_corpus(cfg, lang, str(paths["tokenizer"]), paths[lang], log=quiet)
    if sft:
        paths["sft"] = root / "tokens" / "sft"
        sft.prepare_sft(cfg, str(paths["tokenizer"]), paths["sft"], log=quiet)
    return paths


def pretrain_base(cfg: dict, paths: dict, out: Path, threads: int = 1) -> dict:
    """The mini base: a tiny Llama pre-trained on the English token folder."""
    from lrmerge.data.tokenize import load_tokenizer
    from lrmerge.train.loop import train
    from lrmerge.train.model import build_model

    tok = load_tokenizer(str(paths["tokenizer"]))
    model = build_model(cfg, tok, cfg["seed"], cfg["pretrain"]["attention"])
    return train(stage="pretrain", cfg=cfg, out=str(out), data=str(paths["en"]), model=model,
                 tokenizer=tok, threads=threads, log=quiet)
