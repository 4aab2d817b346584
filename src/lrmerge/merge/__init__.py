"""The merge engine: `lrmerge merge`.

Layers, each with one job: `config` (native and mergekit YAML -> MergeConfig), `checkpoint` (lazy
safetensors reads, sharded writes), `kernels` (fused per-element math, numba), `select` (radix
top-k), `methods` (registered per-tensor methods), `stats` (discard statistics), `engine` (the
driver: validation, streaming, atomic output), `cli` (argument parsing).
"""

from .config import MergeConfig, ModelSpec, load_merge_config
from .engine import run_merge
from .errors import MergeError

__all__ = ["MergeConfig", "MergeError", "ModelSpec", "load_merge_config", "run_merge"]
