"""The TIES family (TIES, TIES-SV, DARE-TIES, DARE-linear): one kernel with switches; the trim's
exact top-k selection; the slack of TIES-SV, fixed or auto."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from .. import kernels as K
from ..errors import MergeError
from ..merge_config import MergeConfig
from ..topk import Selection, radix_select, sample_window, select_direct
from .base import Scratch, TensorTask, _decode, register, round_array


def trim_counts(numel: int, densities: list[float], zero_keeps_none: bool = False) -> np.ndarray:
    """k = max(1, floor(d * numel)) entries kept per model; d >= 1 keeps all. mergekit keeps none
    at d = 0 (zero_keeps_none, for its configs)."""
    return np.array([numel if d >= 1 else 0 if d <= 0 and zero_keeps_none
                     else max(1, math.floor(d * numel)) for d in densities], np.int64)


# TIES-SV candidates (kept entries of the protected model against the elected sign) the collect
# buffers hold, as a share of its kept entries; beyond it (rare) the radix passes run instead
SV_SHARE, SV_SLACK = 0.6, 1024
SAMPLE = 1 << 16  # keys sampled to place the candidate window; tensors this small get exact passes



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
