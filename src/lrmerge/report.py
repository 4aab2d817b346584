"""The report stage: tables from cached evaluations and merge statistics, figures from the tables.

`lrmerge report aggregate` reads `eval/{model_id}.json` for every model of the config and the
`merge_stats.json` of every merge, and writes `tables/scores.csv`, `tables/discarded.csv` (per
merge input, with per-module fractions) and `tables/discarded_map.csv` (per input, layer and
module); a missing input fails it. `lrmerge report plot` reads only those tables, so figures can be
redrawn without re-running anything upstream. `lrmerge report partial` builds both from whatever
inputs exist (a sweep with failed jobs), in a folder of its own, listing what is missing.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .config import (
    TRIMMING_METHODS,
    ConfigError,
    load_config,
    load_rule_config,
    plan_merges,
    plan_models,
    task_families,
    tasks_of,
)
from .fsutil import atomic_open, read_json

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


def score_rows(config: dict, eval_dir: Path, missing: list[dict] | None = None) -> list[dict]:
    """One row per model and task. A missing eval file or task fails, unless `missing` is a list:
    then it is noted there and left out (lrmerge report partial)."""
    rows = []
    collapse_share = float(config["evaluate"]["collapse_share"])
    for model in plan_models(config):
        path = eval_dir / f"{model.id}.json"
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
                    "method": model.method,
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


def merge_stats(config: dict, models_dir: Path, missing: list[dict] | None = None) -> list[tuple]:
    """(merge, model id, stats path, stats) of every sign-electing merge, each file read once. A
    missing file fails, unless `missing` is a list (as in score_rows)."""
    found = []
    for m in plan_merges(config):
        if m.method not in TRIMMING_METHODS:
            continue  # nothing is discarded without a sign election
        model_id = f"merge/{m.variant}/{m.group}/{m.tokens}"
        path = models_dir / model_id / "merge_stats.json"
        try:
            found.append((m, model_id, path, _read_json(path)))
        except ReportError as exc:
            _missing_or_raise(missing, "merge_stats", model_id, path, exc)
    return found


def discarded_rows(merges: list[tuple]) -> list[dict]:
    """One row per input model of every sign-electing merge, with per-module fractions."""
    rows = []
    for m, model_id, path, stats in merges:
        for key in ("models", "totals", "by_module"):
            if key not in stats:
                raise ReportError(f"{path}: no '{key}' in the merge stats")
        names, totals = stats["models"], stats["totals"]
        if len(names) != len(totals):
            raise ReportError(f"{path}: {len(names)} models but {len(totals)} totals")
        for i, name in enumerate(names):
            row = {
                "model": model_id,
                "method": m.name,
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
    from .merge.stats import layer_of, module_of

    rows = []
    for m, model_id, path, stats in merges:
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
                "model": model_id,
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


def aggregate(config_path, eval_dir, models_dir, scores_path, discarded_path,
              discarded_map_path, missing: list[dict] | None = None) -> dict:
    """Write the three tables; return them as rows. `missing`: see score_rows."""
    config = load_rule_config(config_path, "aggregate")
    scores = score_rows(config, Path(eval_dir), missing)
    merges = merge_stats(config, Path(models_dir), missing)
    discards = discarded_rows(merges)
    cells = discarded_map_rows(merges)
    _write_csv(Path(scores_path), scores, SCORE_COLUMNS)
    _write_csv(Path(discarded_path), discards, DISCARD_COLUMNS)
    _write_csv(Path(discarded_map_path), cells, MAP_COLUMNS)
    return {"scores": scores, "discarded": discards, "discarded_map": cells,
            "collapse_share": float(config["evaluate"]["collapse_share"])}


TABLES = ("scores", "discarded", "discarded_map")


def partial(config_path, results_dir=None, out_dir=None) -> dict:
    """Tables and figures from whatever eval files and merge stats exist under results_dir
    (default results/{run_name}), in out_dir (default results_dir/partial), with missing.csv
    listing the inputs left out. The workflow's own tables and figures are never written."""
    import matplotlib

    matplotlib.use("Agg")
    run_name = load_config(config_path)["run_name"]
    results_dir = Path(results_dir if results_dir is not None else Path("results") / run_name)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "partial"
    if out_dir.resolve() == results_dir.resolve():
        raise ReportError(f"{out_dir}: is the run's own results folder, whose tables/ and "
                          "figures/ are the workflow's complete outputs; choose another --out-dir "
                          f"(default {results_dir / 'partial'})")
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: no such results folder (--results)")
    paths = {name: out_dir / "tables" / f"{name}.csv" for name in TABLES}
    missing: list[dict] = []
    tables = aggregate(config_path, results_dir / "eval", results_dir / "models",
                       paths["scores"], paths["discarded"], paths["discarded_map"], missing)
    _write_csv(out_dir / "missing.csv", missing, MISSING_COLUMNS)
    figures = plot(config_path, paths["scores"], paths["discarded"], paths["discarded_map"],
                   out_dir / "figures")
    return dict(tables, missing=missing, tables_written=list(paths.values()), figures=figures,
                missing_path=out_dir / "missing.csv")


