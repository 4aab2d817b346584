"""Merge methods: small registered units that merge one tensor with the kernels.

A method receives a `TensorTask` (the tensor's inputs already in memory, its output buffer, the
method's parameters) and returns per-model counts (kept, discarded, reserved). Adding a method is one
function here plus, if its per-element math is new, a kernel.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import kernels as K
from .config import MergeConfig
from .errors import MergeError
from .topk import (
    Selection,
    radix_select,
    sample_window,
    select_direct,
)

REGISTRY: dict[str, Callable[[TensorTask], np.ndarray]] = {}


def register(*names: str):
    def wrap(fn):
        for name in names:
            REGISTRY[name] = fn
        return fn

    return wrap


class Scratch:
    """Grow-only work buffers reused from tensor to tensor: fresh allocations of this size would pay
    for their page faults on every tensor."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype, zero: bool = False) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = self._buffers[name] = np.empty(nbytes, np.uint8)
        view = buf[:nbytes].view(dtype).reshape(shape)
        if zero:
            view.fill(0)
        return view


@dataclass
class TensorTask:
    name: str
    config: MergeConfig
    base: np.ndarray | None  # (1, N) storage dtype
    xs: np.ndarray  # (n, N)
    kind: int
    out: np.ndarray  # (1, N)
    out_kind: int
    trim: list[Selection | None] | None = None  # model-scope trim, precomputed for this tensor
    scratch: Scratch = field(default_factory=Scratch)

    @property
    def arith(self) -> int:
        return ARITH[self.config.dtype]

    @property
    def weights(self) -> np.ndarray:
        """Weights as float32, rounded to the arithmetic dtype (mergekit makes them tensors of it)."""
        return np.array([round_weight(m.weight, self.arith) for m in self.config.models], np.float32)

    def check(self, bad: int) -> None:
        """Raise if the result holds a non-finite value, naming the input that caused it.

        Every method turns a non-finite input into a non-finite result (inf * 0 and inf - inf are
        NaN), so inputs need no pass of their own: they are searched only when a result is bad.
        """
        if bad < 0:
            return
        rows = [(self.config.base_name, self.base)] if self.base is not None else []
        rows += [(name, self.xs[i : i + 1]) for i, name in enumerate(self.config.names)]
        for who, row in rows:
            found = int(K.first_nonfinite(row, self.kind)[0])
            if found >= 0:
                raise MergeError(f"tensor {self.name} of model '{who}' holds a non-finite value "
                                 f"at flat index {found}")
        raise MergeError(f"tensor {self.name}: the merged value at flat index {bad} is not finite")


ARITH = {"float32": K.KIND_F32, "bfloat16": K.KIND_BF16, "float16": K.KIND_F16}


