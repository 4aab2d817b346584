"""Merge configs: the native format, and mergekit's YAML (recognised by its `merge_method` key).

Both are turned into one `MergeConfig`; every check happens here, before any tensor is read, and each
error names the file and key at fault.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import MergeError
from .table import (
    COMMON_KEYS,
    ENGINE_METHODS,
    MERGEKIT_NAMES,
    MERGEKIT_PARAM_KEYS,
    METHOD_TABLE,
    PARAM_KEYS,
    methods_with,
)

# The method facts (parameters, base, weights, mergekit names) come from the method table.
METHODS = ENGINE_METHODS
NATIVE_KEYS = set(COMMON_KEYS) | set(PARAM_KEYS)
MODEL_KEYS = {"path", "weight", "name", "density"}
OUT_DTYPES = ("float32", "bfloat16", "float16")
MERGEKIT_KEYS = {"merge_method", "models", "base_model", "parameters", "dtype", "out_dtype"}
MERGEKIT_PARAMS = {"weight", "density", "lambda", "normalize", "int8_mask", "rescale",
                   *MERGEKIT_PARAM_KEYS}
# mergekit rescales kept entries by 1/density where it samples them (DARE), and never elsewhere; a
# config that asks otherwise is refused rather than merged differently.
MERGEKIT_RESCALES = ("dare_ties", "dare_linear")
MERGEKIT_UNSUPPORTED = {
    "slices": "slices (layer ranges) are not supported; merge whole models",
    "tokenizer_source": "drop the key: models whose vocabularies differ are aligned by token "
                        "text and the output carries the extended (or union) tokenizer "
                        "(docs/merge-engine.md, merges across vocabularies)",
    "tokenizer": "drop the key: models whose vocabularies differ are aligned by token text and "
                 "the output carries the extended (or union) tokenizer (docs/merge-engine.md, "
                 "merges across vocabularies)",
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
    # parameters of methods without a field of their own above (a new method's): key -> value
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Any:
        """A parameter's value: its field, else `extra`, else the method table's default."""
        if key == "lambda":
            return self.lambda_
        if key in _FIELDS:
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        return self.spec.param(key).default

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

    @property
    def spec(self):
        """The method's row of the method table."""
        return METHOD_TABLE[self.method]

    def to_dict(self) -> dict[str, Any]:
        """The effective parameters, as recorded in the model card and stats."""
        spec = self.spec
        out: dict[str, Any] = {"method": self.method}
        if self.base is not None:
            out["base"] = str(self.base)
        out["models"] = [
            {"name": m.name, "path": str(m.path)}
            | ({} if spec.fixed_pair else {"weight": m.weight})
            | ({"density": m.density} if m.density is not None else {})
            for m in self.models
        ]
        for key in spec.keys:
            if key in ("lambda", "target_discarded"):
                continue  # lambda: below, with normalize; target_discarded: with slack: auto
            if key == "slack" and self.slack_auto:
                out["slack"] = "auto"
                out["target_discarded"] = self.target_discarded
            else:
                out[key] = self.value(key)
        if self.method != "layer_swap":
            out["lambda"] = self.lambda_
            out["normalize"] = self.normalize
        out["dtype"] = self.dtype
        out["out_dtype"] = self.out_dtype
        return out


_FIELDS = {f.name for f in fields(MergeConfig)} - {"extra"}


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
    spec = METHOD_TABLE[method]
    for key in data:
        if key in PARAM_KEYS and spec.param(key) is None:
            raise MergeError(f"{label}: key '{key}' has no meaning for {method} (it is for "
                             f"{', '.join(methods_with(key))})")
    for param in spec.params:
        if param.kind != "target" and (param.key in data or param.default is not None):
            _set_param(config, param, data.get(param.key, param.default),
                       f"{label}: key '{param.key}'")
    if config.slack_auto:
        config.target_discarded = _target_discarded(data.get("target_discarded"), label, root)
    elif "target_discarded" in data:
        raise MergeError(f"{label}: key 'target_discarded' goes with slack: auto")
    hook = CONFIG_HOOKS.get(method)
    if hook:
        hook(config, data, label)
    config.dtype = data.get("dtype", "float32")
    config.out_dtype = data.get("out_dtype")
    config.normalize = spec.normalizes
    return config


