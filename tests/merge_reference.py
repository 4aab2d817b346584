"""An independent, deliberately plain implementation of the merge definitions in
`shared/reference/paper-recipe.md` ("Merge definitions this project uses"), one tensor at a time.

Slow on purpose: numpy, float64 after the task vectors, a full stable sort for every selection.
Written from the definitions, not from the engine's code, so the tests can catch the engine's
mistakes. Conventions:

- tau_i = theta_i - theta_base, computed in the arithmetic dtype (float32 by default), then float64.
- trim: keep k = max(1, floor(d * numel)) entries of largest |tau_i|; among entries equal to the
  threshold the lowest flat indices are kept (a stable sort of -|tau|). d >= 1 keeps all.
- weighted vote (mergekit): u_i = w_i * trimmed_i; gamma = +1 where sum_i u_i >= 0 else -1;
  agree_i = sign(u_i) == gamma (a zero never agrees); delta = sum agree u / sum agree w (0 -> 1).
- unweighted vote (PEFT / original TIES): gamma from the sum of the trimmed (unweighted) values;
  agree_i = sign(trimmed_i) == gamma; delta = sum agree u / number of agreeing models (0 -> 1).
- ties_sv: among the protected model p's discarded entries (kept by its trim, disagreeing with
  gamma) rank by |sum_i agree_i u_i| - |u_p|, reserve floor(s * count) with the smallest value
  (ties: lowest flat index); there gamma := sign(u_p), agreement and the mean are recomputed.
- stats per model: kept = entries surviving trim; discarded = kept entries that disagree with the
  final elected sign; reserved = entries of p restored by the slack (0 for the other models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Stats:
    kept: int
    discarded: int
    reserved: int = 0

    @property
    def discarded_fraction(self) -> float:
        return self.discarded / self.kept if self.kept else 0.0


@dataclass
class Result:
    theta: np.ndarray  # float64
    stats: list[Stats]
    discarded_before_slack: list[int] = field(default_factory=list)


def task_vector(theta: np.ndarray, base: np.ndarray, dtype=np.float32) -> np.ndarray:
    return (np.asarray(theta, dtype=dtype) - np.asarray(base, dtype=dtype)).astype(np.float64)


def n_keep(density: float, numel: int) -> int:
    if density >= 1:
        return numel
    return max(1, math.floor(density * numel))


def top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest |values|; among equal magnitudes the lowest flat index wins."""
    flat = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(np.shape(values))


def trim_mask(tau: np.ndarray, density: float) -> np.ndarray:
    return top_k_mask(tau, n_keep(density, tau.size))


def model_scope_masks(taus: dict[str, np.ndarray], density: float) -> dict[str, np.ndarray]:
    """trim_scope: model -- one top-k over all tensors of one model (concatenated in the given
    order), k = max(1, floor(d * total numel))."""
    names = list(taus)
    flat = np.concatenate([np.abs(taus[n]).ravel() for n in names])
    mask = top_k_mask(flat, n_keep(density, flat.size))
    out, pos = {}, 0
    for n in names:
        size = taus[n].size
        out[n] = mask[pos:pos + size].reshape(taus[n].shape)
        pos += size
    return out


def average(thetas: Sequence[np.ndarray], weights: Sequence[float]) -> Result:
    w = np.asarray(weights, dtype=np.float64)
    acc = sum(wi * np.asarray(t, dtype=np.float64) for wi, t in zip(w, thetas, strict=True))
    theta = acc / w.sum()
    n = np.asarray(thetas[0]).size
    return Result(theta, [Stats(n, 0) for _ in thetas])


def task_arithmetic(base: np.ndarray, thetas: Sequence[np.ndarray], weights: Sequence[float],
                    lam: float = 1.0, normalize: bool = False, dtype=np.float32) -> Result:
    taus = [task_vector(t, base, dtype) for t in thetas]
    acc = sum(w * t for w, t in zip(weights, taus, strict=True))
    if normalize:
        acc = acc / float(np.sum(weights))
    theta = np.asarray(base, dtype=np.float64) + lam * acc
    n = np.asarray(base).size
    return Result(theta, [Stats(n, 0) for _ in thetas])


