"""What the study's amounts of data count, in the one wording every output uses: the figures'
axes, the tables' column descriptions, `lrmerge plan` and the docs (tests/test_budget_unit.py
holds them to these words).

A CT budget (`languages.<lang>.budgets`) counts every token a CT run reads, the target language
and the English replay together, mixed at `continual_pretrain.english_ratio` (target:English
4:1 by default; lrmerge.data.budget lays out the blocks). Characters count the target-language
text alone: what a run with another tokenizer is compared by.
"""

from __future__ import annotations

BUDGET_UNIT = "CT tokens (target + English)"
TARGET_CHARACTERS = "characters of target-language text"
