"""The report's figures, drawn from the tables alone (`lrmerge report plot`), so they can be
redrawn without re-running anything upstream."""

from __future__ import annotations

import math
from pathlib import Path

from ..config import load_rule_config, task_families, text_language, text_languages
from ..config.layout import FIGURE_FORMATS, figure_file
from ..config.units import BUDGET_UNIT, TARGET_CHARACTERS
from ..fsutil import atomic_open
from ..merge.table import METHOD_TABLE
from .tables import ESTIMATED, ReportError, _module_key

# The figure whose layer map and per-module losses are shown: the first merge of this engine
# method (plain TIES: its losses are those of sign election alone, no slack reserved).
MAP_METHOD = "ties"


def figure_names(config: dict) -> list[tuple[str, str]]:
    """(name, task family or "") of every figure `plot` draws: saturation (families averaged),
    saturation of each task family in the config against CT tokens (target + English),
    saturation against characters of target-language text seen (a language and its vocabulary
    variants on one axis), discarded parameters, and where they are lost (layer map, per
    module)."""
    return [("saturation", ""), *((f"saturation_{f}", f) for f in task_families(config)),
            ("saturation_characters", ""),
            ("discarded", ""), ("discarded_map", ""), ("discarded_modules", "")]


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
    """Log-scaled x axis ticked at the budgets themselves (they usually double), in the
    budgets' unit."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({float(t) for t in tokens if t == t})
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_tokens_label(t) for t in ticks])
    ax.set_xlabel(BUDGET_UNIT)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out_dir / figure_file(name, fmt)
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=150, bbox_inches="tight")
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
            # dashed: a multi-language merge; dash-dot: a vocabulary variant of the language
            dash = "--" if group not in config["languages"] else "-."
            ax.errorbar(
                curve["tokens"],
                curve["score"],
                yerr=curve["stderr"].fillna(0.0),
                label=label,
                linestyle="-" if group == lang else dash,
                capsize=2,
                markersize=4,
                lw=1.2,
                **style,
            )
        _token_axis(ax, curves["tokens"])
        ax.set_title(f"{config['languages'][lang]['name']} ({lang})", fontsize="medium")
        ax.grid(alpha=0.3)
    _finish_grid(fig, axes, len(langs), ylabel, title)
    return fig


def _finish_grid(fig, axes, panels: int, ylabel: str, title: str) -> None:
    """A grid of panels: the y label on the first column, unused panels hidden, one legend of
    every panel's labels beside the grid, the title."""
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[panels:]:
        ax.set_visible(False)
    handles: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()


def plot_saturation(config: dict, scores, out_dir: Path) -> list[Path]:
    """Score vs CT tokens (target + English), families averaged; then one figure per family
    (its languages only).
    A panel per text language: a vocabulary variant's curves are drawn in its base's panel."""
    import matplotlib.pyplot as plt

    langs = list(text_languages(config, config["languages"]))
    paths = []
    fig = _saturation_figure(config, overall_means(scores), langs,
                             f"Score vs {BUDGET_UNIT} (task families averaged)",
                             "mean accuracy over families")
    paths += _save(fig, out_dir, "saturation")
    plt.close(fig)
    fam = family_means(scores)
    for family in task_families(config):
        own = fam[fam["family"] == family]
        fam_langs = [lang for lang in langs if (own["task_language"] == lang).any()]
        fig = _saturation_figure(config, own, fam_langs or langs,
                                 f"{family.replace('_', ' ').capitalize()} vs {BUDGET_UNIT}",
                                 "accuracy")
        paths += _save(fig, out_dir, f"saturation_{family}")
        plt.close(fig)
    return paths


def _count_label(n: float, _pos=None) -> str:
    return _tokens_label(n) if n == n else ""


def character_means(scores):
    """overall_means with the characters of target text each curve point's CT model saw (and
    where that number comes from): the rows of the text languages' tasks with characters only."""
    import pandas as pd

    keys = ["variant", "method", "language", "tokens", "task_language"]
    known = scores[scores["tokens"].notna() & scores["characters"].notna()]
    if not len(known):
        return pd.DataFrame(columns=[*keys, "score", "stderr", "characters",
                                     "characters_source"])
    chars = known.groupby(keys, dropna=False)[["characters", "characters_source"]].first()
    return overall_means(known).merge(chars.reset_index(), on=keys, how="inner")