def ties(
    base: np.ndarray,
    thetas: Sequence[np.ndarray],
    weights: Sequence[float],
    densities: Sequence[float] | float,
    lam: float = 1.0,
    vote: str = "weighted",
    normalize: bool = True,
    slack: float = 0.0,
    protect: int | None = None,
    masks: Sequence[np.ndarray] | None = None,
    dtype=np.float32,
) -> Result:
    """TIES (and TIES-SV when slack > 0 and protect is a model index) for one tensor."""
    m = len(thetas)
    if isinstance(densities, (int, float)):
        densities = [float(densities)] * m
    base64 = np.asarray(base, dtype=np.float64)
    taus = [task_vector(t, base, dtype) for t in thetas]
    if masks is None:
        masks = [trim_mask(t, d) for t, d in zip(taus, densities, strict=True)]
    trimmed = [np.where(mk, t, 0.0) for mk, t in zip(masks, taus, strict=True)]
    u = [w * t for w, t in zip(weights, trimmed, strict=True)]
    w = [np.full(base64.shape, float(wi)) for wi in weights]

    if vote == "weighted":
        vote_values = u
    elif vote == "unweighted":
        vote_values = trimmed
    else:
        raise ValueError(vote)
    gamma = np.where(sum(vote_values) >= 0, 1.0, -1.0)

    def agreement(g):
        return [np.sign(v) == g for v in vote_values]

    agree = agreement(gamma)
    discarded_before = [int(np.sum(mk & ~a)) for mk, a in zip(masks, agree, strict=True)]
    reserved_mask = np.zeros(base64.shape, dtype=bool)

    if protect is not None and slack > 0:
        p = protect
        candidates = masks[p] & ~agree[p] & (u[p] != 0)
        count = int(candidates.sum())
        n_reserve = math.floor(slack * count)
        if n_reserve > 0:
            agreeing_sum = sum(np.where(a, x, 0.0) for a, x in zip(agree, u, strict=True))
            diff = np.abs(agreeing_sum) - np.abs(u[p])
            flat_diff = diff.ravel()
            flat_idx = np.flatnonzero(candidates.ravel())
            # smallest difference first; lexsort keys: last is primary
            order = np.lexsort((flat_idx, flat_diff[flat_idx]))
            chosen = flat_idx[order[:n_reserve]]
            reserved_mask.ravel()[chosen] = True
            gamma = np.where(reserved_mask, np.sign(vote_values[p]), gamma)
            agree = agreement(gamma)

    num = sum(np.where(a, x, 0.0) for a, x in zip(agree, u, strict=True))
    if vote == "weighted":
        den = sum(np.where(a, x, 0.0) for a, x in zip(agree, w, strict=True))
    else:
        den = sum(a.astype(np.float64) for a in agree)
    if normalize:
        den = np.where(den == 0, 1.0, den)
        delta = num / den
    else:
        delta = num
    theta = base64 + lam * delta

    stats = []
    for i in range(m):
        kept = int(masks[i].sum())
        disc = int(np.sum(masks[i] & ~agree[i]))
        res = int(reserved_mask.sum()) if (protect is not None and i == protect) else 0
        stats.append(Stats(kept, disc, res))
    return Result(theta, stats, discarded_before)


def ties_sv(base, thetas, weights, densities, slack: float, protect: int, **kw) -> Result:
    return ties(base, thetas, weights, densities, slack=slack, protect=protect, **kw)


def merge_model(inputs, method: str, weights: Sequence[float], densities=None, lam: float = 1.0,
                vote: str = "weighted", normalize: bool | None = None, slack: float = 0.0,
                protect: int | None = None, trim_scope: str = "tensor") -> dict[str, Result]:
    """Apply a method to every tensor of a `merge_helpers.MergeInputs`; name -> Result."""
    names = inputs.tensor_names
    out: dict[str, Result] = {}
    if method in ("ties", "ties_sv") and densities is None:
        raise ValueError("densities")
    if isinstance(densities, (int, float)):
        densities = [float(densities)] * len(inputs.names)
    scope_masks = None
    if method in ("ties", "ties_sv") and trim_scope == "model":
        scope_masks = []
        for i in range(len(inputs.names)):
            taus = {n: task_vector(inputs.theta(i, n), inputs.base_np(n)) for n in names}
            scope_masks.append(model_scope_masks(taus, densities[i]))
    for n in names:
        if method == "average":
            out[n] = average(inputs.thetas(n), weights)
        elif method == "task_arithmetic":
            out[n] = task_arithmetic(inputs.base_np(n), inputs.thetas(n), weights, lam,
                                     normalize=bool(normalize))
        elif method in ("ties", "ties_sv"):
            masks = [sm[n] for sm in scope_masks] if scope_masks else None
            out[n] = ties(inputs.base_np(n), inputs.thetas(n), weights, densities, lam=lam,
                          vote=vote, normalize=True if normalize is None else normalize,
                          slack=slack if method == "ties_sv" else 0.0,
                          protect=protect if method == "ties_sv" else None, masks=masks)
        else:
            raise ValueError(method)
    return out
