"""`lrmerge evaluate` (run a model on its tasks) and `lrmerge tasks` (list or write tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lrmerge import fsutil

DEFAULT_CONFIG = "config/config.yaml"


@fsutil.cli_errors("evaluate")
def cmd_evaluate(args) -> int:
    from lrmerge.config import load_rule_config
    from lrmerge.evaluate.run import evaluate

    cfg = load_rule_config(args.config, "evaluate", "+".join(args.lang))
    doc = evaluate(cfg, args.model, args.lang, args.tasks_dir, args.out, args.threads)
    for task, m in doc["tasks"].items():
        se = f" ± {m['stderr']:.4f}" if m["stderr"] is not None else ""
        print(f"{task}\t{m['family']}\t{m['metric']}\t{m['score']:.4f}{se}")
    return 0


@fsutil.cli_errors("tasks")
def cmd_tasks(args) -> int:
    from lrmerge.config import load_config, rule_config
    from lrmerge.evaluate import tasks

    cfg = load_config(args.config)
    if args.write:
        for lang in args.lang or []:
            manifest = tasks.build(rule_config(cfg, "build_tasks", lang), lang,
                                   Path(args.write) / lang)
            for task, meta in manifest["tasks"].items():
                print(f"{lang}\t{task}\t{meta['family']}\t{meta['n_items'] or '-'} items\t"
                      f"{', '.join(meta['lm_eval_tasks'].values())}")
        return 0
    rows = tasks.table(cfg, count=args.count)
    header = ("LANG", "FAMILY", "TASK", "SOURCE", "N_ITEMS", "N_SHOT", "METRIC")
    for row in [header] + rows:
        print("\t".join(str(c) if c is not None else "-" for c in row))
    if not args.count and any(str(r[4]).endswith("*") for r in rows if len(r) > 4):
        print("# *: the release's published test size; --count reads the data")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a model with lm-eval on its tasks",
        description="Runs every item of the task folders' test files: a smaller run is a task "
        "folder built with evaluate.limit (a seeded sample, recorded), never a cut here.")
    p.add_argument("--config", required=True)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--lang", action="append", required=True,
                   help="language whose tasks to run (repeat; en = English tasks)")
    p.add_argument("--tasks-dir", required=True,
                   help="folder with one task folder per language (lrmerge tasks --write)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_evaluate)
    return p


def add_tasks_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tasks", help="list the evaluation tasks per language and family, or write them",
        description="Without --write: one row per language x family (LANG FAMILY TASK SOURCE "
        "N_ITEMS N_SHOT METRIC, or LANG FAMILY - REASON). With --write DIR --lang L: write "
        "the lm-eval task folder DIR/L.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="workflow config file")
    p.add_argument("--count", action="store_true",
                   help="read every source to count its test items (else published sizes)")
    p.add_argument("--write", metavar="DIR", default=None,
                   help="write the task folders of --lang under DIR")
    p.add_argument("--lang", action="append", help="language to write (repeat; en = English)")
    p.set_defaults(func=cmd_tasks)
    return p