def round_weight(x: float, arith: int) -> float:
    """A Python float rounded once, to nearest even, into the arithmetic dtype."""
    if arith == K.KIND_F16:
        return float(np.float16(x))
    if arith == K.KIND_BF16:
        f = abs(np.float32(x))
        lower = (np.array(f).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        upper = (np.array(f).view(np.uint32) + np.uint32(0x10000) & np.uint32(0xFFFF0000)).view(np.float32)
        lo_gap, hi_gap = abs(x) - float(lower), float(upper) - abs(x)
        if lo_gap < hi_gap or (lo_gap == hi_gap and not int(lower.view(np.uint32)) & 0x10000):
            nearest = float(lower)
        else:
            nearest = float(upper)
        return nearest if x >= 0 else -nearest
    return float(np.float32(x))


def round_array(a: np.ndarray, arith: int) -> np.ndarray:
    """float32 values rounded to the arithmetic dtype (as the kernels' rnd), back in float32."""
    if arith == K.KIND_BF16:
        bits = a.view(np.uint32)
        bits = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (bits & np.uint32(0xFFFF0000)).view(np.float32)
    if arith == K.KIND_F16:
        return a.astype(np.float16).astype(np.float32)
    return a


def trim_counts(numel: int, densities: list[float], zero_keeps_none: bool = False) -> np.ndarray:
    """k = max(1, floor(d * numel)) entries kept per model; d >= 1 keeps all. mergekit keeps none
    at d = 0 (zero_keeps_none, for its configs)."""
    return np.array([numel if d >= 1 else 0 if d <= 0 and zero_keeps_none
                     else max(1, math.floor(d * numel)) for d in densities], np.int64)


# TIES-SV candidates (kept entries of the protected model against the elected sign) the collect
# buffers hold, as a share of its kept entries; beyond it (rare) the radix passes run instead
SV_SHARE, SV_SLACK = 0.6, 1024
SAMPLE = 1 << 16  # keys sampled to place the candidate window; tensors this small get exact passes


def _decode(a: np.ndarray, kind: int) -> np.ndarray:
    if kind == K.KIND_F32:
        return a
    if kind == K.KIND_BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.view(np.float16).astype(np.float32)


class _Window:
    """Per model, a key window that very likely holds the k-th largest |tau| (from a sample), and
    the buffers of a windowed pass: counts beyond the window, and the keys inside it per group."""

    def __init__(self, task: TensorTask, ks: np.ndarray):
        n, numel = task.xs.shape
        # a sample of ~1/64 of the tensor, at most SAMPLE keys: the window's width shrinks as
        # 1/sqrt(sample), and the elements inside it cost a second look
        count = min(SAMPLE, max(numel // 64, 4096))
        keys = K.sample_keys(task.base, task.xs, task.kind, numel // count, count, task.arith)
        self.lo = np.zeros(n, np.uint32)
        self.hi = np.zeros(n, np.uint32)
        expected = 0.0  # the largest share of keys a window is expected to hold
        for i in range(n):
            self.lo[i], self.hi[i], inside = sample_window(keys[i], int(ks[i]), numel)
            expected = max(expected, inside)
        cap = int(expected * numel / K.GROUPS * 1.5) + 4096
        self.above = np.zeros((K.GROUPS, n), np.int64)
        self.cand_keys = task.scratch.get("candidates", (K.GROUPS, n, cap), np.uint32)
        self.cand_count = np.zeros((K.GROUPS, n), np.int64)


def _windowed_selection(task: TensorTask, ks: np.ndarray) -> list[Selection | None] | None:
    """One pass: counts beyond, and keys inside, a window around each sampled threshold."""
    n, numel = task.xs.shape
    w = _Window(task, ks)
    K.TRIM_SCAN[task.arith](task.base, task.xs, task.kind, w.lo, w.hi, w.above, w.cand_keys,
                            w.cand_count)
    ok, threshold, quota = K.select_candidates(ks, numel, w.above, w.cand_keys, w.cand_count)
    if not ok:
        return None
    return [Selection(int(threshold[i]), quota[:, i].copy(), int(ks[i]), numel) for i in range(n)]


def one_pass_ties(task: TensorTask, weights: np.ndarray, vote: int, stats: np.ndarray) -> bool:
    """TIES in a single pass over the tensor: merge every element whose keys are clear of the
    sampled threshold windows, then only the few unsure ones once the exact thresholds are known.
    Returns False (nothing usable written) if a window missed or a buffer overflowed."""
    cfg = task.config
    n, numel = task.xs.shape
    ks = trim_counts(numel, cfg.densities(), cfg.source == "mergekit")
    if not ((ks > 0) & (ks < numel)).all():
        return False
    w = _Window(task, ks)
    unsure = task.scratch.get("unsure", (K.GROUPS, n * w.cand_keys.shape[2]), np.int64)
    unsure_count = np.zeros(K.GROUPS, np.int64)
    stats[:] = 0
    lam = np.float32(cfg.lambda_)
    bad = K.ties_window(task.base, task.xs, task.kind, weights, w.lo, w.hi, vote, cfg.normalize,
                        lam, task.out, task.out_kind, stats, w.above, w.cand_keys, w.cand_count,
                        unsure, unsure_count)
    if (unsure_count > unsure.shape[1]).any():
        return False
    ok, threshold, quota = K.select_candidates(ks, numel, w.above, w.cand_keys, w.cand_count)
    if not ok:
        return False
    task.check(bad)
    task.check(K.ties_fixup(task.base, task.xs, task.kind, weights, threshold, quota, vote,
                            cfg.normalize, lam, task.out, task.out_kind, stats, unsure,
                            unsure_count))
    return True


def trim_selection(task: TensorTask) -> list[Selection | None]:
    """Per-tensor exact select of the k largest |tau| of each model.

    Small tensors: in memory. Large ones: one pass (counts beyond, and keys inside, a window around
    a sampled threshold); if the sample misled (very rare), the plain radix passes.
    """
    n, numel = task.xs.shape
    ks = trim_counts(numel, task.config.densities(), task.config.source == "mergekit")
    if numel < 4 * SAMPLE:
        base = _decode(task.base, task.kind)
        keys = np.abs(round_array(_decode(task.xs, task.kind) - base, task.arith)).view(np.uint32)
        segments = np.arange(K.GROUPS + 1, dtype=np.int64) * numel // K.GROUPS
        return select_direct(keys, ks, segments)
    found = _windowed_selection(task, ks)
    if found is not None:
        return found

    def count_pass(mode, bucket, threshold):
        return trim_count_pass(task.base, task.xs, task.kind, task.arith, mode, bucket, threshold,
                               task.scratch)

    return radix_select(count_pass, n, ks, largest=True)


def trim_count_pass(base, xs, kind, arith, mode, bucket, threshold, scratch: Scratch) -> np.ndarray:
    """One radix-select pass over one tensor, in the shape radix_select wants: (n, 65536) counts,
    or (GROUPS, n) equal counts for COUNT_EQUAL."""
    n = xs.shape[0]
    if mode == K.COUNT_EQUAL:
        hist = np.zeros((K.GROUPS, n, 1), np.int64)
        K.trim_histogram(base, xs, kind, mode, bucket, threshold, hist, arith)
        return hist[:, :, 0]
    hist = scratch.get("hist", (K.thread_slabs(), n, 65536), np.int64, zero=True)
    K.trim_histogram(base, xs, kind, mode, bucket, threshold, hist, arith)
    return hist.sum(axis=0)


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


def _all_kept(task: TensorTask) -> np.ndarray:
    n, numel = task.xs.shape
    stats = np.zeros((n, 3), np.int64)
    stats[:, 0] = numel
    return stats


@register("ties", "ties_sv", "dare_ties", "dare_linear")
def ties_family(task: TensorTask) -> np.ndarray:
    cfg = task.config
    n, numel = task.xs.shape
    keep_all = np.zeros(n, np.bool_)
    threshold = np.zeros(n, np.uint32)
    quota = np.full((K.GROUPS, n), np.iinfo(np.int64).max, np.int64)
    density = np.array(cfg.densities(), np.float64)
    seeds = np.zeros(n, np.uint64)
    if cfg.method.startswith("dare"):
        sparsify = K.SPARSIFY_RANDOM
        keep_all[:] = density >= 1
        # one stream per (seed, tensor, model), drawn by index: independent of threads and order
        seeds[:] = [(cfg.seed << 32) ^ zlib.crc32(task.name.encode()) ^ (i << 56) for i in range(n)]
    else:
        sparsify = K.SPARSIFY_MAGNITUDE
        if (cfg.method == "ties" and task.trim is None and task.arith == K.KIND_F32
                and numel >= 4 * SAMPLE):
            vote = K.VOTE_UNWEIGHTED if cfg.vote == "unweighted" else K.VOTE_WEIGHTED
            stats = np.zeros((K.GROUPS, n, 3), np.int64)
            if one_pass_ties(task, task.weights, vote, stats):
                return stats.sum(axis=0)
        selections = task.trim if task.trim is not None else trim_selection(task)
        for i, sel in enumerate(selections):
            if sel is None and density[i] <= 0 and cfg.source == "mergekit":
                threshold[i] = 0xFFFFFFFF  # nothing kept: no |tau| lies beyond
                quota[:, i] = 0
            elif sel is None:
                keep_all[i] = True
            else:
                threshold[i] = sel.threshold
                if sel.quota is not None:
                    quota[:, i] = sel.quota
    vote = K.VOTE_UNWEIGHTED if cfg.vote == "unweighted" else K.VOTE_WEIGHTED
    if cfg.method == "dare_linear":
        vote = -1  # no sign election: every kept entry agrees
    protect = cfg.names.index(cfg.protect) if cfg.method == "ties_sv" else -1
    weights = task.weights
    lam = np.float32(cfg.lambda_)
    stats = np.zeros((K.GROUPS, n, 3), np.int64)
    no_hist = np.zeros((1, 1, 1), np.int64)
    no_quota = np.zeros(K.GROUPS, np.int64)

    kernel = K.TIES[task.arith]
    no_collect = (np.zeros((1, 1), np.uint32), np.zeros((1, 1), np.uint32),
                  np.zeros((1, 1), np.uint8), np.zeros(1, np.int64))

    def run(sv_mode, sv_bucket, sv_threshold, sv_quota, sv_hist, sv_collect=no_collect):
        return kernel(task.base, task.xs, task.kind, weights, sparsify, keep_all, threshold, quota,
                      density, seeds, vote, cfg.normalize, lam, protect, sv_mode,
                      np.uint32(sv_bucket), np.uint32(sv_threshold), sv_quota, sv_hist, sv_collect,
                      task.out, task.out_kind, stats)

    if protect >= 0 and cfg.slack > 0 and n <= 8:
        # one pass merges as TIES and collects the candidates; the few reserved ones are re-merged
        kept = numel if keep_all[protect] else min(numel, math.ceil(density[protect] * numel))
        cap = min(numel // K.GROUPS + 1, math.ceil(kept * SV_SHARE / K.GROUPS) + SV_SLACK)
        collect = (task.scratch.get("sv_keys", (K.GROUPS, cap), np.uint32),
                   task.scratch.get("sv_offsets", (K.GROUPS, cap), np.uint32),
                   task.scratch.get("sv_keep", (K.GROUPS, cap), np.uint8),
                   np.zeros(K.GROUPS, np.int64))
        bad = run(K.SV_COLLECT, 0, 0, no_quota, no_hist, collect)
        counts = collect[3]
        if (counts <= cap).all():
            task.check(bad)
            m = math.floor(cfg.slack * int(counts.sum()))
            if m > 0:
                sv_threshold, sv_quota = K.select_smallest(collect[0], counts, m)
                task.check(K.TIES_SV_RESERVE[task.arith](
                    task.base, task.xs, task.kind, weights, vote, cfg.normalize, lam, protect,
                    collect, sv_threshold, sv_quota, task.out, task.out_kind, stats))
            return stats.sum(axis=0)
        stats[:] = 0  # more candidates than the buffers hold: the radix passes below

    sv_threshold, sv_quota = 0, no_quota  # reserve nothing
    if protect >= 0 and cfg.slack > 0:

        def sv_pass(mode, bucket, thr):
            if mode == K.COUNT_EQUAL:
                hist = np.zeros((K.GROUPS, 1, 1), np.int64)
                run(mode, bucket[0], thr[0], no_quota, hist)
                return hist[:, :, 0]
            hist = task.scratch.get("hist", (K.thread_slabs(), 1, 65536), np.int64, zero=True)
            run(mode, bucket[0], thr[0], no_quota, hist)
            return hist.sum(axis=0)

        wanted = []

        def reserve_count(totals):
            wanted.append((math.floor(cfg.slack * int(totals[0])), int(totals[0])))
            return np.array([wanted[0][0]], np.int64)

        (sel,) = radix_select(sv_pass, 1, reserve_count, largest=False)
        m, candidates = wanted[0]
        if sel is not None:
            sv_threshold = sel.threshold
            if sel.quota is not None:
                sv_quota = sel.quota
            else:
                sv_quota = np.full(K.GROUPS, np.iinfo(np.int64).max, np.int64)
        elif m >= candidates and m > 0:
            sv_threshold = 0xFFFFFFFF  # every candidate
    task.check(run(-1, 0, sv_threshold, sv_quota, no_hist))
    return stats.sum(axis=0)
