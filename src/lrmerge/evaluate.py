"""Evaluate stage: one lm-eval process per model, all its tasks.

`lrmerge evaluate --model DIR --lang L [--lang L2 ...] --tasks-dir results/{run}/data/eval --out F`
runs `lm_eval.simple_evaluate` on the tasks of the given languages (task YAMLs written by
`lrmerge data eval` under `tasks-dir/{lang}/`, plus lm-eval's built-in tasks when
`evaluate.include_defaults` is true) and writes one JSON per model:

    {"model": DIR, "languages": [...], "tasks": {TASK: {"score", "metric", "stderr", METRIC...}},
     "lm_eval_version": ..., "config": {...evaluate section...}, "wall_time_s": ...}
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from lrmerge import fsutil

# Idle OpenMP threads sleep instead of spinning (see lrmerge.train: spinning is 10x slower on
# shared cores). Set before lm-eval imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The headline metric of a task, first present wins (the report reads "score").
METRIC_ORDER = ("acc", "exact_match", "f1", "acc_norm")


def tasks_for(cfg: dict, langs: list[str]) -> list[str]:
    out: list[str] = []
    for lang in langs:
        if lang == "en":
            tasks = (cfg.get("english") or {}).get("tasks") or []
        else:
            if lang not in (cfg.get("languages") or {}):
                raise KeyError(f"--lang {lang!r} is not in config key 'languages' (nor en)")
            tasks = cfg["languages"][lang].get("tasks") or []
        out.extend(t for t in tasks if t not in out)
    return out


def _metrics(res: dict) -> dict:
    """lm-eval's {"acc,none": .9, "acc_stderr,none": .01, "alias": ...} -> our task entry."""
    values, stderr = {}, {}
    for key, v in res.items():
        if "," not in key or not isinstance(v, int | float):
            continue
        name, _filter = key.split(",", 1)
        if name.endswith("_stderr"):
            stderr.setdefault(name[: -len("_stderr")], v)
        else:
            values.setdefault(name, v)
    entry = dict(values)
    metric = next((m for m in METRIC_ORDER if m in values), next(iter(values), None))
    if metric is not None:
        entry["score"] = float(values[metric])
        entry["metric"] = metric
        s = stderr.get(metric)
        entry["stderr"] = float(s) if isinstance(s, int | float) and s == s else None
    return entry


def evaluate(cfg: dict, model: str, langs: list[str], tasks_dir: str | None, out: str,
             threads: int | None = None, limit: int | None = None) -> dict:
    """Run lm-eval on `model` for the tasks of `langs`; write and return the result JSON."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    ev = dict(cfg.get("evaluate") or {})
    if threads:
        torch.set_num_threads(int(threads))
    tasks = tasks_for(cfg, langs)
    if not tasks:
        raise ValueError(f"no tasks configured for languages {langs}")
    include = []
    if tasks_dir:
        for lang in langs:
            d = Path(tasks_dir) / lang
            if d.is_dir():
                include.append(str(d.resolve()))
    include_defaults = bool(ev.get("include_defaults", False))
    tm = TaskManager(include_path=include or None, include_defaults=include_defaults)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        where = ", ".join(include) or "no task folder"
        raise ValueError(f"tasks {missing} not found in {where}"
                         + ("" if include_defaults else
                            " (built-in lm-eval tasks need evaluate.include_defaults: true)"))
    device = ev.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": str(model), "dtype": ev.get("dtype", "float32"), "device": device}
    t0 = time.time()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=tasks,
        task_manager=tm,
        num_fewshot=ev.get("num_fewshot"),
        batch_size=ev.get("batch_size", 16),
        limit=limit if limit is not None else ev.get("limit"),
        random_seed=int(cfg.get("seed", 0)),
        numpy_random_seed=int(cfg.get("seed", 0)),
        torch_random_seed=int(cfg.get("seed", 0)),
        fewshot_random_seed=int(cfg.get("seed", 0)),
        log_samples=False,
    )
    per_task = {t: _metrics(results["results"].get(t, {})) for t in tasks}
    empty = [t for t, v in per_task.items() if "score" not in v]
    if empty:
        raise RuntimeError(f"lm-eval returned no metric for {empty}")
    doc = {
        "model": str(model),
        "languages": list(langs),
        "tasks": per_task,
        "n_samples": {t: (results.get("n-samples") or {}).get(t, {}).get("effective")
                      for t in tasks},
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "model_args": model_args,
        "config": ev,
        "wall_time_s": round(time.time() - t0, 2),
    }
    fsutil.write_json(out, doc)
    return doc


@fsutil.cli_errors("evaluate")
def cmd_evaluate(args) -> int:
    from lrmerge.config import load_config

    cfg = load_config(args.config)
    doc = evaluate(cfg, args.model, args.lang, args.tasks_dir, args.out, args.threads, args.limit)
    for task, m in doc["tasks"].items():
        print(f"{task}\t{m['metric']}\t{m['score']:.4f}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="evaluate a model with lm-eval on its tasks")
    p.add_argument("--config", required=True)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--lang", action="append", required=True,
                   help="language whose tasks to run (repeat; en = English tasks)")
    p.add_argument("--tasks-dir", default=None,
                   help="folder with one sub-folder of task YAMLs per language")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    p.set_defaults(func=cmd_evaluate)
    return p