# ----------------------------------------------------------------------------------------------
# plot

# Fixed colours so that a method looks the same in every panel and every run.
METHOD_STYLE = {
    "ct": {"color": "tab:gray", "marker": "o"},
    "ct_sft": {"color": "tab:red", "marker": "s"},
    "average": {"color": "tab:blue", "marker": "^"},
    "ties": {"color": "tab:green", "marker": "D"},
    "ties_sv": {"color": "tab:purple", "marker": "v"},
    "ties_auto": {"color": "tab:pink", "marker": "P"},
    "chat_vector": {"color": "tab:orange", "marker": "X"},
    "layer_swap": {"color": "tab:brown", "marker": "h"},
}
OTHER_COLORS = ("tab:olive", "tab:cyan", "gold", "navy", "lime")


def _style(variant: str, method: str, extra: dict) -> dict:
    if variant in METHOD_STYLE:
        return dict(METHOD_STYLE[variant])
    if variant not in extra:
        extra[variant] = {
            "color": OTHER_COLORS[len(extra) % len(OTHER_COLORS)],
            "marker": "x",
        }
    return dict(extra[variant])


def _tokens_label(n: float) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


def _token_axis(ax, tokens) -> None:
    """Log-scaled x axis ticked at the budgets themselves (they usually double)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({float(t) for t in tokens if t == t})
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_tokens_label(t) for t in ticks])
    ax.set_xlabel("CT tokens")


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _read_table(path: Path, required: list[str]):
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise ReportError(f"{path}: missing (run `lrmerge report aggregate` first)") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing columns {', '.join(missing)}")
    return frame


def _mean_with_stderr(frame, by: list[str]):
    """Mean score over the rows of each group, and the standard error of that mean (the rows'
    errors taken as independent: sqrt(sum se^2) / k; NaN where a row has none)."""
    import numpy as np
    import pandas as pd

    def agg(g):
        se = g["stderr"].astype(float)
        err = float(np.sqrt((se**2).sum()) / len(g)) if se.notna().all() else np.nan
        return pd.Series({"score": g["score"].mean(), "stderr": err})

    return frame.groupby(by, dropna=False)[["score", "stderr"]].apply(agg).reset_index()


def family_means(scores):
    """One row per model x language x family: the mean over the family's tasks."""
    keys = ["variant", "method", "language", "tokens", "task_language", "family"]
    return _mean_with_stderr(scores, keys)


def overall_means(scores):
    """One row per model x language: the mean over families of the family means, so a family
    with more tasks does not weigh more."""
    fam = family_means(scores)
    return _mean_with_stderr(fam, ["variant", "method", "language", "tokens", "task_language"])


