"""Methods that add (weighted) task vectors or whole models: average, task arithmetic and
breadcrumbs."""

from __future__ import annotations

import numpy as np

from .. import kernels as K
from .base import TensorTask, _all_kept, _decode, register, round_array, round_weight


@register("average")
def average(task: TensorTask) -> np.ndarray:
    task.check(K.linear(task.xs, task.kind, task.weights, task.config.normalize, task.out,
                        task.out_kind))
    return _all_kept(task)


@register("task_arithmetic")
def task_arithmetic(task: TensorTask) -> np.ndarray:
    cfg = task.config
    kernel = K.TASK_ARITHMETIC[task.arith]
    task.check(kernel(task.base, task.xs, task.kind, task.weights, cfg.normalize,
                      np.float32(cfg.lambda_), task.out, task.out_kind))
    return _all_kept(task)


def rank_window(keys: np.ndarray, lo: int, count: int) -> np.ndarray:
    """Mask of the entries ranked lo .. lo + count - 1 in ascending `keys`, equal keys ranked by
    index. O(N): two order statistics, then only the entries equal to them are ranked."""
    keep = np.zeros(keys.shape, np.bool_)
    if count <= 0:
        return keep
    hi = lo + count - 1
    v_lo, v_hi = np.partition(keys, [lo, hi])[[lo, hi]]
    keep[(keys > v_lo) & (keys < v_hi)] = True
    for v in {float(v_lo), float(v_hi)}:
        equal = np.flatnonzero(keys == v)
        ranks = int(np.count_nonzero(keys < v)) + np.arange(equal.size)
        keep[equal] = (ranks >= lo) & (ranks <= hi)
    return keep


@register("breadcrumbs")
def breadcrumbs(task: TensorTask) -> np.ndarray:
    """Model Breadcrumbs: each task vector keeps k = floor(density N) entries by |tau|, after
    dropping its floor(gamma N) largest (fewer where k + that exceeds N) and the smallest; then task
    arithmetic, step for step in the kernels' (and mergekit's) order. density >= 1 keeps all, as
    in mergekit. Equal |tau| are ranked by index (mergekit's unstable sort may pick others)."""
    cfg, arith = task.config, task.arith
    n, numel = task.xs.shape
    base = _decode(task.base[0], task.kind)
    stats = np.zeros((n, 3), np.int64)
    weights = task.weights
    mixed = np.zeros(numel, np.float32)
    for i, density in enumerate(cfg.densities()):
        tau = round_array(_decode(task.xs[i], task.kind) - base, arith)
        if density < 1:
            k = int(density * numel)
            drop_top = int(cfg.value("gamma") * numel)
            keep = rank_window(np.abs(tau), max(0, numel - k - drop_top), k)
            tau = tau * keep  # times 0, not a select: a non-finite input stays non-finite
            stats[i, 0] = k
        else:
            stats[i, 0] = numel
        term = round_array(tau * weights[i], arith)
        mixed = term if i == 0 else mixed + term
    mixed = round_array(mixed, arith)
    divisor = round_weight(float(np.float32(weights.sum(dtype=np.float32))), arith)
    if cfg.normalize:
        mixed = round_array(mixed / np.float32(divisor if abs(divisor) >= 1e-8 else 1), arith)
    if cfg.lambda_ != 1:
        mixed = round_array(mixed * np.float32(cfg.lambda_), arith)
    result = round_array(base + mixed, arith)
    task.check(K.linear(result[None], K.KIND_F32, np.ones(1, np.float32), True, task.out,
                        task.out_kind))
    return stats
