"""The report's tables: the eval file of every model of the config and the merge stats of every
sign-electing merge become `tables/scores.csv`, `tables/discarded.csv` (per merge input, with
per-module fractions) and `tables/discarded_map.csv` (per input, layer and module); each
language's token manifest and extended tokenizer's `vocab_extension.json` become
`tables/vocabulary.csv` (characters per token, base vs extended vocabulary), and the CT summaries
give the scores their `characters` of target text seen. A missing input fails, unless the caller
collects what is missing (`lrmerge report partial`).

A row's `tokens` is the CT budget behind it, in CT tokens (target + English): every token its CT
chain read, the target language and the English replay together (lrmerge.config.units); its
`characters` count the target-language text alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import (
    Layout,
    extends_vocabulary,
    language_entry,
    load_rule_config,
    plan_merges,
    plan_models,
    tasks_of,
    text_language,
    text_languages,
)
from ..config.layout import ct_id
from ..data.vocab import RECORD as VOCAB_RECORD
from ..fsutil import atomic_open, read_json

SCORE_COLUMNS = [
    "model",
    "method",
    "variant",
    "language",
    "tokens",  # the CT budget, in CT tokens (target + English); empty for base and sft
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
    # the target-language text seen by the CT model behind the row (empty for base and sft)
    "characters",
    "characters_source",
]
# characters_source: where a score row's `characters` come from
FROM_SUMMARY = "summary"  # the CT summary's target_characters (counted by training)
ESTIMATED = "manifest_estimate"  # target tokens x the token manifest's characters_per_token
VOCAB_COLUMNS = [
    "language",
    "text_language",
    "tokenizer",  # base, or extended +K
    "added",
    "vocab_size",
    # the language's token folder, from its manifest (tokenized with its own tokenizer)
    "documents",
    "characters",
    "bytes",
    "tokens",
    "characters_per_token",
    "characters_per_token_vs_text_language",
    # extended tokenizers: the text sample they were learned from (vocab_extension.json)
    "sample_documents",
    "sample_characters",
    "sample_bytes",
    "sample_tokens_base",
    "sample_tokens_extended",
    "sample_characters_per_token_base",
    "sample_characters_per_token_extended",
]
MISSING_COLUMNS = ["kind", "model", "path", "reason"]
DISCARD_COLUMNS = [
    "model",
    "method",
    "variant",
    "engine_method",
    "language",
    "tokens",  # the merged CT model's budget, in CT tokens (target + English)
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
    "tokens",  # the merged CT model's budget, in CT tokens (target + English)
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


def ct_behind(config: dict, model, lang: str, merges: dict) -> str | None:
    """The id of the CT model behind `model`'s scores on `lang`'s tasks: its own CT model (CT,
    CT-then-SFT, a single-language merge; on English tasks too), for a multi-language merge the
    one of its CT models whose text language is `lang` (none on English tasks, or where several
    share it); None for base and sft."""
    if model.kind in ("ct", "ct_sft"):
        return ct_id(model.language, model.tokens)
    if model.kind != "merge":
        return None
    langs = merges[model.id].languages
    if len(langs) == 1:
        return ct_id(langs[0], model.tokens)
    own = [lg for lg in langs if text_language(config, lg) == lang]
    return ct_id(own[0], model.tokens) if len(own) == 1 else None


def score_rows(config: dict, results: Layout, missing: list[dict] | None = None,
               text: dict | None = None) -> list[dict]:
    """One row per model and task. A missing eval file or task fails, unless `missing` is a list:
    then it is noted there and left out (lrmerge report partial). `text`: CT model id ->
    (characters, characters_source) (`ct_text`), the rows' `characters` (empty without)."""
    rows = []
    collapse_share = float(config["evaluate"]["collapse_share"])
    text = text or {}
    merges = {m.id: m for m in plan_merges(config)}
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
                chars, source = text.get(ct_behind(config, model, lang, merges), (None, None))
                row.update(characters=chars, characters_source=source)
                for k, v in (e.get("per_set") or {}).items():
                    row[f"score.set{k}"] = v
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# The text behind the tokens: token manifests, extended tokenizers, CT summaries


