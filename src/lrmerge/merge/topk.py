"""Exact top-k selection by radix select over 32-bit keys (two 16-bit histogram passes).

The kernels count keys into histograms; this module turns those counts into the threshold key and the
number of entries equal to it that must still be taken, and splits that number over the kernels' index
groups so that the lowest flat indices win (the tie rule). Sorting a tensor is never needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .kernels import COUNT_EQUAL, HIST_HIGH, HIST_LOW


@dataclass
class Selection:
    """Take every key beyond `threshold`, plus `quota[g]` keys equal to it in group g."""

    threshold: int
    quota: np.ndarray | None  # (segments,) int64: equal keys to take per index segment; None = all
    count: int  # how many keys were selected in all
    candidates: int  # how many keys there were


def _bucket(hist: np.ndarray, k: int, largest: bool) -> tuple[int, int]:
    """The bucket holding the k-th key and how many keys lie strictly beyond it."""
    order = hist[::-1] if largest else hist
    cumulative = np.cumsum(order)
    pos = int(np.searchsorted(cumulative, k))
    beyond = int(cumulative[pos - 1]) if pos > 0 else 0
    bucket = len(hist) - 1 - pos if largest else pos
    return bucket, beyond


def radix_select(
    count_pass: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    n_sets: int,
    ks: np.ndarray | Callable[[np.ndarray], np.ndarray],
    largest: bool,
) -> list[Selection | None]:
    """Select the ks[i] largest (or smallest) keys of each of n_sets key sets.

    count_pass(mode, bucket, threshold) runs one kernel pass and returns counts summed over workers:
    (n_sets, 65536) for HIST_HIGH / HIST_LOW, and for COUNT_EQUAL (segments, n_sets): the keys equal
    to the threshold in each index segment (the kernels' groups, over one tensor or many), in index
    order. A set whose k is 0 or
    covers all its keys gets None for "nothing" / "everything". ks may be a function of the number of
    keys in each set (known after the first pass).
    """
    zeros = np.zeros(n_sets, np.uint32)
    high = count_pass(HIST_HIGH, zeros, zeros)
    totals = high.sum(axis=1)
    if callable(ks):
        ks = ks(totals)
    buckets = np.zeros(n_sets, np.uint32)
    beyond = np.zeros(n_sets, np.int64)
    for i in range(n_sets):
        if 0 < ks[i] < totals[i]:
            buckets[i], beyond[i] = _bucket(high[i], int(ks[i]), largest)
    active = [i for i in range(n_sets) if 0 < ks[i] < totals[i]]
    results: list[Selection | None] = [None] * n_sets
    if not active:
        return results
    low = count_pass(HIST_LOW, buckets, zeros)
    thresholds = np.zeros(n_sets, np.uint32)
    need = np.zeros(n_sets, np.int64)
    equal = np.zeros(n_sets, np.int64)
    for i in active:
        low_bucket, low_beyond = _bucket(low[i], int(ks[i] - beyond[i]), largest)
        thresholds[i] = (int(buckets[i]) << 16) | low_bucket
        need[i] = ks[i] - beyond[i] - low_beyond
        equal[i] = low[i, low_bucket]
    per_group = None
    if any(need[i] < equal[i] for i in active):
        per_group = count_pass(COUNT_EQUAL, buckets, thresholds)
    for i in active:
        quota = None
        if per_group is not None:
            # fill the groups in index order: the lowest flat indices among equal keys win
            before = np.concatenate(([0], np.cumsum(per_group[:, i])[:-1]))
            quota = np.clip(need[i] - before, 0, per_group[:, i]).astype(np.int64)
        results[i] = Selection(int(thresholds[i]), quota, int(ks[i]), int(totals[i]))
    return results


def sample_window(sample_keys: np.ndarray, k: int, numel: int) -> tuple[int, int, float]:
    """A key range that very likely holds the k-th largest key, estimated from a sample.

    Returns (low key, high key, the sample's fraction of keys inside the range).
    """
    size = len(sample_keys)
    q = k / numel
    rank = q * size  # from the top
    # four standard deviations of a sample quantile, plus slack for small samples: a miss costs
    # only the exact radix passes, and narrower windows leave fewer elements to fix up
    margin = 4 * np.sqrt(size * q * (1 - q)) + 8
    top = int(np.clip(np.floor(rank - margin), 0, size - 1))
    bottom = int(np.clip(np.ceil(rank + margin), 0, size - 1))
    # positions counted from the top are size-1-pos from the bottom of an ascending order
    picked = np.partition(sample_keys, [size - 1 - bottom, size - 1 - top])
    high = int(picked[size - 1 - top])
    low = int(picked[size - 1 - bottom])
    inside = float(np.mean((sample_keys >= low) & (sample_keys <= high)))
    return low, high, inside


def select_direct(keys: np.ndarray, ks: np.ndarray, segments: np.ndarray) -> list[Selection | None]:
    """The same selection for keys held in memory (small tensors): keys (n, N) uint32; segments:
    the GROUPS + 1 boundaries of the kernels' index groups."""
    n, numel = keys.shape
    results: list[Selection | None] = [None] * n
    for i in range(n):
        k = int(ks[i])
        if not 0 < k < numel:
            continue
        row = keys[i]
        threshold = int(np.partition(row, numel - k)[numel - k])
        beyond = int(np.count_nonzero(row > threshold))
        positions = np.flatnonzero(row == threshold)
        need = k - beyond
        quota = None
        if need < len(positions):
            equal = np.diff(np.searchsorted(positions, segments))
            before = np.concatenate(([0], np.cumsum(equal)[:-1]))
            quota = np.clip(need - before, 0, equal).astype(np.int64)
        results[i] = Selection(threshold, quota, k, numel)
    return results