def plot_characters(config: dict, scores, out_dir: Path) -> list[Path]:
    """Score (families averaged) vs characters of target text seen in CT: a panel per text
    language, holding the language and its vocabulary variants (a line style each) on one axis,
    so runs with different tokenizers compare by the text they read; a colour per method as in
    the saturation figure, base and SFT-flan as reference lines. Hollow markers: characters
    estimated from tokens x the manifest's characters per token (characters_source)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    langs = list(config["languages"])
    panels = list(text_languages(config, langs))
    entries = {t: [lg for lg in langs if text_language(config, lg) == t] for t in panels}
    if "characters" not in scores:  # a scores table from before the column
        scores = scores.assign(characters=float("nan"), characters_source=None)
    means = character_means(scores)
    refs = overall_means(scores[scores["variant"].isin(["base", "sft"])])
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.5 * nrows), squeeze=False,
                             sharey=True)
    extra: dict = {}
    dashes = ("-", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
    estimated = False
    for ax, text in zip(axes.flat, panels, strict=False):
        for variant, dash in (("base", ":"), ("sft", "--")):
            ref = refs[(refs["variant"] == variant) & (refs["task_language"] == text)]
            if len(ref):
                y, se = float(ref["score"].iloc[0]), float(ref["stderr"].iloc[0])
                ax.axhline(y, color="black", linestyle=dash, lw=1, label=variant)
                if se == se:
                    ax.axhspan(y - se, y + se, color="black", alpha=0.06, lw=0)
        own = means[means["task_language"] == text]
        for (variant, method, group), curve in own.groupby(["variant", "method", "language"],
                                                           sort=False):
            curve = curve.sort_values("characters")
            style = _style(variant, method, extra)
            if group in entries[text]:  # a colour per method, a line style per language entry
                line, label = dashes[entries[text].index(group) % len(dashes)], variant
            else:  # a multi-language merge: its CT model of this text language
                line, label = "--", f"{variant} ({group})"
            ax.errorbar(curve["characters"], curve["score"], yerr=curve["stderr"].fillna(0.0),
                        label=label, linestyle=line, capsize=2, markersize=4, lw=1.2, **style)
            guess = curve[curve["characters_source"] == ESTIMATED]
            if len(guess):
                estimated = True
                ax.plot(guess["characters"], guess["score"], linestyle="none",
                        marker=style["marker"], markersize=6, markerfacecolor="white",
                        markeredgecolor=style["color"], zorder=5)
        if len(entries[text]) > 1:  # the line style of each language entry, in the legend
            for i, lang in enumerate(entries[text]):
                ax.plot([], [], color="black", lw=1.2, linestyle=dashes[i % len(dashes)],
                        label=f"{lang}: {config['languages'][lang]['name']}")
        if len(own):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.text(0.5, 0.5, "no characters recorded", ha="center", va="center",
                    transform=ax.transAxes, fontsize="small")
        ax.set_xlabel(f"{TARGET_CHARACTERS} seen in CT")
        names = ", ".join(entries[text][1:])
        title = f"{config['languages'][text]['name']} ({text})"
        ax.set_title(f"{title}\nwith {names}" if names else title, fontsize="medium")
        ax.grid(alpha=0.3)
    title = f"Score vs {TARGET_CHARACTERS} seen in CT (task families averaged)"
    if estimated:
        title += "\nhollow markers: characters estimated as target tokens x characters per token"
    _finish_grid(fig, axes, len(panels), "mean accuracy over families", title)
    paths = _save(fig, out_dir, "saturation_characters")
    plt.close(fig)
    return paths


def plot_discarded(config: dict, discarded, out_dir: Path) -> list[Path]:
    """SFT-flan's discarded fraction vs CT tokens (target + English): a panel per merge, a
    line per language."""
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
        engines = set(rows["engine_method"])
        title = METHOD_TABLE[engines.pop()].title if len(engines) == 1 else ""
        ax.set_title(f"{variant} ({title})" if title and title != variant else variant)
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
    """The merge whose SFT-flan losses the map figures show: the first MAP_METHOD merge, else the
    first sign-electing merge."""
    variants = list(dict.fromkeys(discarded["variant"]))
    ties = [v for v in variants
            if (discarded[discarded["variant"] == v]["engine_method"] == MAP_METHOD).all()]
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
    # panels are titled by budget: its unit once, in the title
    fig.suptitle(f"Where SFT-flan entries are discarded ({variant or 'none'}), per language and "
                 f"budget in {BUDGET_UNIT}")
    paths = _save(fig, out_dir, "discarded_map")
    plt.close(fig)
    return paths


def plot_discarded_modules(config: dict, discarded, out_dir: Path) -> list[Path]:
    """SFT-flan's discarded fraction per module (embeddings and head too) vs CT tokens
    (target + English), in the merge of the layer map: a panel per language."""
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
    return (plot_saturation(config, scores, out_dir) + plot_characters(config, scores, out_dir)
            + plot_discarded(config, discarded, out_dir)
            + plot_discarded_map(config, cells, out_dir)
            + plot_discarded_modules(config, discarded, out_dir))
