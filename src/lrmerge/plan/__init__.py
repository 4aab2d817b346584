"""The sweep's cost and sources before submitting: `lrmerge plan`, `lrmerge sources`.

    cost    GPU-hours, wall time and disk per rule from the config's assumptions (`plan`)
    corpora per corpus, the target and English tokens each budget reads, the corpus's need and
            what the data stage prepares (`corpus_needs`)
    pilot   what a pilot run measured, carried to the sweep (`calibrate`, `calibrated_plan`)
    vocab   extended vocabularies: the characters a budget buys, the tokens and GPU-hours of
            the same characters as the base tokenizer's budgets (`same_characters`)
    preflight
            every corpus, the SFT data and every task's data the config names, opened with the
            stages' own loaders before any GPU job (`run_checks`); preflight_cli, its command
    cli     the `lrmerge plan` command
"""

from .corpora import corpus_needs
from .cost import format_table, model_sizes, plan
from .pilot import calibrate, calibrated_plan, format_calibrated
from .vocab import same_characters

__all__ = ["calibrate", "calibrated_plan", "corpus_needs", "format_calibrated", "format_table",
           "model_sizes", "plan", "same_characters"]
