"""Every source the config names, opened before the sweep: `lrmerge sources`.

Each language's corpus, the English corpus (each `subsets.sources` entry on its own), the SFT data
and every evaluation task's data are opened with the data and evaluate stages' own loaders
(lrmerge.data.sources, lrmerge.evaluate.tasks), so a source that passes here loads there. Hub
corpora are streamed (`streaming` forced on) and only their first rows are read; benchmark data is
read whole, as the evaluate stage reads it (a few hundred records a task).

A check ends in one of:
    ok           the first rows hold the configured fields
    failed       the config is wrong for the source: a loading script datasets >= 4 refuses, a
                 field the rows lack, a gated repository without access, a file that is not there
    unreachable  the hub (or a URL) could not be reached: offline, or no network
    skipped      nothing to open (generated data, lm-eval's built-in tasks)
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lrmerge.config import all_tasks, corpus_key
from lrmerge.data.sources import field_value, jsonl_rows, load_hf, paths
from lrmerge.evaluate import tasks as evaluate_tasks

GROUPS = ("corpora", "sft", "benchmarks")
# load_dataset's packaged builders: a `path` naming one reads data_files, not a repository.
BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql"}
# What datasets and huggingface_hub raise when the hub or a URL cannot be reached.
UNREACHABLE_TYPES = {"ConnectionError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout",
                     "TimeoutException", "ReadTimeout", "LocalEntryNotFoundError"}
SCRIPT_REFUSED = "Dataset scripts are no longer supported"
SAMPLE_CHARS = 60


@dataclass
class Check:
    """One source's outcome: `key` is its config key, `source` what was opened."""
    group: str
    key: str
    source: str
    status: str  # ok | failed | unreachable | skipped
    detail: str


# ----------------------------------------------------------------------------------------------
# What the config names


def corpus_sources(cfg: dict) -> list[tuple[str, dict]]:
    """(config key, corpus entry) of every corpus the data stage reads, English last. A
    vocabulary variant (`based_on`) reads its base's corpus and is not listed again; a corpus
    with `subsets.sources` is listed as its entries, each the corpus's keys with the entry's
    over them (as the data stage reads them)."""
    langs = [(lang, entry) for lang, entry in cfg["languages"].items() if "based_on" not in entry]
    out = []
    for lang, entry in [*langs, ("en", cfg["english"])]:
        spec, key = entry.get("corpus") or {}, corpus_key(lang)
        named = (spec.get("subsets") or {}).get("sources") or {}
        if not named:
            out.append((key, spec))
        base = {k: v for k, v in spec.items() if k != "subsets"}
        for name, sub in named.items():
            out.append((f"{key}.subsets.sources.{name}", {**base, **(sub or {})}))
    return out


def task_languages(cfg: dict) -> dict[str, str]:
    """Each evaluated task and the first language that lists it ("en": the English section)."""
    out = {}
    for lang, entry in [*cfg["languages"].items(), ("en", cfg["english"])]:
        for task in entry["tasks"]:
            out.setdefault(task, lang)
    return {task: out[task] for task in all_tasks(cfg)}


# ----------------------------------------------------------------------------------------------
# Opening a source


def describe(spec: dict) -> str:
    """A source in one line: kind, path, config name, data files, split."""
    if spec.get("kind") == "generated":
        return "generated"
    parts = [str(spec.get("kind", "hf")), _short(spec.get("path", "?"))]
    if spec.get("name"):
        parts.append(f"name={spec['name']}")
    if spec.get("data_files"):
        parts.append(f"data_files={_short(spec['data_files'])}")
    if spec.get("split") and spec.get("kind", "hf") == "hf":
        parts.append(f"split={spec['split']}")
    return " ".join(parts)


def _short(value) -> str:
    if isinstance(value, dict):
        value = next(iter(value.values()), "")
    if isinstance(value, list):
        return f"{value[0]} (+{len(value) - 1})" if len(value) > 1 else str(value[0] if value else "")
    return str(value)


def first_rows(spec: dict, where: str, n: int) -> list[dict]:
    """The first `n` rows of a corpus or SFT entry, read as the data stage reads it (hub
    entries streamed, so nothing big is downloaded)."""
    kind = spec.get("kind")
    if kind == "hf":
        return list(itertools.islice(load_hf(dict(spec, streaming=True), where), n))
    if kind == "jsonl":
        # the data stage's own expansion of paths and globs
        return list(itertools.islice(jsonl_rows(paths(spec, where), where, (), ""), n))
    raise ValueError(f"{where}.kind: {kind!r} is not one of generated, jsonl, hf")


