"""Discard statistics: per tensor, per model counts rolled up by layer and by module."""

from __future__ import annotations

import re

import numpy as np

_LAYER = re.compile(r"\.layers\.(\d+)\.")
_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_of(name: str) -> str:
    match = _LAYER.search(name)
    return match.group(1) if match else "other"


def module_of(name: str) -> str:
    parts = name.split(".")
    for module in _MODULES:
        if module in parts:
            return module
    if "embed_tokens" in parts:
        return "embed"
    if "lm_head" in parts:
        return "lm_head"
    if any("norm" in p for p in parts):
        return "norm"
    return parts[-2] if len(parts) > 1 else parts[0]


def _entries(counts: np.ndarray) -> list[dict]:
    out = []
    for kept, discarded, reserved in counts.tolist():
        out.append({
            "kept": kept,
            "discarded": discarded,
            "discarded_fraction": discarded / kept if kept else 0.0,
            "reserved": reserved,
        })
    return out


def summarize(method: str, names: list[str], per_tensor: dict[str, np.ndarray],
              facts: dict[str, dict] | None = None) -> dict:
    """The stats JSON: totals, tensors, by_layer and by_module, each a list per model (config order).

    facts: what a method recorded per tensor, each key becoming a top-level {tensor: value} map:
    `slack` (slack: auto, the share of candidates reserved) and `source` (layer_swap, each model's
    weight), which is also given per layer as `source_by_layer` (embed, 0..L-1, norm, lm_head)."""
    n = len(names)
    totals = np.zeros((n, 3), np.int64)
    by_layer: dict[str, np.ndarray] = {}
    by_module: dict[str, np.ndarray] = {}
    for name, counts in per_tensor.items():
        totals += counts
        by_layer.setdefault(layer_of(name), np.zeros((n, 3), np.int64))
        by_layer[layer_of(name)] += counts
        by_module.setdefault(module_of(name), np.zeros((n, 3), np.int64))
        by_module[module_of(name)] += counts

    def layer_order(key: str):
        return (1, 0) if key == "other" else (0, int(key))

    out = {
        "method": method,
        "models": names,
        "totals": _entries(totals),
        "tensors": {name: _entries(c) for name, c in per_tensor.items()},
        "by_layer": {k: _entries(by_layer[k]) for k in sorted(by_layer, key=layer_order)},
        "by_module": {k: _entries(by_module[k]) for k in sorted(by_module)},
    }
    for name, recorded in (facts or {}).items():
        for key, value in recorded.items():
            out.setdefault(key, {})[name] = value
    if "source" in out:
        # a layer's tensors share their source; outside the layers, by module
        where = {name: layer_of(name) if layer_of(name) != "other" else module_of(name)
                 for name in out["source"]}

        def order(key: str):
            return ((0, 0) if key == "embed" else (1, int(key)) if key.isdigit()
                    else (2, 0 if key == "norm" else 1))

        out["source_by_layer"] = {where[name]: out["source"][name]
                                  for name in sorted(out["source"], key=lambda n: order(where[n]))}
    return out