def _set_param(config: MergeConfig, param, value: Any, where: str) -> None:
    """Check one native parameter by its kind and set it on the config."""
    kind = param.kind
    if kind == "fraction" or (kind == "slack" and value != "auto"):
        value = _number(value, where, 0, 1)
    elif kind == "number":
        value = _number(value, where)
    elif kind in ("count", "seed"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            what = "a layer count >= 0" if kind == "count" else "a non-negative integer"
            raise MergeError(f"{where}: expected {what}, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise MergeError(f"{where}: expected true or false, got {value!r}")
    elif kind == "choice":
        if value not in param.choices:
            raise MergeError(f"{where}: expected {' or '.join(param.choices)}, got {value!r}")
    elif kind == "model":
        if not isinstance(value, str):
            raise MergeError(f"{where}: expected a model name, got {value!r}")
    if kind == "slack" and value == "auto":
        config.slack_auto = True
    elif param.key == "lambda":
        config.lambda_ = value
    elif param.key in _FIELDS:
        setattr(config, param.key, value)
    else:
        config.extra[param.key] = value


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


# Methods whose configs have a shape of their own: checked after the generic parameters.
def _chat_vector(config: MergeConfig, data: dict, label: str) -> None:
    """theta_CT + r (theta_SFT - theta_base): task arithmetic with weights (1, r), lambda 1."""
    if len(config.models) != 2:
        raise MergeError(f"{label}: key 'models': chat_vector takes two models, the CT model "
                         f"first, then the chat (SFT) model; got {len(config.models)}")
    if "weight" in data:
        raise MergeError(f"{label}: key 'weight' has no meaning for chat_vector (give 'ratio')")
    for i, entry in enumerate(data["models"]):
        if isinstance(entry, dict) and ("weight" in entry or "density" in entry):
            raise MergeError(f"{label}: models[{i}]: chat_vector takes no per-model weight or "
                             "density (give 'ratio')")
    config.models[0].weight, config.models[1].weight = 1.0, config.ratio


def _layer_swap(config: MergeConfig, data: dict, label: str) -> None:
    names = config.names
    if len(names) != 2:
        raise MergeError(f"{label}: key 'models': layer_swap takes two models (the language "
                         f"model and the task model); got {len(names)}")
    for key in ("base", "weight"):
        if key in data:
            raise MergeError(f"{label}: key '{key}' has no meaning for layer_swap")
    if config.task_model not in names:
        raise MergeError(f"{label}: key 'task_model': expected the name of the model whose middle "
                         f"layers are kept, one of {', '.join(names)}; got {config.task_model!r}")
    if config.bottom == 0 and config.top == 0:
        raise MergeError(f"{label}: keys 'bottom' and 'top' are both 0: nothing is swapped")
    for key in ("embed_from", "head_from"):
        value = data.get(key, config.language_model)
        if value not in names:
            raise MergeError(f"{label}: key '{key}': {value!r} names no model "
                             f"(models: {', '.join(names)})")
        setattr(config, key, value)


CONFIG_HOOKS = {"chat_vector": _chat_vector, "layer_swap": _layer_swap}


def _from_mergekit(data: dict, label: str) -> MergeConfig:
    method = _mergekit_method(data, label)
    top = data.get("parameters") or {}
    if not isinstance(top, dict):
        raise MergeError(f"{label}: key 'parameters': expected a mapping")
    _known_mergekit_params(top, f"{label}: parameters")
    root = Path.cwd()  # mergekit resolves model paths against the working directory
    base = _resolve(data["base_model"], f"{label}: key 'base_model'", root) \
        if data.get("base_model") else None
    models = _mergekit_models(data, label, root, base, method, top)
    if method == "average":
        base = None  # mergekit's linear ignores base_model
    config = MergeConfig(method=method, models=models, base=base, source="mergekit")
    _mergekit_parameters(config, top, label, data["merge_method"])
    dtype = data.get("dtype")
    if method != "average" and dtype is not None:
        config.dtype = dtype  # mergekit rounds every step to it; its linear always uses float32
    config.out_dtype = data.get("out_dtype") or dtype
    return config


def _mergekit_method(data: dict, label: str) -> str:
    """Our method for a mergekit YAML, or an error naming what it asks that we do not do."""
    for key, why in MERGEKIT_UNSUPPORTED.items():
        if key in data:
            raise MergeError(f"{label}: mergekit key '{key}': {why}")
    unknown = sorted(set(data) - MERGEKIT_KEYS)
    if unknown:
        raise MergeError(f"{label}: unsupported mergekit key '{unknown[0]}'")
    mk_method = data["merge_method"]
    ours = METHOD_TABLE.get(mk_method)
    if ours is not None and ours.mergekit is None:
        raise MergeError(f"{label}: key 'merge_method': {ours.mergekit_note}; write a "
                         f"native lrmerge config (method: {mk_method})")
    if mk_method not in MERGEKIT_NAMES:
        raise MergeError(f"{label}: key 'merge_method': {mk_method!r} is not supported "
                         f"(supported: {', '.join(MERGEKIT_NAMES)})")
    return MERGEKIT_NAMES[mk_method]


def _known_mergekit_params(params: dict, where: str) -> None:
    bad = sorted(set(params) - MERGEKIT_PARAMS)
    if bad:
        raise MergeError(f"{where}.{bad[0]}: unsupported mergekit parameter")


def _mergekit_number(params: dict, key: str, where: str, default: Any = None) -> Any:
    return _number(params[key], f"{where}.{key}") if key in params else default


def _mergekit_models(data: dict, label: str, root: Path, base: Path | None, method: str,
                     top: dict) -> list[ModelSpec]:
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MergeError(f"{label}: key 'models': expected a non-empty list")
    default_weight = _mergekit_number(top, "weight", f"{label}: parameters", 1.0)
    models = []
    for i, entry in enumerate(models_raw):
        where = f"{label}: models[{i}]"
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeError(f"{where}: expected a mapping with 'model'")
        path = _resolve(entry["model"], f"{where}.model", root)
        if base is not None and path == base and method != "average":
            continue  # mergekit lists the base among the models; it is not a task vector
        params = entry.get("parameters") or {}
        _known_mergekit_params(params, f"{where}.parameters")
        per_model = sorted(set(params) & set(MERGEKIT_PARAM_KEYS))
        if per_model:
            raise MergeError(f"{where}.parameters.{per_model[0]}: a per-model {per_model[0]} is "
                             "not supported; give one under the top-level parameters")
        density = _mergekit_number(params, "density", f"{where}.parameters")
        models.append(ModelSpec(
            path=path,
            name=path.name,
            weight=_mergekit_number(params, "weight", f"{where}.parameters", default_weight),
            density=None if density is None else _number(density, f"{where}.parameters.density", 0, 1),
        ))
    return models


def _mergekit_parameters(config: MergeConfig, top: dict, label: str, mk_method: str) -> None:
    """The top-level parameters, with mergekit's defaults where absent."""
    method = config.method
    if "density" in top:
        config.density = _number(top["density"], f"{label}: parameters.density", 0, 1)
    elif METHOD_TABLE[method].trims:
        config.density = 1.0  # mergekit's default: no trimming
    config.lambda_ = _mergekit_number(top, "lambda", f"{label}: parameters", 1.0)
    for key in sorted(set(top) & set(MERGEKIT_PARAM_KEYS)):
        param = METHOD_TABLE[method].param(key)
        if param is None or not param.mergekit:
            raise MergeError(f"{label}: parameters.{key} has no meaning for {mk_method}")
        _set_param(config, param, top[key], f"{label}: parameters.{key}")
    rescale = top.get("rescale", method in MERGEKIT_RESCALES)
    if rescale != (method in MERGEKIT_RESCALES):
        raise MergeError(f"{label}: parameters.rescale: {rescale!r} is not supported for "
                         f"{mk_method} (lrmerge {'always' if method in MERGEKIT_RESCALES else 'never'}"
                         " rescales it)")
    normalize = top.get("normalize", METHOD_TABLE[method].normalizes)
    if not isinstance(normalize, bool):
        raise MergeError(f"{label}: parameters.normalize: expected true or false")
    config.normalize = normalize


def _validate(config: MergeConfig, label: str) -> None:
    spec = config.spec
    if spec.reads_base and config.base is None:
        raise MergeError(f"{label}: key 'base': method {config.method} needs a base model")
    names = config.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MergeError(f"{label}: two models are named '{dupes[0]}': give them distinct 'name' keys")
    if config.base is not None:
        config.base_name = "base" if "base" not in names else "base_model"
    if spec.trims:
        missing = [m.name for m in config.models if m.density is None] if config.density is None else []
        if missing:
            raise MergeError(f"{label}: key 'density' is required for {config.method} "
                             f"(model '{missing[0]}' has none)")
    elif config.density is not None:
        raise MergeError(f"{label}: key 'density' has no meaning for {config.method}")
    for key, value in (("dtype", config.dtype), ("out_dtype", config.out_dtype)):
        if value is not None and value not in OUT_DTYPES:
            what = " (the arithmetic dtype)" if key == "dtype" else ""
            raise MergeError(f"{label}: key '{key}': expected one of {', '.join(OUT_DTYPES)}"
                             f"{what}, got {value!r}")
    for param in spec.params:
        if param.kind != "model":
            continue
        value = getattr(config, param.key)
        if value is None and param.required:
            raise MergeError(f"{label}: key '{param.key}' is required for {config.method} "
                             f"({param.help})")
        if value is not None and value not in names:
            raise MergeError(f"{label}: key '{param.key}': '{value}' names no model "
                             f"(models: {', '.join(names)})")
