"""The selection paths of tensors too large to select in memory (more than 4 x 65,536 entries):
the one-pass TIES kernel (float32 arithmetic) and the windowed select (every other TIES variant)
place a window around each model's threshold from a sample, and fall back to exact radix passes
when the window misses or its buffers overflow. Every path must equal the independent reference
(tests/merge_reference.py), stats included, and the tie rule must hold on bf16 values with many
equal magnitudes."""

from __future__ import annotations

import merge_reference as R
import numpy as np
import pytest

from lrmerge.merge import kernels as K
from lrmerge.merge import methods as M
from lrmerge.merge.merge_config import load_merge_config
from lrmerge.merge.methods import ties

NUMEL = 300_000  # above methods.SAMPLE * 4: the windowed paths


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _inputs(storage: str, n: int, seed: int):
    """base and n fine-tuned rows. bf16: coarse noise, so many |tau| are equal and the tie rule
    decides (bf16 sums of a few such values are exact in float32, as in the float64 reference).
    float32: continuous noise, where float32 and float64 sums agree in sign."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(NUMEL) * 0.02).astype(np.float32)
    if storage == "bfloat16":
        xs = [base + (rng.integers(-40, 41, NUMEL) * 1e-4 * (1 + i)).astype(np.float32)
              for i in range(n)]
    else:
        xs = [base + (rng.standard_normal(NUMEL) * 3e-3 * (1 + i)).astype(np.float32)
              for i in range(n)]
    if storage == "bfloat16":
        b, x = _bf16_bits(base)[None], np.stack([_bf16_bits(v) for v in xs])
        decode = lambda a: (a.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
        return b, x, K.KIND_BF16, decode(b[0]), [decode(r) for r in x]
    return base[None], np.stack(xs), K.KIND_F32, base, xs


def _merge(cfg_dict: dict, storage: str, n: int = 3, seed: int = 0):
    models = [{"path": f"/m{i}", "name": f"m{i}", "weight": (1.0, 0.6, 1.3)[i]} for i in range(n)]
    cfg = load_merge_config({"base": "/base", "models": models, **cfg_dict})
    base, xs, kind, base_f, xs_f = _inputs(storage, n, seed)
    out = np.empty((1, NUMEL), np.float32)
    task = M.TensorTask("model.layers.0.mlp.up_proj.weight", cfg, base, xs, kind, out,
                        K.KIND_F32, scratch=M.Scratch())
    stats = M.REGISTRY[cfg.method](task)
    ref = R.ties(base_f, xs_f, [m["weight"] for m in models], cfg.densities(), lam=cfg.lambda_,
                 vote=cfg.vote, slack=cfg.slack if cfg.method == "ties_sv" else 0.0,
                 protect=cfg.names.index(cfg.protect) if cfg.method == "ties_sv" else None)
    return out[0], stats, ref


def _check(out, stats, ref):
    got = [tuple(int(v) for v in row) for row in stats]
    want = [(s.kept, s.discarded, s.reserved) for s in ref.stats]
    assert got == want
    np.testing.assert_allclose(out.astype(np.float64), ref.theta, rtol=1e-6, atol=2e-7)


CASES = {
    "ties": {"method": "ties", "density": 0.2},
    "ties_unweighted": {"method": "ties", "density": 0.3, "vote": "unweighted", "lambda": 0.9},
    "ties_low_density": {"method": "ties", "density": 0.05},
    "ties_sv": {"method": "ties_sv", "density": 0.2, "slack": 0.4, "protect": "m1"},
    "ties_sv_unweighted": {"method": "ties_sv", "density": 0.3, "slack": 0.3, "protect": "m0",
                           "vote": "unweighted"},
}


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_windowed_paths_equal_reference(case, storage):
    _check(*_merge(CASES[case], storage))


@pytest.mark.parametrize("case", ["ties", "ties_sv"])
@pytest.mark.parametrize("how", ["window_misses", "buffers_overflow"])
def test_fallback_to_radix_passes_is_exact(case, how, monkeypatch):
    calls = []

    def bad_window(sample_keys, k, numel):
        calls.append(k)
        if how == "window_misses":
            top = int(sample_keys.max())
            return top, top, 0.0  # holds the largest key only: the threshold lies below it
        return 0, 0xFFFFFFFF, 0.0  # every key inside, buffers sized for none

    monkeypatch.setattr(ties, "sample_window", bad_window)
    _check(*_merge(CASES[case], "bfloat16"))
    assert calls, "the windowed path was not taken"


def test_sample_avoids_columns_aligned_with_the_stride():
    """A tensor whose every 64th column holds much larger deltas: a plain stride-64 sample would see
    only those columns and place the window far too high (then the radix fallback runs); the
    jittered sample sees the whole tensor and its window holds the true threshold."""
    rng = np.random.default_rng(3)
    base = np.zeros((1, NUMEL), np.float32)
    tau = rng.standard_normal(NUMEL).astype(np.float32) * 1e-3
    tau[::64] *= 100
    xs = (base[0] + tau)[None]
    count = min(M.SAMPLE, max(NUMEL // 64, 4096))
    keys = K.sample_keys(base, xs, K.KIND_F32, NUMEL // count, count, K.KIND_F32)
    k = NUMEL // 5
    lo, hi, _ = ties.sample_window(keys[0], k, NUMEL)
    threshold = np.sort(np.abs(tau).view(np.uint32))[NUMEL - k]
    assert lo <= threshold <= hi


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_ties_sv_candidate_buffer_overflow_falls_back_exactly(storage, monkeypatch):
    """TIES-SV collects its candidates in buffers sized for a share of the protected model's kept
    entries; when they overflow, the radix passes give the same result."""
    monkeypatch.setattr(ties, "SV_SHARE", 0.0)
    monkeypatch.setattr(ties, "SV_SLACK", 0)
    _check(*_merge(CASES["ties_sv"], storage))
