"""`python -m lrmerge.train ct ...`: the entry point for torchrun launches."""

import sys

from lrmerge.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
