"""`lrmerge plan`: the sweep's cost per rule, from the config alone or calibrated by a pilot run."""

from __future__ import annotations

import argparse
import json

from lrmerge import fsutil

from .cost import format_table, plan
from .pilot import calibrated_plan, format_calibrated


@fsutil.cli_errors("plan")
def cmd_plan(args) -> int:
    from lrmerge.config import load_config

    if (args.calibrate is None) != (args.pilot_config is None):
        raise ValueError("--calibrate DIR and --pilot-config F go together: the pilot's "
                         "results/{run} and the config it ran with")
    cfg = load_config(args.config)
    if args.calibrate is None:
        doc = plan(cfg, results=args.results)
        print(json.dumps(doc, indent=2) if args.format == "json" else format_table(doc))
    else:
        doc = calibrated_plan(cfg, args.calibrate, args.pilot_config, results=args.results)
        print(json.dumps(doc, indent=2) if args.format == "json" else format_calibrated(doc))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="the sweep's GPU-hours, wall time and disk per rule",
                              description="the sweep's GPU-hours, wall time and disk per rule")
    p.add_argument("--config", default="config/config.yaml", help="workflow config file")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--calibrate", metavar="DIR",
                   help="a pilot run's results/{run}: replace the assumptions with its measured "
                        "MFU, evaluation, merge and tokenizing rates, and print both plans")
    p.add_argument("--pilot-config", metavar="F",
                   help="the config file the pilot ran with (with --calibrate)")
    p.add_argument("--results", metavar="DIR",
                   help="the sweep's results/{run} where extended vocabularies' characters per "
                        "token were measured (token manifests, vocab_extension.json); default "
                        "results/{run_name} here")
    p.set_defaults(func=cmd_plan)
    return p
