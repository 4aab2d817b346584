"""`lrmerge data ...`: the data stage's commands (thin over the modules of this package)."""

from __future__ import annotations

import argparse

from lrmerge import fsutil


def _load(path: str, rule: str, lang: str | None = None) -> dict:
    """The config as the rule's command reads it (lrmerge.config.rule_keys)."""
    from lrmerge.config import load_rule_config

    return load_rule_config(path, rule, lang)


@fsutil.cli_errors("data")
def cmd_tokenizer(args) -> int:
    from lrmerge.data.tokenize import train_tokenizer

    train_tokenizer(_load(args.config, "train_tokenizer"), args.out)
    return 0


@fsutil.cli_errors("data")
def cmd_extend_tokenizer(args) -> int:
    from lrmerge.data.vocab import extend_language

    extend_language(_load(args.config, "extend_tokenizer", args.lang), args.lang, args.base,
                    args.out)
    return 0


@fsutil.cli_errors("data")
def cmd_corpus(args) -> int:
    from lrmerge.data.tokenize import prepare_corpus

    prepare_corpus(_load(args.config, "prepare_corpus", args.lang), args.lang, args.tokenizer, args.out, args.threads)
    return 0


@fsutil.cli_errors("data")
def cmd_sft(args) -> int:
    from lrmerge.data.sft import prepare_sft

    prepare_sft(_load(args.config, "prepare_sft_data"), args.tokenizer, args.out, args.threads)
    return 0


@fsutil.cli_errors("data")
def cmd_verify(args) -> int:
    from lrmerge.data.shards import TokenShards

    shards = TokenShards(args.folder)
    shards.verify()
    print(f"{args.folder}: {shards.tokens} tokens in {len(shards.manifest['shards'])} shards, "
          "hashes match the manifest")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="tokenizer, token shards and SFT data")
    sub = p.add_subparsers(dest="data_command", required=True)
    t = sub.add_parser("tokenizer", help="mini: a byte-level BPE on the generated English")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="tokenizer folder")
    t.set_defaults(func=cmd_tokenizer)
    e = sub.add_parser("extend-tokenizer", help="a language's tokenizer extended by the K new "
                       "tokens its corpus uses most (languages.LANG.tokenizer.extend)")
    e.add_argument("--config", required=True)
    e.add_argument("--lang", required=True, help="language code (a key of languages)")
    e.add_argument("--base", required=True, help="the base model's tokenizer folder")
    e.add_argument("--out", required=True, help="the extended tokenizer folder")
    e.set_defaults(func=cmd_extend_tokenizer)
    c = sub.add_parser("corpus", help="a language's corpus (en: English) as token shards")
    c.add_argument("--config", required=True)
    c.add_argument("--lang", required=True, help="language code; en = the English corpus")
    c.add_argument("--tokenizer", required=True, help="the training model's tokenizer (folder "
                   "or hub id)")
    c.add_argument("--out", required=True, help="token folder (manifest.json written last)")
    c.add_argument("--threads", type=int, default=1, help="tokenizer worker processes")
    c.set_defaults(func=cmd_corpus)
    s = sub.add_parser("sft", help="the English instruction data as token shards")
    s.add_argument("--config", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_sft)
    v = sub.add_parser("verify", help="recompute a token folder's shard hashes")
    v.add_argument("folder")
    v.set_defaults(func=cmd_verify)
    return p
