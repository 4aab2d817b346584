"""`lrmerge sources`: open every source the config names before any GPU job (see preflight)."""

from __future__ import annotations

import argparse

from lrmerge import fsutil

from .preflight import GROUPS, exit_status, format_checks, run_checks


@fsutil.cli_errors("sources")
def cmd_sources(args) -> int:
    from lrmerge.config import load_config

    checks = run_checks(load_config(args.config), rows=args.rows, only=args.only)
    print(format_checks(checks), flush=True)
    return exit_status(checks, require_online=args.require_online)


def add_parser(subparsers) -> argparse.ArgumentParser:
    about = ("open every corpus, the SFT data and every task's data the config names, read the "
             "first rows and check the configured fields; exit 1 if a source fails")
    p = subparsers.add_parser("sources", help=about, description=about)
    p.add_argument("--config", default="config/config.yaml", help="workflow config file")
    p.add_argument("--rows", type=int, default=5,
                   help="rows read from each corpus and the SFT data (hub ones streamed); "
                        "benchmarks are read whole, as the evaluate stage reads them")
    p.add_argument("--only", choices=GROUPS, help="check one group of sources")
    p.add_argument("--require-online", action="store_true",
                   help="a source that cannot be reached (offline, no network) fails too")
    p.set_defaults(func=cmd_sources)
    return p
