"""`lrmerge train ...`: pre-training (mini), CT and SFT jobs. Multi-process jobs run under
torchrun (`torchrun --nproc_per_node=N -m lrmerge.train ct ...`)."""

from __future__ import annotations

import argparse
import sys

from lrmerge import fsutil


def _load_cfg(path, rule: str, lang: str | None = None):
    """The config as the rule's command reads it (lrmerge.config.rule_keys)."""
    from lrmerge.config import load_rule_config

    return load_rule_config(path, rule, lang)


def _run(fn):
    """Input errors exit 2 (cli_errors); a preempted job exits PREEMPTED_EXIT after saving."""
    from lrmerge.train.loop import PREEMPTED_EXIT, Preempted

    def run(args) -> int:
        try:
            return fsutil.cli_errors("train")(fn)(args)
        except Preempted as e:
            print(f"lrmerge train: preempted: {e}", file=sys.stderr, flush=True)
            return PREEMPTED_EXIT

    return run


def cmd_pretrain(args) -> int:
    from lrmerge.data.tokenize import load_tokenizer
    from lrmerge.train.loop import train
    from lrmerge.train.model import build_model

    cfg = _load_cfg(args.config, "pretrain_base")
    tok = load_tokenizer(args.tokenizer)
    model = build_model(cfg, tok, cfg["seed"], cfg["pretrain"]["attention"])
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters, tokenizer "
          f"{len(tok)} tokens")
    train(stage="pretrain", cfg=cfg, out=args.out, data=args.data, model=model, tokenizer=tok,
          threads=args.threads)
    return 0


def cmd_ct(args) -> int:
    from lrmerge.train.loop import train

    train(stage="ct", cfg=_load_cfg(args.config, "continual_pretrain", args.lang), out=args.out, data=args.data,
          english=args.english, init=args.init, tokens=args.tokens, lang=args.lang,
          tokenizer_dir=args.tokenizer, threads=args.threads)
    return 0


def cmd_sft(args) -> int:
    from lrmerge.train.loop import train

    train(stage="sft", cfg=_load_cfg(args.config, "finetune_sft"), out=args.out, data=args.data, init=args.init,
          threads=args.threads)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="pre-train, continually pre-train or fine-tune")
    sub = p.add_subparsers(dest="train_command", required=True)

    def common(q):
        q.add_argument("--config", required=True)
        q.add_argument("--out", required=True, help="output model folder")
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    a = sub.add_parser("pretrain", help="mini: a tiny Llama on the English token shards")
    common(a)
    a.add_argument("--tokenizer", required=True, help="the tokenizer folder (lrmerge data "
                   "tokenizer)")
    a.add_argument("--data", required=True, help="English token folder")
    a.set_defaults(func=_run(cmd_pretrain))
    b = sub.add_parser("ct", help="continual pre-training up to a cumulative token budget")
    common(b)
    b.add_argument("--lang", required=True)
    b.add_argument("--tokens", type=int, required=True, help="cumulative token budget")
    b.add_argument("--init", required=True, help="base model, or the previous budget's folder")
    b.add_argument("--data", required=True, help="the language's token folder")
    b.add_argument("--english", default=None, help="English token folder (english_ratio)")
    b.add_argument("--tokenizer", default=None, help="an extended tokenizer folder (lrmerge data "
                   "extend-tokenizer): the model's vocabulary grows to it (default: --init's)")
    b.set_defaults(func=_run(cmd_ct))
    c = sub.add_parser("sft", help="supervised fine-tuning on the SFT token folder")
    common(c)
    c.add_argument("--init", required=True)
    c.add_argument("--data", required=True, help="SFT token folder")
    c.set_defaults(func=_run(cmd_sft))
    return p
