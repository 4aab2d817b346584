"""The report's tables: the eval file of every model of the config and the merge stats of every
sign-electing merge become `tables/scores.csv`, `tables/discarded.csv` (per merge input, with
per-module fractions) and `tables/discarded_map.csv` (per input, layer and module); a missing input
fails, unless the caller collects what is missing (`lrmerge report partial`).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import Layout, load_rule_config, plan_merges, plan_models, tasks_of
from ..fsutil import atomic_open, read_json

SCORE_COLUMNS = [
    "model",
    "method",
    "variant",
    "language",
    "tokens",
    "task",
    "task_language",
    "family",
    "metric",
    "score",
    "stderr",
    "n",
    "macro_f1",
    "debris",
    "top_label",
    "top_label_share",
    "collapsed",
]
MISSING_COLUMNS = ["kind", "model", "path", "reason"]
DISCARD_COLUMNS = [
    "model",
    "method",
    "variant",
    "engine_method",
    "language",
    "tokens",
    "input",
    "kept",
    "discarded",
    "discarded_fraction",
    "reserved",
]
MODULE_ORDER = (
    "embed",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "norm",
    "lm_head",
)


MAP_COLUMNS = [
    "model",
    "variant",
    "engine_method",
    "language",
    "tokens",
    "input",
    "layer",
    "module",
    "kept",
    "discarded",
    "discarded_fraction",
]


class ReportError(ValueError):
    """Missing or malformed input of the report; the message names the file."""


# ----------------------------------------------------------------------------------------------
# Reading inputs


def _read_json(path: Path) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise ReportError(f"{path}: missing (has the job that writes it run?)") from None
    except ValueError as exc:
        raise ReportError(str(exc)) from None


# What an eval file's task entry must carry (lrmerge.evaluate.run writes it).
TASK_KEYS = ("family", "metric", "score", "stderr", "n")


def task_entries(path: Path) -> dict[str, dict]:
    """task -> its entry (score, stderr, family, ...) from an eval file of `lrmerge evaluate`."""
    data = _read_json(path)
    if "tasks" not in data or not isinstance(data["tasks"], dict):
        raise ReportError(f"{path}: no 'tasks' in the eval file (is it lrmerge evaluate's?)")
    out = {}
    for task, entry in data["tasks"].items():
        if not isinstance(entry, dict):
            raise ReportError(f"{path}: tasks.{task} is not an object")
        missing = [k for k in TASK_KEYS if k not in entry]
        if missing:
            raise ReportError(f"{path}: tasks.{task} has no {', '.join(missing)} (written by an "
                              "older lrmerge? re-run its evaluation)")
        entry = dict(entry)
        entry["score"] = _finite(entry["score"], path, task)
        out[task] = entry
    return out


def _finite(value, path: Path, task: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ReportError(f"{path}: score of {task} is not a number: {value!r}") from None
    if not math.isfinite(score):
        raise ReportError(f"{path}: score of {task} is {score}")
    return score


# ----------------------------------------------------------------------------------------------
# aggregate


def _missing_or_raise(missing: list[dict] | None, kind: str, model: str, path: Path,
                      exc: ReportError) -> None:
    """Strict (missing is None): raise. Partial: note the input as missing and go on."""
    if missing is None:
        raise exc
    reason = str(exc).removeprefix(f"{path}: ")
    missing.append({"kind": kind, "model": model, "path": str(path), "reason": reason})


def top_label(predictions: dict | None, collapse_share: float) -> tuple:
    """(most frequent answer, its share of the items, collapsed) of a classification entry's
    predictions (label -> count, unparsable answers included); Nones without predictions. A
    tie goes to the label listed first."""
    total = sum((predictions or {}).values())
    if not total:
        return None, None, None
    label = max(predictions, key=predictions.get)
    share = predictions[label] / total
    return label, share, share > collapse_share


def score_rows(config: dict, results: Layout, missing: list[dict] | None = None) -> list[dict]:
    """One row per model and task. A missing eval file or task fails, unless `missing` is a list:
    then it is noted there and left out (lrmerge report partial)."""
    rows = []
    collapse_share = float(config["evaluate"]["collapse_share"])
    for model in plan_models(config):
        path = Path(results.eval(model.id))
        try:
            entries = task_entries(path)
        except ReportError as exc:
            _missing_or_raise(missing, "eval", model.id, path, exc)
            continue
        for lang in model.eval_languages:
            for task in tasks_of(config, lang):
                if task not in entries:
                    _missing_or_raise(missing, "eval", model.id, path, ReportError(
                        f"{path}: no score for task {task} ({lang}); its evaluation must be "
                        "re-run, a task is never left out"))
                    continue
                e = entries[task]
                label, share, collapsed = top_label(e.get("predictions"), collapse_share)
                row = {
                    "model": model.id,
                    "method": model.entry,
                    "variant": model.variant,
                    "language": model.language,
                    "tokens": model.tokens,
                    "task": task,
                    "task_language": lang,
                    "family": e["family"],
                    "metric": e["metric"],
                    "score": e["score"],
                    "stderr": e["stderr"],
                    "n": e["n"],
                    "macro_f1": e.get("macro_f1"),
                    "debris": e.get("debris"),
                    "top_label": label,
                    "top_label_share": share,
                    "collapsed": collapsed,
                }
                for k, v in (e.get("per_set") or {}).items():
                    row[f"score.set{k}"] = v
                rows.append(row)
    return rows


def _module_key(module: str):
    return (
        (MODULE_ORDER.index(module), "") if module in MODULE_ORDER else (len(MODULE_ORDER), module)
    )


def merge_stats(config: dict, results: Layout, missing: list[dict] | None = None) -> list[tuple]:
    """(merge, stats path, stats) of every sign-electing merge (lrmerge.merge.table), each file
    read once. A missing file fails, unless `missing` is a list (as in score_rows)."""
    found = []
    for m in plan_merges(config):
        if not m.row.elects_signs:
            continue  # nothing is discarded without a sign election
        path = Path(results.summary(m.id))
        try:
            found.append((m, path, _read_json(path)))
        except ReportError as exc:
            _missing_or_raise(missing, "merge_stats", m.id, path, exc)
    return found


def discarded_rows(merges: list[tuple]) -> list[dict]:
    """One row per input model of every sign-electing merge, with per-module fractions."""
    rows = []
    for m, path, stats in merges:
        for key in ("models", "totals", "by_module"):
            if key not in stats:
                raise ReportError(f"{path}: no '{key}' in the merge stats")
        names, totals = stats["models"], stats["totals"]
        if len(names) != len(totals):
            raise ReportError(f"{path}: {len(names)} models but {len(totals)} totals")
        for i, name in enumerate(names):
            row = {
                "model": m.id,
                "method": m.entry,
                "variant": m.variant,
                "engine_method": m.method,
                "language": m.group,
                "tokens": m.tokens,
                "input": name,
            }
            for key in ("kept", "discarded", "discarded_fraction", "reserved"):
                if key not in totals[i]:
                    raise ReportError(f"{path}: totals[{i}] has no '{key}'")
                row[key] = totals[i][key]
            for module in sorted(stats["by_module"], key=_module_key):
                entries = stats["by_module"][module]
                if len(entries) != len(names):
                    raise ReportError(f"{path}: by_module.{module} does not list every model")
                row[f"discarded_fraction.{module}"] = entries[i]["discarded_fraction"]
            rows.append(row)
    return rows


def discarded_map_rows(merges: list[tuple]) -> list[dict]:
    """Per sign-electing merge, input model, layer and module inside the layers: the discarded
    counts summed over that cell's tensors (from the stats' per-tensor counts)."""
    from ..merge.stats import layer_of, module_of

    rows = []
    for m, path, stats in merges:
        if "tensors" not in stats or "models" not in stats:
            raise ReportError(f"{path}: no 'tensors' or 'models' in the merge stats")
        cells: dict[tuple[int, str, str], list[int]] = {}
        for tensor, entries in stats["tensors"].items():
            layer = layer_of(tensor)
            if layer == "other":
                continue  # embeddings, final norm and head belong to no layer
            if len(entries) != len(stats["models"]):
                raise ReportError(f"{path}: tensors.{tensor} does not list every model")
            for name, e in zip(stats["models"], entries, strict=True):
                cell = cells.setdefault((int(layer), module_of(tensor), name), [0, 0])
                cell[0] += e["kept"]
                cell[1] += e["discarded"]
        for (layer, module, name), (kept, discarded) in sorted(
            cells.items(), key=lambda kv: (kv[0][2], kv[0][0], _module_key(kv[0][1]))
        ):
            rows.append({
                "model": m.id,
                "variant": m.variant,
                "engine_method": m.method,
                "language": m.group,
                "tokens": m.tokens,
                "input": name,
                "layer": layer,
                "module": module,
                "kept": kept,
                "discarded": discarded,
                "discarded_fraction": discarded / kept if kept else 0.0,
            })
    return rows


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import pandas as pd

    extra = [c for row in rows for c in row if c not in columns]
    columns = columns + list(dict.fromkeys(extra))
    frame = pd.DataFrame(rows, columns=columns)
    if "tokens" in frame:
        frame["tokens"] = frame["tokens"].astype("Int64")  # integers, empty for base and sft
    with atomic_open(path, "w") as fh:
        frame.to_csv(fh, index=False, float_format="%.6g")


def collapsed_rows(scores: list[dict]) -> list[dict]:
    return [row for row in scores if row["collapsed"]]


def aggregate(config_path, results_dir, scores_path, discarded_path, discarded_map_path,
              missing: list[dict] | None = None) -> dict:
    """Write the three tables from the run in `results_dir` (results/{run}); return them as
    rows. `missing`: see score_rows."""
    config = load_rule_config(config_path, "aggregate")
    results = Layout(str(results_dir))
    scores = score_rows(config, results, missing)
    merges = merge_stats(config, results, missing)
    discards = discarded_rows(merges)
    cells = discarded_map_rows(merges)
    _write_csv(Path(scores_path), scores, SCORE_COLUMNS)
    _write_csv(Path(discarded_path), discards, DISCARD_COLUMNS)
    _write_csv(Path(discarded_map_path), cells, MAP_COLUMNS)
    return {"scores": scores, "discarded": discards, "discarded_map": cells,
            "collapse_share": float(config["evaluate"]["collapse_share"])}