def _saturation_figure(config: dict, means, langs: list[str], title: str, ylabel: str):
    """A panel per language, a line per method (error bars: standard error), base and SFT-flan
    as reference lines with their error band."""
    import matplotlib.pyplot as plt

    ncols = min(len(langs), 4)
    nrows = math.ceil(len(langs) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.4 * ncols, 3.5 * nrows), squeeze=False, sharey=True
    )
    extra: dict = {}
    for ax, lang in zip(axes.flat, langs, strict=False):
        own = means[means["task_language"] == lang]
        # Base and SFT-flan have no CT tokens: reference lines.
        for variant, dash in (("base", ":"), ("sft", "--")):
            ref = own[own["variant"] == variant]
            if len(ref):
                y, se = float(ref["score"].iloc[0]), float(ref["stderr"].iloc[0])
                ax.axhline(y, color="black", linestyle=dash, lw=1, label=variant)
                if se == se:
                    ax.axhspan(y - se, y + se, color="black", alpha=0.06, lw=0)
        curves = own[own["tokens"].notna()]
        for (variant, method, group), curve in curves.groupby(
            ["variant", "method", "language"], sort=False
        ):
            curve = curve.sort_values("tokens")
            style = _style(variant, method, extra)
            label = variant if group == lang else f"{variant} ({group})"
            ax.errorbar(
                curve["tokens"],
                curve["score"],
                yerr=curve["stderr"].fillna(0.0),
                label=label,
                linestyle="-" if group == lang else "--",
                capsize=2,
                markersize=4,
                lw=1.2,
                **style,
            )
        _token_axis(ax, curves["tokens"])
        ax.set_title(f"{config['languages'][lang]['name']} ({lang})", fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(langs) :]:
        ax.set_visible(False)
    handles: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_saturation(config: dict, scores, out_dir: Path) -> list[Path]:
    """Score vs CT tokens, families averaged; then one figure per family (its languages only)."""
    import matplotlib.pyplot as plt

    langs = list(config["languages"])
    paths = []
    fig = _saturation_figure(config, overall_means(scores), langs,
                             "Score vs continual pre-training tokens (task families averaged)",
                             "mean accuracy over families")
    paths += _save(fig, out_dir, "saturation")
    plt.close(fig)
    fam = family_means(scores)
    for family in task_families(config):
        own = fam[fam["family"] == family]
        fam_langs = [lang for lang in langs if (own["task_language"] == lang).any()]
        fig = _saturation_figure(config, own, fam_langs or langs,
                                 f"{family.replace('_', ' ').capitalize()} vs CT tokens",
                                 "accuracy")
        paths += _save(fig, out_dir, f"saturation_{family}")
        plt.close(fig)
    return paths


def plot_discarded(config: dict, discarded, out_dir: Path) -> list[Path]:
    """SFT-flan's discarded fraction vs CT tokens: a panel per merge, a line per language."""
    import matplotlib.pyplot as plt

    sft = discarded[discarded["input"] == "sft"]
    variants = list(dict.fromkeys(sft["variant"])) or ["(no sign-electing merge)"]
    fig, axes = plt.subplots(
        1, len(variants), figsize=(4.5 * len(variants), 3.6), squeeze=False, sharey=True
    )
    langs = list(config["languages"])
    for ax, variant in zip(axes[0], variants, strict=True):
        rows = sft[sft["variant"] == variant]
        for group, curve in rows.groupby("language", sort=False):
            curve = curve.sort_values("tokens")
            single = group in langs
            color = f"C{langs.index(group) % 10}" if single else "black"
            ax.plot(
                curve["tokens"],
                curve["discarded_fraction"],
                marker="o" if single else "*",
                markersize=5 if single else 11,
                linestyle="-" if single else "none",
                label=group,
                color=color,
            )
        _token_axis(ax, rows["tokens"])
        ax.set_title(variant)
        ax.grid(alpha=0.3)
        if len(rows):
            ax.legend(fontsize="small")
    axes[0, 0].set_ylabel("SFT-flan entries discarded\n(fraction of kept)")
    fig.suptitle("SFT-flan parameters lost at sign election")
    fig.tight_layout()
    paths = _save(fig, out_dir, "discarded")
    plt.close(fig)
    return paths


def map_variant(discarded) -> str | None:
    """The merge whose SFT-flan losses the map figures show: the first TIES merge (its losses are
    those of sign election alone, no slack), else the first sign-electing merge."""
    variants = list(dict.fromkeys(discarded["variant"]))
    ties = [v for v in variants
            if (discarded[discarded["variant"] == v]["engine_method"] == "ties").all()]
    return (ties or variants or [None])[0]


