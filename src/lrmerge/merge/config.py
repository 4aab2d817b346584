"""Merge configs: the native format, and mergekit's YAML (recognised by its `merge_method` key).

Both are turned into one `MergeConfig`; every check happens here, before any tensor is read, and each
error names the file and key at fault.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MergeError

METHODS = ("average", "task_arithmetic", "ties", "ties_sv", "dare_ties", "dare_linear",
           "chat_vector", "layer_swap")
NATIVE_KEYS = {"method", "base", "models", "weight", "density", "lambda", "slack", "protect",
               "target_discarded", "trim_scope", "vote", "seed", "dtype", "out_dtype", "ratio",
               "skip_embed", "task_model", "bottom", "top", "transition", "embed_from",
               "head_from"}
# Methods of ours that a mergekit YAML cannot name, and what to write instead.
NOT_IN_MERGEKIT = {
    "ties_sv": "TIES-SV (slack) has no mergekit equivalent",
    "layer_swap": "layer swapping has no mergekit equivalent (its slices cannot blend transition "
                  "layers or pick embeddings and head from another model)",
    "chat_vector": "a chat vector is mergekit's task_arithmetic with weights 1 (CT) and r "
                   "(SFT); write that, or a native config",
}
# Methods that read no base model, and methods whose per-model weights are their own (chat_vector:
# 1 and ratio; layer_swap: per layer), so that a config gives none.
NO_BASE = ("average", "layer_swap")
OWN_WEIGHTS = ("chat_vector", "layer_swap")
MODEL_KEYS = {"path", "weight", "name", "density"}
OUT_DTYPES = ("float32", "bfloat16", "float16")
# mergekit method -> (our method, its default for `normalize`)
MERGEKIT_METHODS = {
    "linear": ("average", True),
    "task_arithmetic": ("task_arithmetic", False),
    "ties": ("ties", True),
    "dare_ties": ("dare_ties", False),
    "dare_linear": ("dare_linear", False),
}
MERGEKIT_KEYS = {"merge_method", "models", "base_model", "parameters", "dtype", "out_dtype"}
MERGEKIT_PARAMS = {"weight", "density", "lambda", "normalize", "int8_mask", "rescale"}
MERGEKIT_UNSUPPORTED = {
    "slices": "slices (layer ranges) are not supported; merge whole models",
    "tokenizer_source": "tokenizer merging is not supported; the base's tokenizer is copied",
    "tokenizer": "tokenizer merging is not supported; the base's tokenizer is copied",
    "chat_template": "chat templates are not supported; the base's tokenizer files are copied",
    "modules": "module-wise configs are not supported",
}


@dataclass
class ModelSpec:
    path: Path
    name: str
    weight: float = 1.0
    density: float | None = None


@dataclass
class MergeConfig:
    method: str
    models: list[ModelSpec]
    base: Path | None = None
    base_name: str = "base"
    density: float | None = None
    lambda_: float = 1.0
    slack: float = 0.0
    slack_auto: bool = False  # slack: auto, reserving down to target_discarded per tensor
    target_discarded: float | str | None = None  # a fraction, or a merge_stats.json path
    protect: str | None = None
    trim_scope: str = "tensor"
    vote: str = "weighted"
    seed: int = 0
    dtype: str = "float32"
    out_dtype: str | None = None  # None: each tensor keeps the base's dtype
    normalize: bool = True
    ratio: float = 1.0  # chat_vector: r
    skip_embed: bool = False  # chat_vector: embeddings and LM head stay the CT model's
    task_model: str | None = None  # layer_swap: the model whose middle layers are kept
    bottom: int = 0  # layer_swap: layers taken from the language model at the bottom ...
    top: int = 0  # ... and at the top
    transition: int = 0  # layer_swap: blended layers at each boundary
    embed_from: str | None = None  # layer_swap: the model the embeddings come from
    head_from: str | None = None  # layer_swap: the model the final norm and LM head come from
    source: str = "native"  # or "mergekit"
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def densities(self) -> list[float]:
        return [m.density if m.density is not None else self.density for m in self.models]

    @property
    def language_model(self) -> str | None:
        """layer_swap: the model that is not the task model."""
        others = [n for n in self.names if n != self.task_model]
        return others[0] if self.method == "layer_swap" and len(others) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        """The effective parameters, as recorded in the model card and stats."""
        out: dict[str, Any] = {"method": self.method}
        if self.base is not None:
            out["base"] = str(self.base)
        weighted = self.method not in OWN_WEIGHTS
        out["models"] = [
            {"name": m.name, "path": str(m.path)}
            | ({"weight": m.weight} if weighted else {})
            | ({"density": m.density} if m.density is not None else {})
            for m in self.models
        ]
        for key in ("density", "slack", "protect", "trim_scope", "vote", "seed", "ratio",
                    "skip_embed", "task_model", "bottom", "top", "transition", "embed_from",
                    "head_from"):
            if _uses(self.method, key):
                out[key] = getattr(self, key)
        if self.slack_auto:
            out["slack"] = "auto"
            out["target_discarded"] = self.target_discarded
        if self.method != "layer_swap":
            out["lambda"] = self.lambda_
            out["normalize"] = self.normalize
        out["dtype"] = self.dtype
        out["out_dtype"] = self.out_dtype
        return out


def _uses(method: str, key: str) -> bool:
    return {
        "density": method in ("ties", "ties_sv", "dare_ties", "dare_linear"),
        "slack": method == "ties_sv",
        "protect": method == "ties_sv",
        "trim_scope": method in ("ties", "ties_sv"),
        "vote": method in ("ties", "ties_sv", "dare_ties"),
        "seed": method in ("dare_ties", "dare_linear"),
        "ratio": method == "chat_vector",
        "skip_embed": method == "chat_vector",
        "task_model": method == "layer_swap",
        "bottom": method == "layer_swap",
        "top": method == "layer_swap",
        "transition": method == "layer_swap",
        "embed_from": method == "layer_swap",
        "head_from": method == "layer_swap",
    }[key]


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, list):
            raise MergeError(f"{where}: list-valued (gradient) parameters are not supported")
        if isinstance(value, dict):
            raise MergeError(f"{where}: conditional (filter) parameters are not supported")
        raise MergeError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise MergeError(f"{where}: must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise MergeError(f"{where}: must lie in [{lo}, {hi}], got {value}")
    return value


def _resolve(path: Any, where: str, root: Path) -> Path:
    if not isinstance(path, str) or not path:
        raise MergeError(f"{where}: expected a model folder path, got {path!r}")
    if "+" in path:
        raise MergeError(f"{where}: LoRA adapters ('model+lora') are not supported: {path}")
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    local = root / p
    # "org/name" that is no folder here is a Hugging Face hub id: kept as it is (see engine._locate)
    return p if is_hub_id(path) and not local.exists() else local


def is_hub_id(text: str) -> bool:
    return (text.count("/") == 1 and not text.startswith((".", "/", "~"))
            and all(part and part != ".." for part in text.split("/")))


def _load_yaml(source: str | os.PathLike | dict) -> tuple[dict, str, Path]:
    if isinstance(source, dict):
        return source, "<config>", Path.cwd()
    path = Path(source)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise MergeError(f"{path}: config file not found") from e
    except yaml.YAMLError as e:
        raise MergeError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise MergeError(f"{path}: expected a mapping at the top level")
    return data, str(path), path.resolve().parent


def load_merge_config(source: str | os.PathLike | dict) -> MergeConfig:
    """Parse and validate a native or mergekit merge config (a path or an already-loaded dict)."""
    data, label, root = _load_yaml(source)
    if "merge_method" in data:
        config = _from_mergekit(data, label)
    else:
        config = _from_native(data, label, root)
    _validate(config, label)
    return config


def _from_native(data: dict, label: str, root: Path) -> MergeConfig:
    unknown = sorted(set(data) - NATIVE_KEYS)
    if unknown:
        raise MergeError(f"{label}: unknown key '{unknown[0]}' (known: {', '.join(sorted(NATIVE_KEYS))})")
    method = data.get("method")
    if method not in METHODS:
        raise MergeError(f"{label}: key 'method': unknown method {method!r} (known: {', '.join(METHODS)})")
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MergeError(f"{label}: key 'models': expected a non-empty list of {{path, weight}}")
    default_weight = _number(data.get("weight", 1.0), f"{label}: key 'weight'")
    models = []
    for i, entry in enumerate(models_raw):
        where = f"{label}: models[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise MergeError(f"{where}: expected a mapping with 'path'")
        bad = sorted(set(entry) - MODEL_KEYS)
        if bad:
            raise MergeError(f"{where}: unknown key '{bad[0]}' (known: {', '.join(sorted(MODEL_KEYS))})")
        path = _resolve(entry.get("path"), f"{where}.path", root)
        name = entry.get("name") or path.name
        models.append(ModelSpec(
            path=path,
            name=str(name),
            weight=_number(entry.get("weight", default_weight), f"{where}.weight"),
            density=(_number(entry["density"], f"{where}.density", 0, 1)
                     if entry.get("density") is not None else None),
        ))
    base = _resolve(data["base"], f"{label}: key 'base'", root) if data.get("base") else None
    config = MergeConfig(method=method, models=models, base=base)
    for key in sorted(set(data) & METHOD_ONLY_KEYS):
        if not _uses(method, key):
            owner = ", ".join(m for m in METHODS if _uses(m, key))
            raise MergeError(f"{label}: key '{key}' is for {owner}, not {method}")
    if "density" in data and data["density"] is not None:
        config.density = _number(data["density"], f"{label}: key 'density'", 0, 1)
    config.lambda_ = _number(data.get("lambda", 1.0), f"{label}: key 'lambda'")
    if data.get("slack") == "auto":
        config.slack_auto = True
        config.target_discarded = _target_discarded(data.get("target_discarded"), label, root)
    else:
        config.slack = _number(data.get("slack", 0.0), f"{label}: key 'slack'", 0, 1)
        if "target_discarded" in data:
            raise MergeError(f"{label}: key 'target_discarded' goes with slack: auto")
    if method == "chat_vector":
        _chat_vector(config, data, label)
    elif method == "layer_swap":
        _layer_swap(config, data, label)
    config.protect = data.get("protect")
    config.trim_scope = data.get("trim_scope", "tensor")
    config.vote = data.get("vote", "weighted")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MergeError(f"{label}: key 'seed': expected a non-negative integer, got {seed!r}")
    config.seed = seed
    config.dtype = data.get("dtype", "float32")
    config.out_dtype = data.get("out_dtype")
    # average and ties divide by the summed weights by definition; task arithmetic and DARE do not
    # (layer_swap's blends are convex: their weights sum to one)
    config.normalize = method in ("average", "ties", "ties_sv", "layer_swap")
    return config


METHOD_ONLY_KEYS = {"ratio", "skip_embed", "task_model", "bottom", "top", "transition",
                    "embed_from", "head_from"}


def _target_discarded(value: Any, label: str, root: Path) -> float | str:
    """slack: auto's target: a fraction, or a merge_stats.json whose per-tensor discarded
    fractions of the protected model are the targets (read when the merge opens its inputs)."""
    where = f"{label}: key 'target_discarded'"
    if value is None:
        raise MergeError(f"{where} is required with slack: auto (a fraction in [0, 1], or the "
                         "path of a merge_stats.json whose per-tensor fractions are the targets)")
    if value == "first_budget":
        raise MergeError(f"{where}: first_budget is resolved by the workflow (it names the merge "
                         "at the language's smallest budget); in a merge config give a fraction "
                         "or that merge's merge_stats.json")
    if isinstance(value, str):
        path = Path(os.path.expanduser(value))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise MergeError(f"{where}: stats file {path} does not exist")
        return str(path)
    return _number(value, where, 0, 1)


def _chat_vector(config: MergeConfig, data: dict, label: str) -> None:
    """theta_CT + r (theta_SFT - theta_base): task arithmetic with weights (1, r), lambda 1."""
    if len(config.models) != 2:
        raise MergeError(f"{label}: key 'models': chat_vector takes two models, the CT model "
                         f"first, then the chat (SFT) model; got {len(config.models)}")
    for key in ("weight", "lambda", "density"):
        if key in data:
            raise MergeError(f"{label}: key '{key}' has no meaning for chat_vector (give 'ratio')")
    for i, entry in enumerate(data["models"]):
        if isinstance(entry, dict) and ("weight" in entry or "density" in entry):
            raise MergeError(f"{label}: models[{i}]: chat_vector takes no per-model weight or "
                             "density (give 'ratio')")
    config.ratio = _number(data.get("ratio", 1.0), f"{label}: key 'ratio'")
    skip = data.get("skip_embed", False)
    if not isinstance(skip, bool):
        raise MergeError(f"{label}: key 'skip_embed': expected true or false, got {skip!r}")
    config.skip_embed = skip
    config.models[0].weight, config.models[1].weight = 1.0, config.ratio


def _layer_swap(config: MergeConfig, data: dict, label: str) -> None:
    names = config.names
    if len(names) != 2:
        raise MergeError(f"{label}: key 'models': layer_swap takes two models (the language "
                         f"model and the task model); got {len(names)}")
    for key in ("base", "weight", "lambda", "density", "slack", "protect"):
        if key in data:
            raise MergeError(f"{label}: key '{key}' has no meaning for layer_swap")
    task = data.get("task_model")
    if task not in names:
        raise MergeError(f"{label}: key 'task_model': expected the name of the model whose middle "
                         f"layers are kept, one of {', '.join(names)}; got {task!r}")
    config.task_model = task
    language = config.language_model
    for key in ("bottom", "top", "transition"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MergeError(f"{label}: key '{key}': expected a layer count >= 0, got {value!r}")
        setattr(config, key, value)
    if config.bottom == 0 and config.top == 0:
        raise MergeError(f"{label}: keys 'bottom' and 'top' are both 0: nothing is swapped")
    for key in ("embed_from", "head_from"):
        value = data.get(key, language)
        if value not in names:
            raise MergeError(f"{label}: key '{key}': {value!r} names no model "
                             f"(models: {', '.join(names)})")
        setattr(config, key, value)


def _from_mergekit(data: dict, label: str) -> MergeConfig:
    for key, why in MERGEKIT_UNSUPPORTED.items():
        if key in data:
            raise MergeError(f"{label}: mergekit key '{key}': {why}")
    unknown = sorted(set(data) - MERGEKIT_KEYS)
    if unknown:
        raise MergeError(f"{label}: unsupported mergekit key '{unknown[0]}'")
    mk_method = data["merge_method"]
    if mk_method in NOT_IN_MERGEKIT:
        raise MergeError(f"{label}: key 'merge_method': {NOT_IN_MERGEKIT[mk_method]}; write a "
                         f"native lrmerge config (method: {mk_method})")
    if mk_method not in MERGEKIT_METHODS:
        raise MergeError(
            f"{label}: key 'merge_method': {mk_method!r} is not supported "
            f"(supported: {', '.join(MERGEKIT_METHODS)})"
        )
    method, default_normalize = MERGEKIT_METHODS[mk_method]
    root = Path.cwd()  # mergekit resolves model paths against the working directory
    top = data.get("parameters") or {}
    if not isinstance(top, dict):
        raise MergeError(f"{label}: key 'parameters': expected a mapping")
    bad = sorted(set(top) - MERGEKIT_PARAMS)
    if bad:
        raise MergeError(f"{label}: parameters.{bad[0]}: unsupported mergekit parameter")

    def param(params: dict, key: str, where: str, default: Any = None) -> Any:
        if key in params:
            return _number(params[key], f"{where}.{key}")
        return default

    base = _resolve(data["base_model"], f"{label}: key 'base_model'", root) \
        if data.get("base_model") else None
    models = []
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MergeError(f"{label}: key 'models': expected a non-empty list")
    for i, entry in enumerate(models_raw):
        where = f"{label}: models[{i}]"
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeError(f"{where}: expected a mapping with 'model'")
        path = _resolve(entry["model"], f"{where}.model", root)
        if base is not None and path == base and method != "average":
            continue  # mergekit lists the base among the models; it is not a task vector
        params = entry.get("parameters") or {}
        bad = sorted(set(params) - MERGEKIT_PARAMS)
        if bad:
            raise MergeError(f"{where}.parameters.{bad[0]}: unsupported mergekit parameter")
        density = param(params, "density", f"{where}.parameters")
        models.append(ModelSpec(
            path=path,
            name=path.name,
            weight=param(params, "weight", f"{where}.parameters", param(top, "weight", f"{label}: parameters", 1.0)),
            density=None if density is None else _number(density, f"{where}.parameters.density", 0, 1),
        ))
    if method == "average":
        base = None  # mergekit's linear ignores base_model
    config = MergeConfig(method=method, models=models, base=base, source="mergekit")
    if "density" in top:
        config.density = _number(top["density"], f"{label}: parameters.density", 0, 1)
    elif method in ("ties", "dare_ties", "dare_linear"):
        config.density = 1.0  # mergekit's default: no trimming
    config.lambda_ = param(top, "lambda", f"{label}: parameters", 1.0)
    normalize = top.get("normalize", default_normalize)
    if not isinstance(normalize, bool):
        raise MergeError(f"{label}: parameters.normalize: expected true or false")
    config.normalize = normalize
    dtype = data.get("dtype")
    if method != "average" and dtype is not None:
        config.dtype = dtype  # mergekit rounds every step to it; its linear always uses float32
    config.out_dtype = data.get("out_dtype") or dtype
    return config


def _validate(config: MergeConfig, label: str) -> None:
    if config.method not in NO_BASE and config.base is None:
        raise MergeError(f"{label}: key 'base': method {config.method} needs a base model")
    names = config.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MergeError(f"{label}: two models are named '{dupes[0]}': give them distinct 'name' keys")
    if config.base is not None:
        config.base_name = "base" if "base" not in names else "base_model"
    if config.method in ("ties", "ties_sv", "dare_ties", "dare_linear"):
        missing = [m.name for m in config.models if m.density is None] if config.density is None else []
        if missing:
            raise MergeError(f"{label}: key 'density' is required for {config.method} "
                             f"(model '{missing[0]}' has none)")
    if config.trim_scope not in ("tensor", "model"):
        raise MergeError(f"{label}: key 'trim_scope': expected tensor or model, got {config.trim_scope!r}")
    if config.vote not in ("weighted", "unweighted"):
        raise MergeError(f"{label}: key 'vote': expected weighted or unweighted, got {config.vote!r}")
    if config.dtype not in OUT_DTYPES:
        raise MergeError(f"{label}: key 'dtype': expected one of {', '.join(OUT_DTYPES)} "
                         f"(the arithmetic dtype), got {config.dtype!r}")
    if config.out_dtype is not None and config.out_dtype not in OUT_DTYPES:
        raise MergeError(f"{label}: key 'out_dtype': expected one of {', '.join(OUT_DTYPES)}, "
                         f"got {config.out_dtype!r}")
    if config.slack_auto and config.method != "ties_sv":
        raise MergeError(f"{label}: key 'slack': auto is for ties_sv, not {config.method}")
    if config.method == "ties_sv":
        if config.protect is None:
            raise MergeError(f"{label}: key 'protect' is required for ties_sv (the model whose "
                             "discarded entries the slack reserves)")
        if config.protect not in names:
            raise MergeError(f"{label}: key 'protect': '{config.protect}' names no model "
                             f"(models: {', '.join(names)})")
    elif config.method in ("average", "task_arithmetic") and config.density is not None:
        raise MergeError(f"{label}: key 'density' has no meaning for {config.method}")
