"""`lrmerge merge` and `lrmerge merge-config`: argument parsing over the merge library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .config import METHODS, is_hub_id, load_merge_config
from .errors import MergeError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge models from a native or mergekit YAML config")
    p.add_argument("config", help="merge config (native lrmerge YAML, or a mergekit YAML)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--stats", help="write discard statistics (JSON) here")
    p.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--shard-size", default="5GB", help="largest safetensors shard (e.g. 2GB)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_merge)

    c = subparsers.add_parser("merge-config", help="write a native merge config")
    c.add_argument("--method", required=True, choices=METHODS)
    c.add_argument("--base", help="base model folder")
    c.add_argument("--model", action="append", required=True, metavar="NAME=DIR[@WEIGHT]",
                   help="a model to merge (repeat); weight defaults to 1")
    for key in ("density", "lambda"):
        c.add_argument(f"--{key}", type=float)
    c.add_argument("--slack", type=_slack, help="ties_sv: a share of the candidates, or auto")
    c.add_argument("--target-discarded", type=_fraction_or_path,
                   help="slack auto: a fraction, or a merge_stats.json of per-tensor targets")
    c.add_argument("--protect", help="ties_sv: the model whose discarded entries the slack reserves")
    c.add_argument("--ratio", type=float, help="chat_vector: r in CT + r (SFT - base)")
    c.add_argument("--skip-embed", action="store_true", default=None,
                   help="chat_vector: keep the CT model's embeddings and LM head")
    c.add_argument("--task-model", help="layer_swap: the model whose middle layers are kept")
    for key in ("bottom", "top", "transition"):
        c.add_argument(f"--{key}", type=int, help=f"layer_swap: {key} layer count")
    c.add_argument("--embed-from", help="layer_swap: the model the embeddings come from")
    c.add_argument("--head-from", help="layer_swap: the model the final norm and head come from")
    c.add_argument("--trim-scope", choices=["tensor", "model"])
    c.add_argument("--vote", choices=["weighted", "unweighted"])
    c.add_argument("--seed", type=int)
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


def _fail(command: str, error: Exception) -> int:
    print(f"lrmerge {command}: error: {error}", file=sys.stderr)
    return 2


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


def _merge(args: argparse.Namespace) -> int:
    from .engine import run_merge

    if args.device == "cpu":
        _skip_blas_probe()
    try:
        stats = run_merge(args.config, args.out, stats_path=args.stats, threads=args.threads,
                          device=args.device, force=args.force, shard_size=args.shard_size,
                          progress=not args.quiet)
    except MergeError as e:
        return _fail("merge", e)
    fractions = ", ".join(f"{n} {t['discarded_fraction']:.4f}"
                          for n, t in zip(stats["models"], stats["totals"], strict=False))
    print(f"merged into {args.out} (discarded fraction: {fractions})", file=sys.stderr)
    return 0


def _merge_config(args: argparse.Namespace) -> int:
    models = []
    for spec in args.model:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            return _fail("merge-config", MergeError(f"--model {spec!r}: expected NAME=DIR[@WEIGHT]"))
        path, _, weight = rest.partition("@")
        entry = {"name": name, "path": _absolute(path)}
        if weight:
            try:
                entry["weight"] = float(weight)
            except ValueError:
                return _fail("merge-config", MergeError(f"--model {spec!r}: weight {weight!r} is not a number"))
        models.append(entry)
    data = {"method": args.method}
    if args.base:
        data["base"] = _absolute(args.base)
    data["models"] = models
    for key in ("density", "lambda", "slack", "target_discarded", "protect", "trim_scope", "vote",
                "seed", "out_dtype", "ratio", "skip_embed", "task_model", "bottom", "top",
                "transition", "embed_from", "head_from"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    try:
        load_merge_config(data)  # refuse a config `merge` would refuse
    except MergeError as e:
        return _fail("merge-config", e)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(out)
    return 0
