"""What every method shares: the registry, the per-tensor task, rounding to the arithmetic dtype."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import kernels as K
from ..errors import MergeError
from ..merge_config import MergeConfig
from ..topk import Selection

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


def _decode(a: np.ndarray, kind: int) -> np.ndarray:
    if kind == K.KIND_F32:
        return a
    if kind == K.KIND_BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.view(np.float16).astype(np.float32)


def _all_kept(task: TensorTask) -> np.ndarray:
    n, numel = task.xs.shape
    stats = np.zeros((n, 3), np.int64)
    stats[:, 0] = numel
    return stats
