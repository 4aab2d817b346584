"""The same per-tensor methods in PyTorch, for `--device cuda` (runs on any torch device).

Each step is one separate tensor operation in the kernels' order (no fused multiply-add except where
mergekit has one), so results equal the numba kernels' bit for bit; the selections use `kthvalue`
and a cumulative count for the tie rule (lowest flat indices first) instead of the radix select.
Imported only when a GPU merge is asked for.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from . import kernels as K
from .errors import MergeError
from .methods import TensorTask, round_weight, trim_counts

_STORAGE = {K.KIND_F32: torch.float32, K.KIND_BF16: torch.bfloat16, K.KIND_F16: torch.float16}


def _to_device(a: np.ndarray, kind: int, device: str) -> torch.Tensor:
    t = torch.from_numpy(a)
    if kind != K.KIND_F32:
        t = t.view(torch.int16).view(_STORAGE[kind])
    return t.to(device).float()


class _Rounder:
    def __init__(self, arith: int):
        self.dtype = None if arith == K.KIND_F32 else _STORAGE[arith]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dtype is None else x.to(self.dtype).float()


def _keep_largest(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest keys; among keys equal to the k-th, the lowest indices."""
    numel = keys.numel()
    if k <= 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if k >= numel:
        return torch.ones_like(keys, dtype=torch.bool)
    threshold = torch.kthvalue(keys, numel - k + 1).values
    beyond = keys > threshold
    equal = keys == threshold
    need = k - int(beyond.sum())
    return beyond | (equal & (torch.cumsum(equal, 0) <= need))


def _keep_smallest(keys: torch.Tensor, candidates: torch.Tensor, m: int) -> torch.Tensor:
    """Mask of the m smallest keys among candidates (ties: lowest indices)."""
    if m <= 0:
        return torch.zeros_like(candidates)
    masked = torch.where(candidates, keys, torch.full_like(keys, 1 << 40))
    threshold = torch.kthvalue(masked, m).values
    below = masked < threshold
    equal = (masked == threshold) & candidates
    need = m - int(below.sum())
    return below | (equal & (torch.cumsum(equal, 0) <= need))