def read_manifests(config: dict, results: Layout,
                   missing: list[dict] | None = None) -> dict[str, dict | None]:
    """language -> its token folder's manifest (None where missing, in partial mode)."""
    out: dict[str, dict | None] = {}
    for lang in config["languages"]:
        path = Path(results.manifest(lang))
        try:
            out[lang] = _read_json(path)
        except ReportError as exc:
            _missing_or_raise(missing, "manifest", lang, path, exc)
            out[lang] = None
    return out


def target_tokens(summary: dict) -> int | None:
    """Target-language tokens a CT chain took: the summary's `target_tokens_seen`, else (a
    summary written before it) the target blocks it read x seq_len; None if neither is there."""
    if summary.get("target_tokens_seen") is not None:
        return int(summary["target_tokens_seen"])
    read = ((summary.get("data") or {}).get("target") or {}).get("blocks_read")
    if read is None or not summary.get("seq_len"):
        return None
    return int(read) * int(summary["seq_len"])


def text_seen(summary: dict, manifest: dict | None) -> tuple[int | None, str | None]:
    """(characters of target text a CT chain saw, characters_source): the summary's
    `target_characters` (`summary`); where it is null or absent (a token folder or summary
    from before text was counted) target tokens x the manifest's `characters_per_token`
    (`manifest_estimate`); (None, None) when neither is known. Never silently estimated."""
    if summary.get("target_characters") is not None:
        return int(summary["target_characters"]), FROM_SUMMARY
    cpt = (manifest or {}).get("characters_per_token")
    tokens = target_tokens(summary)
    if cpt is None or tokens is None:
        return None, None
    return round(tokens * float(cpt)), ESTIMATED


def ct_text(config: dict, results: Layout, manifests: dict,
            missing: list[dict] | None = None) -> dict[str, tuple[int | None, str | None]]:
    """CT model id -> (characters, characters_source) of every CT model of the config (`text_seen`
    from its train_summary.json). A missing summary fails, unless `missing` is a list."""
    out = {}
    for lang, facts in config["languages"].items():
        for tokens in facts["budgets"]:
            model = ct_id(lang, tokens)
            path = Path(results.summary(model))
            try:
                out[model] = text_seen(_read_json(path), manifests.get(lang))
            except ReportError as exc:
                _missing_or_raise(missing, "train_summary", model, path, exc)
                out[model] = (None, None)
    return out


def _ratio(num, den) -> float | None:
    return float(num) / float(den) if num is not None and den else None


def vocabulary_rows(config: dict, results: Layout, manifests: dict,
                    missing: list[dict] | None = None) -> list[dict]:
    """One row per language entry, grouped by text language (a language, then its vocabulary
    variants): its tokenizer, its token folder's counts from the manifest, characters per token
    against its text language's entry, and for an extended tokenizer the base-vs-extended
    counts on the sample it was learned from (vocab_extension.json beside its tokenizer.json).
    A missing record fails, unless `missing` is a list (as in score_rows)."""
    langs = list(config["languages"])
    order = [lg for t in text_languages(config, langs) for lg in langs
             if text_language(config, lg) == t]
    rows: dict[str, dict] = {}
    for lang in order:
        m = manifests.get(lang) or {}
        row = {
            "language": lang,
            "text_language": text_language(config, lang),
            "tokenizer": "base",
            "vocab_size": (m.get("tokenizer") or {}).get("vocab_size"),
            **{k: m.get(k) for k in ("documents", "characters", "bytes", "tokens",
                                     "characters_per_token")},
        }
        if extends_vocabulary(config, lang):
            row["tokenizer"] = f"extended +{language_entry(config, lang)['tokenizer']['extend']}"
            path = Path(results.language_tokenizer(lang)) / VOCAB_RECORD
            try:
                record = _read_json(path)
            except ReportError as exc:
                _missing_or_raise(missing, "vocab_extension", lang, path, exc)
                record = {}
            sample = record.get("corpus") or {}
            row["added"] = record.get("added")
            for key in ("documents", "characters", "bytes", "tokens_base", "tokens_extended"):
                row[f"sample_{key}"] = sample.get(key)
            row["sample_characters_per_token_base"] = _ratio(sample.get("characters"),
                                                             sample.get("tokens_base"))
            row["sample_characters_per_token_extended"] = _ratio(sample.get("characters"),
                                                                 sample.get("tokens_extended"))
        rows[lang] = row
    for row in rows.values():
        ref = rows.get(row["text_language"], {})
        row["characters_per_token_vs_text_language"] = _ratio(row["characters_per_token"],
                                                              ref.get("characters_per_token"))
    return list(rows.values())


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


