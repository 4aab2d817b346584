"""The `lrmerge` command: a thin dispatcher over the stage modules.

Each stage module exposes `add_parser(subparsers)`; its parser sets `func`, which receives the parsed
arguments. Stage modules are imported lazily so that `lrmerge merge` never pays for importing
transformers or lm-eval.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines it (imported only when that subcommand runs)
COMMANDS = {
    "merge": "lrmerge.merge.cli",
    "merge-config": "lrmerge.merge.cli",
    "data": "lrmerge.data.cli",
    "train": "lrmerge.train.cli",
    "evaluate": "lrmerge.evaluate.cli",
    "tasks": "lrmerge.evaluate.cli",
    "report": "lrmerge.report",
    "plan": "lrmerge.plan.cli",
    "sources": "lrmerge.plan.preflight_cli",
    "import-gguf": "lrmerge.gguf",
}

HELP = {
    "merge": "merge models from a native or mergekit YAML config",
    "merge-config": "write a native merge config from command-line arguments",
    "data": "generate or prepare corpora and SFT data",
    "train": "pre-train, continually pre-train or fine-tune a model",
    "evaluate": "evaluate a model with lm-eval on the configured tasks",
    "tasks": "list the evaluation tasks per language and family, or write them",
    "report": "aggregate evaluation results into tables and draw figures",
    "plan": "the sweep's GPU-hours, wall time and disk per rule, before submitting",
    "sources": "open every source the config names and check its fields, before any GPU job",
    "import-gguf": "convert a GGUF file (llama.cpp) into a Hugging Face model folder",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="lrmerge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in HELP.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Import only the module of the chosen subcommand, then let it define the real parser.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser.print_help(sys.stderr if command else sys.stdout)
        return 2 if command else 0
    module = importlib.import_module(COMMANDS[command])
    parser = argparse.ArgumentParser(prog="lrmerge")
    sub = parser.add_subparsers(dest="command", required=True)
    # A module serving two subcommands names the second one's parser add_<name>_parser.
    getattr(module, f"add_{command.replace('-', '_')}_parser", module.add_parser)(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