def _sample(text) -> str:
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return repr(flat[:SAMPLE_CHARS] + ("..." if len(flat) > SAMPLE_CHARS else ""))


def field_report(rows: list[dict], fields: dict[str, str], sample: str,
                 text: str | None = None) -> str:
    """The fields found and a short sample of field `sample`; raises FieldMissing naming a
    configured field the first rows lack and the fields they hold, or a `text` field that does
    not hold text."""
    if not rows:
        raise FieldMissing("the source holds no rows")
    for i, row in enumerate(rows):
        for key, path in fields.items():
            try:
                field_value(row, path)
            except KeyError as e:
                inner = f": {e.args[0]}" if "." in path else ""
                raise FieldMissing(f"row {i} has no field {path!r} ({key}){inner}; "
                                   f"fields present: {', '.join(row)}") from None
        if text and not isinstance(row[text], str):
            raise FieldMissing(f"row {i}: field {text!r} is a {type(row[text]).__name__}, "
                               "not text")
    parts = [f"{len(rows)} rows", "fields: " + ", ".join(rows[0])]
    for key, path in fields.items():
        if key.endswith("subsets.field"):
            seen = sorted({str(field_value(r, path)) for r in rows})
            parts.append(f"{path}: {', '.join(seen)}")
    parts.append(f"{sample}: {_sample(rows[0][sample])}")
    return "; ".join(parts)


class FieldMissing(ValueError):
    """A configured field the source's rows do not hold."""


# ----------------------------------------------------------------------------------------------
# Outcomes