def _write_csv(path: Path, rows: list[dict], columns: list[str],
               float_format: str | None = "%.6g") -> None:
    """Rows as a csv with `columns` first; floats to 6 significant digits, or (None) exactly."""
    import pandas as pd

    extra = [c for row in rows for c in row if c not in columns]
    columns = columns + list(dict.fromkeys(extra))
    frame = pd.DataFrame(rows, columns=columns)
    # integers, empty where unknown (tokens of base and sft, text of an old manifest, ...)
    for column in ("tokens", "characters", "bytes", "documents", "added", "vocab_size",
                   *(c for c in frame.columns if c.startswith("sample_")
                     and "_per_" not in c)):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    with atomic_open(path, "w") as fh:
        frame.to_csv(fh, index=False, float_format=float_format)


def collapsed_rows(scores: list[dict]) -> list[dict]:
    return [row for row in scores if row["collapsed"]]


def aggregate(config_path, results_dir, scores_path, discarded_path, discarded_map_path,
              missing: list[dict] | None = None, vocabulary_path=None, data_path=None) -> dict:
    """Write the five tables from the run in `results_dir` (results/{run}); return them as
    rows. `missing`: see score_rows. `vocabulary_path`, `data_path`: default vocabulary.csv and
    data.csv beside scores_path."""
    from lrmerge.report.inputs import DATA_COLUMNS, data_rows

    config = load_rule_config(config_path, "aggregate")
    results = Layout(str(results_dir))
    manifests = read_manifests(config, results, missing)
    text = ct_text(config, results, manifests, missing)
    scores = score_rows(config, results, missing, text)
    vocabulary = vocabulary_rows(config, results, manifests, missing)
    merges = merge_stats(config, results, missing)
    discards = discarded_rows(merges)
    cells = discarded_map_rows(merges)

    def folder_missing(kind, name, path, exc):
        if isinstance(exc, FileNotFoundError):  # no manifest: the job has not run
            path = Path(results.manifest(name))
            kind, exc = "manifest", f"missing (has the job that writes it run?) ({exc})"
        if missing is None or all(m["path"] != str(path) for m in missing):  # named once
            _missing_or_raise(missing, kind, name, path, ReportError(f"{path}: {exc}"))

    data = data_rows(config, results, folder_missing)
    if vocabulary_path is None:
        vocabulary_path = Path(scores_path).with_name("vocabulary.csv")
    if data_path is None:
        data_path = Path(scores_path).with_name("data.csv")
    _write_csv(Path(scores_path), scores, SCORE_COLUMNS)
    _write_csv(Path(discarded_path), discards, DISCARD_COLUMNS)
    _write_csv(Path(discarded_map_path), cells, MAP_COLUMNS)
    # the manifests' own numbers, not rounded again
    _write_csv(Path(vocabulary_path), vocabulary, VOCAB_COLUMNS, float_format=None)
    _write_csv(Path(data_path), data, DATA_COLUMNS)
    return {"scores": scores, "discarded": discards, "discarded_map": cells,
            "vocabulary": vocabulary, "data": data,
            "collapse_share": float(config["evaluate"]["collapse_share"])}


