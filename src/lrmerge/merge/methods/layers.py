"""Chat vectors and layer swapping: copies and convex blends of whole tensors."""

from __future__ import annotations

import re

import numpy as np

from .. import kernels as K
from ..errors import MergeError
from ..merge_config import MergeConfig
from ..stats import module_of
from .base import PLANNERS, TensorTask, register, round_weight
from .linear import task_arithmetic


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