def offline() -> bool:
    """Whether the hub is switched off for this process (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def remote(spec: dict) -> bool:
    """Whether a load_dataset entry reads the hub or a URL (not only local files)."""
    files = spec.get("data_files")
    flat = (list(files.values()) if isinstance(files, dict) else
            files if isinstance(files, list) else [files] if files else [])
    flat = [f for v in flat for f in (v if isinstance(v, list) else [v])]
    if any("://" in str(f) for f in flat):
        return True
    path = str(spec.get("path") or "")
    return bool(path) and path not in BUILDERS and not Path(path).exists()


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def outcome(exc: BaseException, spec: dict) -> tuple[str, str]:
    """(status, reason) of a source that raised `exc`."""
    chain = list(_chain(exc))
    text = " | ".join(str(e) for e in chain)
    if SCRIPT_REFUSED in text:
        script = re.search(rf"{SCRIPT_REFUSED}, but found (\S+)", text)
        return "failed", (f"a loading script ({script.group(1) if script else '?'}) that "
                          "datasets >= 4 refuses: load its data files with a builder "
                          "(json, csv, parquet) or a script-free copy (docs/sources.md)")
    gated = next((e for e in chain if type(e).__name__ == "GatedRepoError"
                  or "is a gated dataset" in str(e)), None)
    if gated is not None:
        return "failed", (f"gated: {gated} (accept its conditions on the hub and log in: "
                          "huggingface-cli login, or HF_TOKEN)")
    if any(type(e).__name__ in UNREACHABLE_TYPES for e in chain) or (
            offline() and remote(spec) and any(isinstance(e, FileNotFoundError) for e in chain)):
        first = next((e for e in chain if type(e).__name__ in UNREACHABLE_TYPES), chain[-1])
        return "unreachable", f"{type(first).__name__}: {first}"
    return "failed", str(exc)


def _run(group: str, key: str, spec: dict, check) -> Check:
    try:
        return Check(group, key, describe(spec), "ok", check())
    except FieldMissing as e:
        return Check(group, key, describe(spec), "failed", str(e))
    except Exception as e:  # every way a source can fail is reported, none stops the others
        status, reason = outcome(e, spec)
        return Check(group, key, describe(spec), status, reason)


# ----------------------------------------------------------------------------------------------
# The checks


def check_corpora(cfg: dict, n: int) -> list[Check]:
    out = []
    for key, spec in corpus_sources(cfg):
        if spec.get("kind") == "generated":
            out.append(Check("corpora", key, "generated", "skipped", "generated by the mini "
                             "preset, nothing to open"))
            continue
        fields = {f"{key}.text_field": spec.get("text_field", "text")}
        subset_field = (spec.get("subsets") or {}).get("field")
        if subset_field:
            fields[f"{key}.subsets.field"] = subset_field

        def check(spec=spec, key=key, fields=fields):
            text = spec.get("text_field", "text")
            return field_report(first_rows(spec, key, n), fields, text, text=text)

        out.append(_run("corpora", key, spec, check))
    return out


def check_sft(cfg: dict, n: int) -> list[Check]:
    spec, key = cfg["sft"]["data"], "sft.data"
    if spec.get("kind") == "generated":
        return [Check("sft", key, "generated", "skipped", "generated by the mini preset, "
                      "nothing to open")]
    fields = {f"{key}.{name}": spec[name] for name in ("prompt_field", "response_field",
                                                       "task_field") if spec.get(name)}

    def check():
        rows = first_rows(spec, key, n)
        report = field_report(rows, fields, spec["prompt_field"])
        if spec.get("task_field"):
            tasks = sorted({str(r[spec["task_field"]]) for r in rows})
            report += f"; {spec['task_field']}: {', '.join(tasks)}"
        return report

    return [_run("sft", key, spec, check)]


def check_benchmarks(cfg: dict) -> list[Check]:
    """Each task read by the evaluate stage's reader: its test data and shot sets, every record
    normalised (a field the kind needs and a record lacks fails, naming both)."""
    out = []
    for task, lang in task_languages(cfg).items():
        spec = evaluate_tasks.task_spec(cfg, task)
        key, kind = spec["where"], spec["kind"]
        label = evaluate_tasks.source_label(cfg, spec)
        if kind in ("generated", "builtin"):
            reason = ("generated by the mini preset" if kind == "generated" else
                      f"lm-eval's own task {spec['name']}, loaded by lm-eval")
            out.append(Check("benchmarks", key, label, "skipped", reason))
            continue
        opened = ({"path": spec.get("root") or cfg["evaluate"]["milic_root"]}
                  if kind == "milic" else spec.get("test") or {})

        def check(cfg=cfg, lang=lang, task=task, spec=spec):
            bench = evaluate_tasks.read_benchmark(cfg, lang, task, spec)
            sets = ", ".join(f"{k}: {len(v)}" for k, v in bench.shot_sets.items())
            first = bench.test[0]
            shown = first.get("text") or first.get("question") or first.get("context")
            return (f"{len(bench.test)} test items"
                    + (f"; shot sets {sets}" if sets else "")
                    + f"; answer {first['answer']!r}; {_sample(shown)}")

        result = _run("benchmarks", key, opened, check)
        result.source = label
        out.append(result)
    return out


def run_checks(cfg: dict, rows: int = 5, only: str | None = None) -> list[Check]:
    """Every source of the config (or of one group: corpora, sft, benchmarks), checked."""
    if only is not None and only not in GROUPS:
        raise ValueError(f"--only {only!r} is not one of {', '.join(GROUPS)}")
    if rows < 1:
        raise ValueError(f"--rows must be at least 1, got {rows}")
    out = []
    if only in (None, "corpora"):
        out += check_corpora(cfg, rows)
    if only in (None, "sft"):
        out += check_sft(cfg, rows)
    if only in (None, "benchmarks"):
        out += check_benchmarks(cfg)
    return out


def format_checks(checks: list[Check]) -> str:
    """One line per source, then a summary line."""
    status = {"ok": "OK", "failed": "FAILED", "unreachable": "UNREACHABLE", "skipped": "SKIPPED"}
    width = max((len(c.key) for c in checks), default=0)
    lines = [f"{status[c.status]:<11} {c.key:<{width}}  {c.source}: {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in status}
    summary = (f"{len(checks)} sources: {counts['ok']} ok, {counts['failed']} failed, "
               f"{counts['unreachable']} not reachable, {counts['skipped']} skipped")
    if counts["unreachable"]:
        summary += (" (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if offline() else
                    " (no network to the hub or the URLs)")
    return "\n".join([*lines, summary])


def exit_status(checks: list[Check], require_online: bool = False) -> int:
    """1 when a source failed its check (or, with require_online, could not be reached)."""
    bad = {"failed", "unreachable"} if require_online else {"failed"}
    return int(any(c.status in bad for c in checks))