def _orderable(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 keys in the kernels' unsigned order."""
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    negative = bits >= 0x80000000
    return torch.where(negative, 0xFFFFFFFF - bits, bits | 0x80000000)


def _random_unit(seed: int, model: int, numel: int, device) -> torch.Tensor:
    """The kernels' splitmix64 draws, in int64 arithmetic (wrapping multiply, masked shifts)."""

    def shr(z, s):
        return (z >> s) & ((1 << (64 - s)) - 1)

    def wrap(v):
        return v - (1 << 64) if v >= 1 << 63 else v

    start = (seed + (model + 1) * 0xD1B54A32D192ED03 + 0x9E3779B97F4A7C15) % (1 << 64)
    z = torch.arange(numel, dtype=torch.int64, device=device) + wrap(start)
    z = (z ^ shr(z, 30)) * wrap(0xBF58476D1CE4E5B9)
    z = (z ^ shr(z, 27)) * wrap(0x94D049BB133111EB)
    z = z ^ shr(z, 31)
    return shr(z, 11).double() * (1.0 / 9007199254740992.0)


def merge_tensor(task: TensorTask, device: str) -> np.ndarray:
    """Merge one tensor on `device`; writes task.out and returns per-model (kept, discarded, reserved)."""
    cfg = task.config
    rnd = _Rounder(task.arith)
    n, numel = task.xs.shape
    xs = [_to_device(task.xs[i], task.kind, device) for i in range(n)]
    weights = [torch.tensor(round_weight(m.weight, task.arith), dtype=torch.float32, device=device)
               for m in cfg.models]
    lam = torch.tensor(cfg.lambda_, dtype=torch.float32, device=device)
    stats = np.zeros((n, 3), np.int64)
    stats[:, 0] = numel
    if cfg.method == "average":
        acc = torch.zeros(numel, dtype=torch.float32, device=device)
        for x, w in zip(xs, weights, strict=True):
            acc = torch.addcmul(acc, x, w)  # fused, as mergekit's addcmul_
        if cfg.normalize:
            acc = acc / sum(weights[1:], weights[0])
        return _finish(task, acc, stats)

    base = _to_device(task.base[0], task.kind, device)
    taus = [rnd(x - base) for x in xs]
    if cfg.method == "task_arithmetic":
        mixed = None
        for tau, w in zip(taus, weights, strict=True):
            u = rnd(tau * w)
            mixed = u if mixed is None else mixed + u
        mixed = rnd(mixed)
        if cfg.normalize:
            divisor = rnd(sum(weights[1:], weights[0]))
            if abs(float(divisor)) < 1e-8:
                divisor = torch.ones_like(divisor)
            mixed = rnd(mixed / divisor)
        if cfg.lambda_ != 1:
            mixed = rnd(mixed * lam)
        return _finish(task, rnd(base + mixed), stats)

    densities = cfg.densities()
    keeps, trimmed = [], []
    for i, tau in enumerate(taus):
        if cfg.method.startswith("dare"):
            if densities[i] >= 1:
                keep = torch.ones_like(tau, dtype=torch.bool)
                t = tau
            else:
                seed = (cfg.seed << 32) ^ zlib.crc32(task.name.encode()) ^ (i << 56)
                keep = _random_unit(seed, i, numel, device) < densities[i]
                t = torch.where(keep, rnd(tau / torch.tensor(densities[i], dtype=torch.float32,
                                                              device=device)), tau * 0)
        else:
            k = int(trim_counts(numel, [densities[i]], cfg.source == "mergekit")[0])
            keep = _keep_largest(tau.abs().view(torch.int32), k)
            t = torch.where(keep, tau, tau * 0)
        keeps.append(keep)
        trimmed.append(t)
    us = [rnd(t * w) for t, w in zip(trimmed, weights, strict=True)]
    unweighted = cfg.vote == "unweighted" and cfg.method != "dare_linear"
    no_vote = cfg.method == "dare_linear"
    voters = trimmed if unweighted else us
    vote = voters[0]
    for v in voters[1:]:
        vote = vote + v
    positive = vote >= 0

    def mix(positive):
        agrees, mixed, divisor = [], None, None
        for v, u, w in zip(voters, us, weights, strict=True):
            agree = (torch.ones_like(positive) if no_vote
                     else torch.where(positive, v > 0, v < 0))
            c = torch.where(agree, u, u * 0)
            if unweighted:
                d = agree.float()
            else:
                d = torch.where(agree, w.expand_as(u), w * 0)
            mixed = c if mixed is None else mixed + c
            divisor = d if divisor is None else divisor + d
            agrees.append(agree)
        return agrees, mixed, divisor

    agrees, mixed, divisor = mix(positive)
    if cfg.method == "ties_sv" and cfg.slack > 0:
        p = cfg.names.index(cfg.protect)
        candidates = keeps[p] & ~agrees[p] & (us[p] != 0)
        keys = _orderable(mixed.abs() - us[p].abs())
        count = int(candidates.sum())
        reserve = _keep_smallest(keys, candidates, math.floor(cfg.slack * count))
        stats[p, 2] = int(reserve.sum())
        positive = torch.where(reserve, voters[p] > 0, positive)
        agrees, mixed, divisor = mix(positive)
    for i in range(n):
        stats[i, 0] = int(keeps[i].sum())
        stats[i, 1] = int((keeps[i] & ~agrees[i]).sum())
    mixed = rnd(mixed)
    if cfg.normalize:
        divisor = rnd(divisor)
        zero = (divisor == 0) | ((divisor.abs() < 1e-8) if no_vote else False)
        divisor = torch.where(zero, torch.ones_like(divisor), divisor)
        mixed = rnd(mixed / divisor)
    if cfg.lambda_ != 1:
        mixed = rnd(mixed * lam)
    return _finish(task, rnd(base + mixed), stats)


def _finish(task: TensorTask, result: torch.Tensor, stats: np.ndarray) -> np.ndarray:
    finite = torch.isfinite(result)
    if not bool(finite.all()):
        task.check(int(torch.nonzero(~finite)[0, 0]))
    out = result.to(_STORAGE[task.out_kind]).cpu()
    if task.out_kind != K.KIND_F32:
        out = out.view(torch.int16)
    task.out[0] = out.numpy().view(task.out.dtype)
    return stats


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise MergeError("--device cuda: no CUDA device is available to torch")
