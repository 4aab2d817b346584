"""Merge methods: small registered units that merge one tensor with the kernels.

A method receives a `TensorTask` (the tensor's inputs already in memory, its output buffer, the
method's parameters) and returns per-model counts (kept, discarded, reserved). Adding a method is a
row in `merge.table` plus one function here, registered under the same name (and, if its
per-element math is new, a kernel).

    base     the registry, the task, rounding to the arithmetic dtype
    linear   average, task_arithmetic, breadcrumbs
    ties     ties, ties_sv, dare_ties, dare_linear; the trim's selection; slack: auto
    layers   chat_vector, layer_swap
"""

from __future__ import annotations

from typing import Any

from ..merge_config import MergeConfig
from . import layers, linear, ties  # noqa: F401  (they register their methods)
from .base import ARITH, PLANNERS, REGISTRY, Scratch, TensorTask, round_array, round_weight
from .layers import swap_weights
from .linear import rank_window
from .ties import SAMPLE, _slack_targets, auto_reserve, trim_count_pass, trim_counts

__all__ = ["ARITH", "REGISTRY", "SAMPLE", "Scratch", "TensorTask", "auto_reserve", "plan_tensors",
           "rank_window", "round_array", "round_weight", "swap_weights", "trim_count_pass",
           "trim_counts"]


def plan_tensors(config: MergeConfig, names: list[str], model_config: dict) -> dict[str, Any] | None:
    """Each tensor's plan, or None for methods without a planner."""
    if config.slack_auto:
        return _slack_targets(config, names)
    planner = PLANNERS.get(config.method)
    return planner(config, names, model_config) if planner else None
