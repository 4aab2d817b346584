"""The PyTorch backend (`--device cuda`) computes exactly what the CPU kernels compute.

Run here on torch's CPU device: the arithmetic is the same sequence of IEEE float32 operations, so
the results must agree bit for bit, stats included.
"""

import numpy as np
import pytest

from lrmerge.merge import kernels as K
from lrmerge.merge.config import load_merge_config
from lrmerge.merge.errors import MergeError
from lrmerge.merge.methods import REGISTRY, Scratch, TensorTask

torch_backend = pytest.importorskip("lrmerge.merge.torch_backend")


def _bf16(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _inputs(kind: int, numel: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(numel).astype(np.float32) * 0.02
    xs = [base + s * rng.standard_normal(numel).astype(np.float32) for s in (0.002, 0.003, 0.001)[:n]]
    if kind == K.KIND_BF16:
        return _bf16(base)[None], np.stack([_bf16(x) for x in xs])
    if kind == K.KIND_F16:
        return (base.astype(np.float16).view(np.int16)[None],
                np.stack([x.astype(np.float16).view(np.int16) for x in xs]))
    return base[None], np.stack(xs)


CASES = [
    {"method": "average"},
    {"method": "task_arithmetic", "lambda": 0.8},
    {"method": "ties", "density": 0.3},
    {"method": "ties", "density": 0.2, "vote": "unweighted", "lambda": 1.1},
    {"method": "ties_sv", "density": 0.3, "slack": 0.4, "protect": "m1"},
    {"method": "ties_sv", "density": 0.3, "slack": 1.0, "protect": "m0"},
    {"method": "dare_ties", "density": 0.5, "seed": 7},
    {"method": "dare_linear", "density": 0.6, "seed": 1},
    {"method": "ties", "density": 0.3, "dtype": "bfloat16"},
]


# every case on float32 and bfloat16 storage; float16 storage for a few (each storage dtype and
# arithmetic dtype is a kernel compilation of its own, seconds each)
MATRIX = [(kind, case) for kind in (K.KIND_F32, K.KIND_BF16) for case in CASES] + [
    (K.KIND_F16, case) for case in CASES if case["method"] in ("average", "ties")
]


@pytest.mark.parametrize("numel", [1000, 300_000])  # in-memory and windowed selections
@pytest.mark.parametrize("kind, case", MATRIX,
                         ids=lambda v: "-".join(f"{x}" for x in v.values()) if isinstance(v, dict)
                         else f"kind{v}")
def test_torch_backend_equals_kernels(kind, numel, case):
    n = 3 if case["method"] != "ties_sv" else 2
    models = [{"path": f"/m{i}", "name": f"m{i}", "weight": (0.7, 1.3, 1.0)[i]} for i in range(n)]
    cfg = load_merge_config({"base": "/base", "models": models, **case})
    base, xs = _inputs(kind, numel, n, seed=numel)
    outs, stats = [], []
    for run in ("kernels", "torch"):
        out = np.empty((1, numel), base.dtype)
        task = TensorTask("model.layers.0.mlp.up_proj.weight", cfg, base, xs, kind, out, kind,
                          scratch=Scratch())
        if run == "kernels":
            stats.append(REGISTRY[cfg.method](task))
        else:
            stats.append(torch_backend.merge_tensor(task, "cpu"))
        outs.append(out)
    assert np.array_equal(outs[0].view(np.uint8), outs[1].view(np.uint8))
    assert np.array_equal(stats[0], stats[1])


def test_cuda_request_without_a_device_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MergeError, match="no CUDA device"):
        torch_backend.check_device("cuda")
