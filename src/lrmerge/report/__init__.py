"""The report stage: tables from cached evaluations and merge statistics, figures from the tables.

`lrmerge report aggregate` reads the eval file of every model of the config, the merge stats of
every sign-electing merge, every language's token manifest and CT summaries and the extended
tokenizers' records under the run's results folder and writes the four tables (`tables`); a
missing input fails it. `lrmerge report plot` reads only those tables (`figures`), so
figures can be redrawn without re-running anything upstream. `lrmerge report partial` builds both
from whatever inputs exist (a sweep with failed jobs), in a folder of its own, listing what is
missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError, Layout, load_config
from ..config.layout import TABLES
from .figures import METHOD_STYLE, figure_names, map_variant, plot
from .tables import (
    MISSING_COLUMNS,
    ReportError,
    _write_csv,
    aggregate,
    collapsed_rows,
    discarded_map_rows,
    discarded_rows,
    merge_stats,
    score_rows,
    top_label,
)

__all__ = ["METHOD_STYLE", "ReportError", "add_parser", "aggregate", "collapsed_rows",
           "discarded_map_rows", "discarded_rows", "figure_names", "map_variant", "merge_stats",
           "partial", "plot", "score_rows", "top_label"]


def partial(config_path, results_dir=None, out_dir=None) -> dict:
    """Tables and figures from whatever eval files and merge stats exist under results_dir
    (default results/{run_name}), in out_dir (default results_dir/partial), with missing.csv
    listing the inputs left out. The workflow's own tables and figures are never written."""
    import matplotlib

    matplotlib.use("Agg")
    results = (Layout(str(results_dir)) if results_dir is not None
               else Layout.of(load_config(config_path)))
    out = Layout(str(out_dir) if out_dir is not None else results.partial())
    if Path(out.root).resolve() == Path(results.root).resolve():
        raise ReportError(f"{out.root}: is the run's own results folder, whose tables/ and "
                          "figures/ are the workflow's complete outputs; choose another --out-dir "
                          f"(default {results.partial()})")
    if not Path(results.root).is_dir():
        raise ReportError(f"{results.root}: no such results folder (--results)")
    paths = {name: Path(out.table(name)) for name in TABLES}
    missing: list[dict] = []
    tables = aggregate(config_path, results.root, paths["scores"], paths["discarded"],
                       paths["discarded_map"], missing, paths["vocabulary"], paths["data"])
    _write_csv(Path(out.missing()), missing, MISSING_COLUMNS)
    figures = plot(config_path, paths["scores"], paths["discarded"], paths["discarded_map"],
                   Path(out.figures()))
    return dict(tables, missing=missing, tables_written=list(paths.values()), figures=figures,
                missing_path=Path(out.missing()))


def _warn_collapsed(tables: dict) -> None:
    for row in collapsed_rows(tables["scores"]):
        print(f"warning: collapsed answers: {row['model']} on {row['task']} answers "
              f"{row['top_label']!r} for {row['top_label_share']:.0%} of its items (over "
              f"evaluate.collapse_share {tables['collapse_share']:g})")


def _cmd_aggregate(args) -> int:
    tables = aggregate(args.config, args.results, args.scores, args.discarded,
                       args.discarded_map, vocabulary_path=args.vocabulary,
                       data_path=args.data)
    vocabulary = args.vocabulary or Path(args.scores).with_name("vocabulary.csv")
    data = args.data or Path(args.scores).with_name("data.csv")
    print(f"wrote {args.scores} ({len(tables['scores'])} rows), {args.discarded} "
          f"({len(tables['discarded'])} rows), {args.discarded_map} "
          f"({len(tables['discarded_map'])} rows), {vocabulary} "
          f"({len(tables['vocabulary'])} rows) and {data} ({len(tables['data'])} rows)")
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
        help="write tables/scores.csv, tables/discarded.csv, tables/discarded_map.csv, "
        "tables/vocabulary.csv and tables/data.csv",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("--config", required=True, help="workflow config file")
    a.add_argument("--results", required=True,
                   help="the run's results folder, results/{run} (its eval/, models/ and "
                   "data/)")
    a.add_argument("--scores", required=True, help="scores table to write (csv)")
    a.add_argument("--discarded", required=True, help="discarded-parameters table to write (csv)")
    a.add_argument("--discarded-map", required=True,
                   help="discarded fractions per layer and module, table to write (csv)")
    a.add_argument("--vocabulary", default=None,
                   help="characters per token per language, base vs extended vocabulary, table "
                   "to write (csv; default: vocabulary.csv beside --scores)")
    a.add_argument("--data", default=None,
                   help="what each CT budget and SFT-flan read, per corpus subset and FLAN "
                   "task, table to write (csv; default: data.csv beside --scores)")
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
