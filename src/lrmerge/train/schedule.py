"""Steps and learning rate. A CT step holds batch_size x seq_len tokens, except that steps are
cut at every budget of the language, so each budget ends on a step edge and a chain of budgets
is, step for step, the straight run to the last one."""

from __future__ import annotations

import math
from dataclasses import dataclass


def next_cut(seen: int, tokens_per_step: int, cuts: list[int], total: int) -> int:
    """Where the step starting at token `seen` ends: the next multiple of tokens_per_step, or
    an earlier budget edge."""
    end = (seen // tokens_per_step + 1) * tokens_per_step
    return min([end, total] + [c for c in cuts if c > seen])


def count_steps(total: int, tokens_per_step: int, cuts: list[int]) -> int:
    n, seen = 0, 0
    while seen < total:
        seen = next_cut(seen, tokens_per_step, cuts, total)
        n += 1
    return n


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup to `lr`, cosine to `min_lr` at `decay_steps`, then `min_lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_steps:
        return min_lr
    p = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


@dataclass(frozen=True)
class Schedule:
    total_tokens: int
    tokens_per_step: int
    cuts: tuple[int, ...]
    total_steps: int
    decay_steps: int
    warmup_steps: int
    lr: float
    min_lr: float

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.lr, self.min_lr, self.warmup_steps, self.decay_steps)

    def step_end(self, seen: int) -> int:
        return next_cut(seen, self.tokens_per_step, list(self.cuts), self.total_tokens)


def make_schedule(stage: str, tc: dict, tokens: int | None, budgets: list[int]) -> Schedule:
    tokens_per_step = tc["batch_size"] * tc["seq_len"]
    if stage == "ct":
        total = int(tokens)
        cuts = sorted({int(b) for b in budgets} | {total})
        steps = count_steps(total, tokens_per_step, cuts)
        default_decay = count_steps(max(cuts), tokens_per_step, cuts)
    else:
        steps = tc["steps"]
        total = steps * tokens_per_step
        cuts = [total]
        default_decay = steps
    return Schedule(total, tokens_per_step, tuple(cuts), steps, tc["decay_steps"] or default_decay,
                    tc["warmup_steps"], tc["lr"], tc["min_lr"])
