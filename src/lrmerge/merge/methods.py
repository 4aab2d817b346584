"""Merge methods: small registered units that merge one tensor with the kernels.

A method receives a `TensorTask` (the tensor's inputs already in memory, its output buffer, the
method's parameters) and returns per-model counts (kept, discarded, reserved). Adding a method is one
function here plus, if its per-element math is new, a kernel.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels as K
from .config import MergeConfig
from .errors import MergeError
from .stats import module_of
from .topk import (
    Selection,
    radix_select,
    sample_window,
    select_direct,
)

REGISTRY: dict[str, Callable[[TensorTask], np.ndarray]] = {}
# Methods that decide something per tensor from the config and the tensor names alone, before any
# tensor is read (so that a bad name or stats file fails at once): name -> planner(config, names,
# model config.json) -> {tensor: plan}.
PLANNERS: dict[str, Callable[[MergeConfig, list[str], dict], dict[str, Any]]] = {}


def register(*names: str):
    def wrap(fn):
        for name in names:
            REGISTRY[name] = fn
        return fn

    return wrap


def plan_tensors(config: MergeConfig, names: list[str], model_config: dict) -> dict[str, Any] | None:
    """Each tensor's plan, or None for methods without a planner."""
    if config.slack_auto:
        return _slack_targets(config, names)
    planner = PLANNERS.get(config.method)
    return planner(config, names, model_config) if planner else None


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
    plan: Any = None  # what the method's planner decided for this tensor (PLANNERS)
    facts: dict = field(default_factory=dict)  # per-tensor facts for the stats (JSON values)

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
    bad = K.ties_window(task.base, task.xs, task.kind, (weights, vote, cfg.normalize, lam),
                        (w.lo, w.hi, w.above, w.cand_keys, w.cand_count),
                        (task.out, task.out_kind, stats), (unsure, unsure_count))
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
            drop_top = int(cfg.gamma * numel)
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


def _all_kept(task: TensorTask) -> np.ndarray:
    n, numel = task.xs.shape
    stats = np.zeros((n, 3), np.int64)
    stats[:, 0] = numel
    return stats


@register("ties", "ties_sv", "dare_ties", "dare_linear")
def ties_family(task: TensorTask) -> np.ndarray:
    """TIES, TIES-SV, DARE-TIES and DARE-linear: one kernel with switches (the trim, the vote, the
    slack). TIES on a large float32 tensor first tries the one-pass kernel; TIES-SV finds the
    candidates it reserves by collecting them in one pass (few models) or by radix passes."""
    cfg = task.config
    n = task.xs.shape[0]
    vote = K.VOTE_UNWEIGHTED if cfg.vote == "unweighted" else K.VOTE_WEIGHTED
    if (cfg.method == "ties" and task.trim is None and task.arith == K.KIND_F32
            and task.xs.shape[1] >= 4 * SAMPLE):
        stats = np.zeros((K.GROUPS, n, 3), np.int64)
        if one_pass_ties(task, task.weights, vote, stats):
            return stats.sum(axis=0)
    run = _TiesRun(task, -1 if cfg.method == "dare_linear" else vote)  # DARE-linear: no election
    if run.reserving and n <= 8 and run.collect_and_reserve():
        return run.stats.sum(axis=0)
    threshold, quota = run.radix_reserve() if run.reserving else (0, run.no_quota)
    task.check(run(-1, 0, threshold, quota, run.no_hist))
    return run.stats.sum(axis=0)


def _trim_args(task: TensorTask) -> tuple:
    """The kernel's trim tuple: (sparsify, keep_all, threshold, quota, density, seeds)."""
    cfg = task.config
    n = task.xs.shape[0]
    keep_all = np.zeros(n, np.bool_)
    threshold = np.zeros(n, np.uint32)
    quota = np.full((K.GROUPS, n), np.iinfo(np.int64).max, np.int64)
    density = np.array(cfg.densities(), np.float64)
    seeds = np.zeros(n, np.uint64)
    if cfg.method.startswith("dare"):
        keep_all[:] = density >= 1
        # one stream per (seed, tensor, model), drawn by index: independent of threads and order
        seeds[:] = [(cfg.seed << 32) ^ zlib.crc32(task.name.encode()) ^ (i << 56) for i in range(n)]
        return K.SPARSIFY_RANDOM, keep_all, threshold, quota, density, seeds
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
    return K.SPARSIFY_MAGNITUDE, keep_all, threshold, quota, density, seeds


