"""`lrmerge merge` and `lrmerge merge-config`: argument parsing over the merge library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from lrmerge import fsutil

from .errors import MergeError
from .merge_config import is_hub_id, load_merge_config
from .table import ENGINE_METHODS, METHOD_TABLE, PARAM_KEYS, methods_with


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge models from a native or mergekit YAML config")
    p.add_argument("config", help="merge config (native lrmerge YAML, or a mergekit YAML)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--stats", help="write discard statistics (JSON) here")
    p.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--shard-size", default="5GB", help="largest safetensors shard (e.g. 2GB)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_merge)

    c = subparsers.add_parser("merge-config", help="write a native merge config")
    c.add_argument("--method", required=True, choices=ENGINE_METHODS)
    c.add_argument("--base", help="base model folder")
    c.add_argument("--model", action="append", required=True, metavar="NAME=DIR[@WEIGHT]",
                   help="a model to merge (repeat); weight defaults to 1")
    for key in PARAM_KEYS:  # every method's parameters, from the method table
        param = next(p for m in METHOD_TABLE.values() for p in m.params if p.key == key)
        flag = f"--{key.replace('_', '-')}"
        where = ", ".join(methods_with(key))
        if param.kind == "bool":
            c.add_argument(flag, action="store_true", default=None, help=f"{where}: {param.help}")
        else:
            c.add_argument(flag, type=FLAG_TYPES.get(param.kind, str), help=f"{where}: {param.help}",
                           choices=param.choices or None)
    c.add_argument("--out-dtype", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--out", required=True, help="config file to write")
    c.set_defaults(func=_merge_config)


def _slack(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _fraction_or_path(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return str(Path(text).resolve())


def _absolute(path: str) -> str:
    """A local folder as an absolute path; a hub id ("org/name" that is no folder here) as given."""
    return path if is_hub_id(path) and not Path(path).exists() else str(Path(path).resolve())


def _skip_blas_probe() -> None:
    """Save ~0.3 s of start-up: numba looks for BLAS by importing scipy.linalg when it first loads a
    kernel, and no merge kernel uses BLAS. Done only in this command's own process, where nothing
    else can want numba's BLAS support; scipy.linalg itself stays importable."""
    if "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    sys.modules["scipy.linalg"] = None  # makes `import scipy.linalg` raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401  (runs the probe, which now finds no BLAS)
    finally:
        del sys.modules["scipy.linalg"]


FLAG_TYPES = {"fraction": float, "number": float, "count": int, "seed": int, "slack": _slack,
              "target": _fraction_or_path}


@fsutil.cli_errors("merge")
def _merge(args: argparse.Namespace) -> int:
    from .engine import run_merge

    _skip_blas_probe()
    stats = run_merge(args.config, args.out, stats_path=args.stats, threads=args.threads,
                      force=args.force, shard_size=args.shard_size, progress=not args.quiet)
    fractions = ", ".join(f"{n} {t['discarded_fraction']:.4f}"
                          for n, t in zip(stats["models"], stats["totals"], strict=False))
    print(f"merged into {args.out} (discarded fraction: {fractions})", file=sys.stderr)
    return 0


@fsutil.cli_errors("merge-config")
def _merge_config(args: argparse.Namespace) -> int:
    models = []
    for spec in args.model:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            raise MergeError(f"--model {spec!r}: expected NAME=DIR[@WEIGHT]")
        path, _, weight = rest.partition("@")
        entry = {"name": name, "path": _absolute(path)}
        if weight:
            try:
                entry["weight"] = float(weight)
            except ValueError:
                raise MergeError(f"--model {spec!r}: weight {weight!r} is not a number") from None
        models.append(entry)
    data = {"method": args.method}
    if args.base:
        data["base"] = _absolute(args.base)
    data["models"] = models
    for key in (*PARAM_KEYS, "out_dtype"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    load_merge_config(data)  # refuse a config `merge` would refuse
    fsutil.write_text(args.out, yaml.safe_dump(data, sort_keys=False))
    return 0
