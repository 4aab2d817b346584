"""The merge engine: `lrmerge merge`.

Layers, each with one job: `table` (every engine method's facts, one row each), `merge_config`
(native and mergekit YAML -> MergeConfig), `checkpoint` (lazy safetensors reads, sharded writes),
`kernels` (fused per-element math, numba), `topk` (radix top-k selection), `methods` (registered
per-tensor methods), `stats` (discard statistics), `engine` (the driver: validation, streaming,
atomic output), `cli` (argument parsing).
"""

from .engine import run_merge
from .errors import MergeError
from .merge_config import MergeConfig, ModelSpec, load_merge_config

__all__ = ["MergeConfig", "MergeError", "ModelSpec", "load_merge_config", "run_merge"]