def plot_discarded_map(config: dict, cells, out_dir: Path) -> list[Path]:
    """Where SFT-flan's task skills are lost: per language (rows) and CT budget (columns), a
    layers x modules heatmap of its discarded fraction at sign election, one colour scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    variant = map_variant(cells)
    sft = cells[(cells["input"] == "sft") & (cells["variant"] == variant)] if variant else cells
    # single-language merges, in the config's order, each at the budgets it was merged at
    budgets_of = {lg: sorted(set(sft.loc[sft["language"] == lg, "tokens"]))
                  for lg in config["languages"]}
    langs = [lg for lg, budgets in budgets_of.items() if budgets]
    ncols = max((len(budgets_of[lg]) for lg in langs), default=1)
    fig, axes = plt.subplots(max(1, len(langs)), ncols, figsize=(2.6 * ncols + 1.2,
                             2.4 * max(1, len(langs)) + 0.6), squeeze=False)
    modules = sorted(set(sft["module"]), key=_module_key)
    layers = sorted(set(sft["layer"]))
    vmax = float(sft["discarded_fraction"].max()) if len(sft) else 1.0
    image = None
    for r, lang in enumerate(langs):
        budgets = budgets_of[lang]
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(budgets):
                ax.axis("off")
                continue
            rows = sft[(sft["language"] == lang) & (sft["tokens"] == budgets[c])]
            grid = np.full((len(layers), len(modules)), np.nan)
            for row in rows.itertuples():
                grid[layers.index(row.layer), modules.index(row.module)] = row.discarded_fraction
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="magma_r", vmin=0,
                              vmax=vmax or 1.0, interpolation="nearest")
            ax.set_xticks(range(len(modules)))
            ax.set_xticklabels([m.replace("_proj", "") for m in modules], rotation=90,
                               fontsize="x-small")
            ax.set_yticks(range(len(layers)))
            ax.set_yticklabels(layers, fontsize="x-small")
            ax.set_title(f"{config['languages'][lang]['name']}, {_tokens_label(budgets[c])}",
                         fontsize="small")
            if c == 0:
                ax.set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="SFT-flan discarded\n(fraction of kept)")
    else:
        axes[0, 0].text(0.5, 0.5, "no sign-electing merge", ha="center", va="center")
        axes[0, 0].axis("off")
    fig.suptitle(f"Where SFT-flan entries are discarded ({variant or 'none'})")
    paths = _save(fig, out_dir, "discarded_map")
    plt.close(fig)
    return paths


def plot_discarded_modules(config: dict, discarded, out_dir: Path) -> list[Path]:
    """SFT-flan's discarded fraction per module (embeddings and head too) vs CT tokens, in the
    merge of the layer map: a panel per language."""
    import matplotlib.pyplot as plt

    variant = map_variant(discarded)
    sft = discarded[(discarded["input"] == "sft") & (discarded["variant"] == variant)]
    langs = list(config["languages"])
    fig, axes = plt.subplots(1, len(langs), figsize=(4.2 * len(langs), 3.6), squeeze=False,
                             sharey=True)
    columns = [c for c in sft.columns if c.startswith("discarded_fraction.")]
    modules = sorted((c.partition(".")[2] for c in columns), key=_module_key)
    for ax, lang in zip(axes[0], langs, strict=True):
        rows = sft[sft["language"] == lang].sort_values("tokens")
        for i, module in enumerate(modules):
            ax.plot(rows["tokens"], rows[f"discarded_fraction.{module}"], marker="o",
                    markersize=4, color=f"C{i % 10}", label=module.replace("_proj", ""))
        _token_axis(ax, rows["tokens"])
        ax.set_title(config["languages"][lang]["name"])
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("SFT-flan entries discarded\n(fraction of kept)")
    if modules:
        axes[0, -1].legend(fontsize="x-small", ncol=2)
    fig.suptitle(f"SFT-flan losses per module ({variant or 'no sign-electing merge'})")
    fig.tight_layout()
    paths = _save(fig, out_dir, "discarded_modules")
    plt.close(fig)
    return paths


def plot(config_path, scores_path, discarded_path, discarded_map_path, out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    config = load_rule_config(config_path, "plot")
    scores = _read_table(
        Path(scores_path),
        ["variant", "method", "language", "tokens", "task_language", "family", "score", "stderr"],
    )
    scores = scores[scores["task_language"].notna()]
    discarded = _read_table(
        Path(discarded_path),
        ["variant", "engine_method", "language", "tokens", "input", "discarded_fraction"],
    )
    cells = _read_table(
        Path(discarded_map_path),
        ["variant", "engine_method", "language", "tokens", "input", "layer", "module", "kept",
         "discarded", "discarded_fraction"],
    )
    out_dir = Path(out_dir)
    return (plot_saturation(config, scores, out_dir) + plot_discarded(config, discarded, out_dir)
            + plot_discarded_map(config, cells, out_dir)
            + plot_discarded_modules(config, discarded, out_dir))


# ----------------------------------------------------------------------------------------------
# CLI


def _warn_collapsed(tables: dict) -> None:
    for row in collapsed_rows(tables["scores"]):
        print(f"warning: collapsed answers: {row['model']} on {row['task']} answers "
              f"{row['top_label']!r} for {row['top_label_share']:.0%} of its items (over "
              f"evaluate.collapse_share {tables['collapse_share']:g})")


def _cmd_aggregate(args) -> int:
    tables = aggregate(args.config, args.eval_dir, args.models_dir, args.scores, args.discarded,
                       args.discarded_map)
    print(f"wrote {args.scores} ({len(tables['scores'])} rows), {args.discarded} "
          f"({len(tables['discarded'])} rows) and {args.discarded_map} "
          f"({len(tables['discarded_map'])} rows)")
    _warn_collapsed(tables)
    return 0


def _cmd_partial(args) -> int:
    done = partial(args.config, args.results, args.out_dir)
    for path in done["tables_written"] + done["figures"]:
        print(f"wrote {path}")
    _warn_collapsed(done)
    for m in done["missing"]:
        print(f"missing: {m['kind']} of {m['model']}: {m['path']}: {m['reason']}")
    print(f"{len(done['missing'])} inputs missing, listed in {done['missing_path']}; "
          f"{len(done['scores'])} score rows")
    return 0


def _cmd_plot(args) -> int:
    for path in plot(args.config, args.scores, args.discarded, args.discarded_map, args.out_dir):
        print(f"wrote {path}")
    return 0


def _guard(func):
    """Bad input ends with one line naming the file, not a traceback."""

    def run(args) -> int:
        try:
            return func(args)
        except (ReportError, ConfigError) as exc:
            raise SystemExit(f"lrmerge report: {exc}") from None

    return run


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="aggregate evaluation results into tables and figures")
    sub = p.add_subparsers(dest="report_command", required=True,
                           metavar="{aggregate,plot,partial}")
    a = sub.add_parser(
        "aggregate",
        help="write tables/scores.csv, tables/discarded.csv and tables/discarded_map.csv",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("--config", required=True, help="workflow config file")
    a.add_argument("--eval-dir", required=True, help="results/{run}/eval")
    a.add_argument("--models-dir", required=True, help="results/{run}/models")
    a.add_argument("--scores", required=True, help="scores table to write (csv)")
    a.add_argument("--discarded", required=True, help="discarded-parameters table to write (csv)")
    a.add_argument("--discarded-map", required=True,
                   help="discarded fractions per layer and module, table to write (csv)")
    a.set_defaults(func=_guard(_cmd_aggregate))
    pl = sub.add_parser("plot", help="draw figures/saturation*, figures/discarded* (png, pdf)")
    pl.add_argument("--config", required=True, help="workflow config file")
    pl.add_argument("--scores", required=True, help="tables/scores.csv")
    pl.add_argument("--discarded", required=True, help="tables/discarded.csv")
    pl.add_argument("--discarded-map", required=True, help="tables/discarded_map.csv")
    pl.add_argument("--out-dir", required=True, help="results/{run}/figures")
    pl.set_defaults(func=_guard(_cmd_plot))
    pa = sub.add_parser(
        "partial",
        help="tables and figures of a partly failed sweep, from the inputs that exist",
        description="Builds the tables and figures from whatever eval files and merge stats exist "
        "under --results, into --out-dir (never the run's own tables/ and figures/, which stay "
        "the strict aggregate's), and lists the missing inputs there in missing.csv.",
    )
    pa.add_argument("--config", required=True, help="workflow config file")
    pa.add_argument("--results", default=None,
                    help="the run's results folder (default results/{run_name})")
    pa.add_argument("--out-dir", default=None,
                    help="where tables/, figures/ and missing.csv go (default RESULTS/partial)")
    pa.set_defaults(func=_guard(_cmd_partial))