class _TiesRun:
    """One tensor's runs of the TIES kernel: the trim and mix fixed, the slack pass varying."""

    no_hist = np.zeros((1, 1, 1), np.int64)
    no_quota = np.zeros(K.GROUPS, np.int64)
    no_collect = (np.zeros((1, 1), np.uint32), np.zeros((1, 1), np.uint32),
                  np.zeros((1, 1), np.uint8), np.zeros(1, np.int64))

    def __init__(self, task: TensorTask, vote: int):
        cfg = self.cfg = task.config
        self.task = task
        self.trim = _trim_args(task)
        self.mix = (task.weights, vote, cfg.normalize, np.float32(cfg.lambda_))
        self.protect = cfg.names.index(cfg.protect) if cfg.method == "ties_sv" else -1
        self.reserving = self.protect >= 0 and (cfg.slack > 0 or cfg.slack_auto)
        self.stats = np.zeros((K.GROUPS, task.xs.shape[0], 3), np.int64)
        self.kept = self.discarded = 0  # the protected model's counts, which slack: auto needs

    def __call__(self, mode, bucket, threshold, quota, hist, collect=None) -> int:
        task = self.task
        sv = (self.protect, mode, np.uint32(bucket), np.uint32(threshold), quota, hist,
              collect or self.no_collect)
        return K.TIES[task.arith](task.base, task.xs, task.kind, self.trim, self.mix, sv,
                                  (task.out, task.out_kind, self.stats))

    def note_protected(self) -> None:
        self.kept = int(self.stats[:, self.protect, 0].sum())
        self.discarded = int(self.stats[:, self.protect, 1].sum())

    def how_many(self, candidates: int) -> int:
        """Candidates the slack reserves: a share, or (auto) what reaches the target fraction."""
        if not self.cfg.slack_auto:
            return math.floor(self.cfg.slack * candidates)
        m = auto_reserve(float(self.task.plan), self.kept, self.discarded, candidates)
        self.task.facts["slack"] = m / candidates if candidates else 0.0
        return m

    def collect_and_reserve(self) -> bool:
        """One pass merges as TIES and collects the candidates; the few reserved ones are
        re-merged. False (nothing kept) if the candidates overflow the buffers."""
        task, p = self.task, self.protect
        numel = task.xs.shape[1]
        keep_all, density = self.trim[1], self.trim[4]
        trimmed = numel if keep_all[p] else min(numel, math.ceil(density[p] * numel))
        cap = min(numel // K.GROUPS + 1, math.ceil(trimmed * SV_SHARE / K.GROUPS) + SV_SLACK)
        collect = (task.scratch.get("sv_keys", (K.GROUPS, cap), np.uint32),
                   task.scratch.get("sv_offsets", (K.GROUPS, cap), np.uint32),
                   task.scratch.get("sv_keep", (K.GROUPS, cap), np.uint8),
                   np.zeros(K.GROUPS, np.int64))
        bad = self(K.SV_COLLECT, 0, 0, self.no_quota, self.no_hist, collect)
        counts = collect[3]
        self.note_protected()
        if not (counts <= cap).all():
            self.stats[:] = 0  # more candidates than the buffers hold: the radix passes instead
            return False
        task.check(bad)
        m = self.how_many(int(counts.sum()))
        if m > 0:
            threshold, quota = K.select_smallest(collect[0], counts, m)
            weights, vote, normalize, lam = self.mix
            task.check(K.TIES_SV_RESERVE[task.arith](
                task.base, task.xs, task.kind, weights, vote, normalize, lam, p, collect,
                threshold, quota, task.out, task.out_kind, self.stats))
        return True

    def radix_reserve(self) -> tuple[int, np.ndarray]:
        """The reserved candidates' threshold key and per-group quota, by radix passes that count
        the candidates' keys without merging."""
        if self.cfg.slack_auto:
            # the protected model's kept and discarded counts, from a merge that reserves nothing
            self.task.check(self(-1, 0, 0, self.no_quota, self.no_hist))
            self.note_protected()
            self.stats[:] = 0

        def sv_pass(mode, bucket, thr):
            if mode == K.COUNT_EQUAL:
                hist = np.zeros((K.GROUPS, 1, 1), np.int64)
                self(mode, bucket[0], thr[0], self.no_quota, hist)
                return hist[:, :, 0]
            hist = self.task.scratch.get("hist", (K.thread_slabs(), 1, 65536), np.int64, zero=True)
            self(mode, bucket[0], thr[0], self.no_quota, hist)
            return hist.sum(axis=0)

        wanted = []

        def reserve_count(totals):
            wanted.append((self.how_many(int(totals[0])), int(totals[0])))
            return np.array([wanted[0][0]], np.int64)

        (sel,) = radix_select(sv_pass, 1, reserve_count, largest=False)
        m, candidates = wanted[0]
        if sel is not None:
            quota = sel.quota if sel.quota is not None else np.full(K.GROUPS, np.iinfo(np.int64).max, np.int64)
            return sel.threshold, quota
        if m >= candidates and m > 0:
            return 0xFFFFFFFF, self.no_quota  # every candidate
        return 0, self.no_quota  # reserve nothing


# ---------------------------------------------------------------------------------------------
# chat vectors and layer swapping: copies and convex blends of whole tensors


def _copy(task: TensorTask, i: int) -> np.ndarray:
    """The output is model i's tensor (converted to the output dtype)."""
    task.check(K.linear(task.xs[i:i + 1], task.kind, np.ones(1, np.float32), True, task.out,
                        task.out_kind))
    n, numel = task.xs.shape
    stats = np.zeros((n, 3), np.int64)
    stats[i, 0] = numel
    return stats


@register("chat_vector")
def chat_vector(task: TensorTask) -> np.ndarray:
    """theta_CT + r (theta_SFT - theta_base) (Huang et al., ACL 2024): the config made it task
    arithmetic with weights (1, r) and lambda 1, so this is that kernel; with skip_embed the
    embeddings and LM head stay the CT model's."""
    if task.config.skip_embed and module_of(task.name) in ("embed", "lm_head"):
        return _copy(task, 0)
    return task_arithmetic(task)


_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")
_EMBED_NAMES = ("model.embed_tokens.weight",)
_HEAD_NAMES = ("model.norm.weight", "lm_head.weight")


def swap_weights(config: MergeConfig, layers: int) -> list[float]:
    """The language model's weight in each layer (the task model's is one minus it): 1 in the
    bottom and top layers, 0 in the middle, and across each transition zone of t layers a linear
    ramp j / (t + 1), j = t .. 1 going up from the bottom and j = 1 .. t going up to the top."""
    t, bottom, top = config.transition, config.bottom, config.top
    needed = bottom + top + t * (bottom > 0) + t * (top > 0)
    if needed >= layers:
        raise MergeError(f"layer_swap: bottom {bottom} + top {top} + transition {t} at each of "
                         f"{(bottom > 0) + (top > 0)} boundaries take {needed} of the model's "
                         f"{layers} layers and leave none of the task model's")
    w = [0.0] * layers
    for i in range(bottom):
        w[i] = 1.0
    for i in range(layers - top, layers):
        w[i] = 1.0
    for j in range(1, t + 1):
        if bottom:
            w[bottom + j - 1] = 1 - j / (t + 1)
        if top:
            w[layers - top - t + j - 1] = j / (t + 1)
    return w


def _plan_layer_swap(config: MergeConfig, names: list[str], model_config: dict) -> dict:
    """Per tensor, each model's weight (config order), from Llama-architecture tensor names."""
    index: dict[str, int | str] = {}
    for name in names:
        m = _LAYER_NAME.match(name)
        if m:
            index[name] = int(m.group(1))
        elif name in _EMBED_NAMES:
            index[name] = "embed"
        elif name in _HEAD_NAMES:
            index[name] = "head"
        else:
            raise MergeError(f"layer_swap: tensor {name} is not a Llama-architecture name "
                             "(model.layers.N.*, model.embed_tokens.weight, model.norm.weight, "
                             "lm_head.weight), so its layer is unknown")
    found = sorted({i for i in index.values() if isinstance(i, int)})
    if not found:
        raise MergeError("layer_swap: no tensor named model.layers.N.*: nothing to swap")
    layers = found[-1] + 1
    missing = sorted(set(range(layers)) - set(found))
    if missing:
        raise MergeError(f"layer_swap: layer {missing[0]} has no tensors (model.layers."
                         f"{missing[0]}.*) but layer {found[-1]} has")
    declared = model_config.get("num_hidden_layers")
    if declared is not None and declared != layers:
        raise MergeError(f"layer_swap: config.json num_hidden_layers is {declared} but the "
                         f"tensors name {layers} layers")
    language = config.names.index(config.language_model)
    per_layer = swap_weights(config, layers)
    plan = {}
    for name, where in index.items():
        w = np.zeros(len(config.names), np.float32)
        if where == "embed":
            w[config.names.index(config.embed_from)] = 1
        elif where == "head":
            w[config.names.index(config.head_from)] = 1
        else:
            w[language] = per_layer[where]
            w[1 - language] = 1 - per_layer[where]
        plan[name] = w
    return plan


PLANNERS["layer_swap"] = _plan_layer_swap


@register("layer_swap")
def layer_swap(task: TensorTask) -> np.ndarray:
    """Layer swapping (Bandarkar et al., ICLR 2025): each tensor copied from one model, or in a
    transition layer the convex blend of the two with the planned weights."""
    w = task.plan
    task.facts["source"] = {name: float(x) for name, x in zip(task.config.names, w, strict=True)}
    whole = np.flatnonzero(w == 1)
    if len(whole):
        return _copy(task, int(whole[0]))
    weights = np.array([round_weight(float(x), task.arith) for x in w], np.float32)
    task.check(K.linear(task.xs, task.kind, weights, True, task.out, task.out_kind))
    n, numel = task.xs.shape
    stats = np.zeros((n, 3), np.int64)
    stats[w > 0, 0] = numel
    return stats


# ---------------------------------------------------------------------------------------------
# slack: auto


def _slack_targets(config: MergeConfig, names: list[str]) -> dict[str, float]:
    """Each tensor's target discarded fraction of the protected model: the configured fraction, or
    that tensor's fraction in a merge_stats.json (the same model name protected there)."""
    target = config.target_discarded
    if not isinstance(target, str):
        return {name: float(target) for name in names}
    path = Path(target)
    try:
        stats = json.loads(path.read_text())
        models, tensors = stats["models"], stats["tensors"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MergeError(f"target_discarded: {path} is not a readable merge_stats.json "
                         f"({type(e).__name__}: {e})") from e
    if config.protect not in models:
        raise MergeError(f"target_discarded: {path} has no model named '{config.protect}' "
                         f"(models: {', '.join(models)})")
    i = models.index(config.protect)
    out = {}
    for name in names:
        if name not in tensors:
            raise MergeError(f"target_discarded: tensor {name} is missing from {path}")
        out[name] = float(tensors[name][i]["discarded_fraction"])
    return out


def auto_reserve(target: float, kept: int, discarded: int, candidates: int) -> int:
    """How many of the protected model's discarded entries (candidates: those with a nonzero
    task-vector entry, which a reserve can turn) slack: auto reserves so that its discarded
    fraction, discarded / kept, is at most the target: the fewest that suffice, or every
    candidate if even that cannot."""
    allowed = math.floor(target * kept + 1e-6)  # a fraction read back from JSON: D / K exactly
    return max(0, min(candidates, discarded - allowed))
