"""Task building: a language's benchmarks as lm-eval task folders, filled from the templates.

`build(cfg, lang, out_dir)` writes, for each task of the language:
    {task}.test.jsonl, {task}.shots{k}.jsonl   normalised rows (lrmerge.evaluate.benchmarks)
    {lm_eval_task}.yaml                        one lm-eval task per shot set: prompt style +
                                               protocol template (templates/), filled from config
    lrmerge_tasks.py                           the callables the YAMLs name (`!function`)
    tasks.json                                 each task's metadata: family, language, metric,
                                               protocol, source, items, shots, its lm-eval tasks,
                                               and the evaluate.limit sample (lrmerge.evaluate.limit)
Built-in lm-eval tasks (kind: builtin) get metadata only. `table(cfg)` lists every language x
family for `lrmerge tasks`.
"""

from __future__ import annotations

import copy
import string
from importlib import resources
from pathlib import Path

import yaml

from lrmerge import fsutil
from lrmerge.config import FAMILIES, language_entry
from lrmerge.evaluate import benchmarks as bm
from lrmerge.evaluate import limit as lim
from lrmerge.evaluate.benchmarks import BenchmarkError

MANIFEST = "tasks.json"
SHIM = "lrmerge_tasks.py"
# The prompt style and answer of a family, per benchmark kind.
PROMPT_STYLE = {"classification": "classification", "reading_comprehension": "dialogue_question",
                "response_selection": "response", "math": "math"}
KIND_STYLE = {"belebele": {"reading_comprehension": "passage_question"}}


class Function(str):
    """A `!function name` YAML node, kept as text between reading and writing a template."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))
_Dumper.add_representer(Function, lambda dumper, f: dumper.represent_scalar("!function", str(f)))


def template(name: str) -> dict:
    text = resources.files("lrmerge.evaluate").joinpath("templates", f"{name}.yaml").read_text(
        encoding="utf-8")
    return yaml.load(text, Loader=_Loader)


def _fill(node, values: dict):
    """Replace ${name} in every string; a string that is exactly ${name} takes the value as is."""
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str) and not isinstance(node, Function):
        if node.startswith("${") and node.endswith("}") and node[2:-1] in values:
            return values[node[2:-1]]
        return string.Template(node).substitute(values)
    return node


# ----------------------------------------------------------------------------------------------
# Settings of one task, from config


def task_spec(cfg: dict, task: str) -> dict:
    """A task's source entry with the evaluate section's defaults applied."""
    ev = cfg["evaluate"]
    spec = ev["sources"].get(task)
    if spec is None:
        raise ValueError(f"task {task!r} has no entry in config key evaluate.sources "
                         "(kind, family and where its data is)")
    spec = dict(spec)
    where = f"evaluate.sources.{task}"
    kind, family = spec["kind"], spec["family"]
    spec.setdefault("protocol", ev["protocol"])
    spec.setdefault("max_gen_toks", ev["max_gen_toks"][family])
    spec.setdefault("prompt", KIND_STYLE.get(kind, {}).get(family, PROMPT_STYLE[family])
                    if kind != "generated" else "generated")
    # the mini's generated items are zero-shot: its prompts are those its SFT data uses
    spec.setdefault("shots", 0 if kind == "generated" else ev["shots"][family])
    if kind == "builtin":
        spec.setdefault("name", task)  # the lm-eval task
    spec["where"] = where
    return spec


def prompt_language_name(cfg: dict, lang: str) -> str:
    if cfg["evaluate"]["prompt_language"] == "zh":
        names = template("prompts")["language_names_zh"]
        entry = language_entry(cfg, lang)
        if entry.get("prompt_name_zh"):
            return entry["prompt_name_zh"]
        if lang not in names:
            raise ValueError(f"no Chinese name for language {lang!r}: set "
                             f"languages.{lang}.prompt_name_zh (prompt_language: zh)")
        return names[lang]
    entry = language_entry(cfg, lang)
    return entry.get("prompt_name") or entry.get("name") or ("English" if lang == "en" else lang)


def source_label(cfg: dict, spec: dict) -> str:
    """Where a task's data comes from, in one token (for `lrmerge tasks` and the metadata)."""
    kind = spec["kind"]
    if kind == "builtin":
        return f"lm-eval:{spec['name']}"
    if kind == "generated":
        return "generated"
    if kind == "milic":
        root = spec.get("root") or cfg["evaluate"]["milic_root"]
        return f"milic:{root}/data/{_milic_folder(spec)}/{spec['lang']}"
    test = spec.get("test") or {}
    parts = [str(test.get("path", "?"))]
    if test.get("name"):
        parts.append(str(test["name"]))
    if test.get("data_files"):
        files = test["data_files"]
        parts.append(str(files if isinstance(files, str) else next(iter(files.values()), "")))
    if test.get("split"):
        parts.append(f"split={test['split']}")
    return f"{kind}:" + ":".join(parts)


def _milic_folder(spec: dict) -> str:
    return spec.get("folder") or bm.MILIC_FOLDERS[spec["family"]]


# ----------------------------------------------------------------------------------------------
# Reading a task's data


def read_benchmark(cfg: dict, lang: str, task: str, spec: dict) -> bm.Benchmark:
    ev = cfg["evaluate"]
    kind, family, where = spec["kind"], spec["family"], f"task {task} ({spec['where']})"
    prompt_lang, max_chars = ev["prompt_language"], ev["max_text_chars"]
    seeds = [int(s) for s in ev["shot_seeds"]]
    shots = spec["shots"]
    if kind == "generated":
        mini = cfg["mini"]
        test = bm.generated_rows(cfg, lang, task, family, "test", mini["eval_examples"])
        pool = (bm.generated_rows(cfg, lang, task, family, "train", mini["fewshot_examples"])
                if shots else [])
        return _with_drawn_shots(bm.Benchmark(test, source="generated"), pool, shots, seeds)
    if kind == "milic":
        root = spec.get("root") or ev["milic_root"]
        folder = f"data/{_milic_folder(spec)}/{spec['lang']}"

        def read(file: str, as_shots: bool) -> list[dict]:
            args = {"path": root, "data_files": f"{folder}/{file}.json", "split": "train"}
            w = f"{where}: {root}/{folder}/{file}.json"
            return bm.milic_rows(bm.load_records(args, w), family, prompt_lang, max_chars, w,
                                 as_shots)

        test = read("test", False)
        bench = bm.Benchmark(test, source=source_label(cfg, spec))
        if shots:
            labels = sorted({r["answer"] for r in test})
            for k in seeds:  # the release's own shot sets: train_1..3.json
                pool = read(f"train_{k}", True)
                bench.shot_sets[str(k)] = (bm.per_label_shots(pool, labels)
                                           if shots == "per_label" else pool[: int(shots)])
        return bench
    fields = dict(bm.FIELDS[kind], **(spec.get("fields") or {}))

    def rows(args: dict, label: str) -> list[dict]:
        w = f"{where} {label} ({bm.show_args(args)})"
        records = bm.load_records(dict(args), w)
        if kind == "sib200":
            return bm.sib200_rows(records, fields, max_chars, w)
        if kind == "belebele":
            return bm.belebele_rows(records, fields, w)
        return bm.mgsm_rows(records, fields, w)

    test = rows(spec["test"], "test")
    bench = bm.Benchmark(test, source=source_label(cfg, spec))
    fewshot = spec.get("fewshot")
    if not shots:
        return bench
    if fewshot is None:
        raise ValueError(f"{spec['where']}: shots is {shots} but there is no shot pool; set "
                         "fewshot (load_dataset arguments, or 'test' to hold shots out of the "
                         "test data) or shots: 0")
    if fewshot == "test":
        bench = _with_drawn_shots(bench, test, shots, seeds)
        used = {id(r) for s in bench.shot_sets.values() for r in s}
        bench.test = [r for r in test if id(r) not in used]
        bench.held_out = len(test) - len(bench.test)
        return bench
    return _with_drawn_shots(bench, rows(fewshot, "few-shot pool"), shots, seeds)


def _with_drawn_shots(bench: bm.Benchmark, pool: list[dict], shots, seeds) -> bm.Benchmark:
    if shots:
        labels = sorted({r["answer"] for r in bench.test})
        for k in seeds:
            bench.shot_sets[str(k)] = bm.draw_shots(pool, shots, k, labels)
    return bench


# ----------------------------------------------------------------------------------------------
# Writing


def _task_yaml(task_name: str, spec: dict, prompt: dict, files: dict, n_shot: int,
               classification: bool) -> dict:
    proto = template(spec["protocol"])
    proto = _fill(proto, {"max_gen_toks": int(spec["max_gen_toks"])})
    y = {"task": task_name, "dataset_path": "json", "dataset_kwargs": {"data_files": files}}
    y.update(proto)
    y["doc_to_text"] = prompt["text"]
    y["target_delimiter"] = prompt["target_delimiter"]
    y["num_fewshot"] = n_shot
    if n_shot:
        y["fewshot_split"] = "shots"
        y["fewshot_delimiter"] = "\n\n"
        y["fewshot_config"] = {"sampler": "first_n"}
    if classification:
        y["metric_list"] = y["metric_list"] + [template("macro_f1")]
    y["metadata"] = {"version": 1.0}
    return y


def build(cfg: dict, lang: str, out_dir: str | Path) -> dict:
    """Write the task folder of `lang`; return its manifest."""
    out_dir = Path(out_dir).resolve()
    entry = language_entry(cfg, lang)
    tasks = entry["tasks"]
    ev = cfg["evaluate"]
    prompts = template("prompts")
    manifest = {"language": lang, "prompt_language": ev["prompt_language"], "tasks": {}}
    # Files go to a temporary folder renamed at the end; the YAMLs name the final absolute
    # paths, since lm-eval resolves data_files against the working directory.
    with fsutil.atomic_dir(out_dir) as tmp:
        fsutil.write_text(tmp / SHIM, "# The callables the task YAMLs here name (!function).\n"
                          "from lrmerge.evaluate.scoring import *  # noqa: F401,F403\n")
        for task in tasks:
            spec = task_spec(cfg, task)
            manifest["tasks"][task] = _write_task(cfg, lang, task, spec, prompts, out_dir, tmp)
        fsutil.write_json(tmp / MANIFEST, manifest)
    return manifest


def _meta(spec: dict, lang: str, source: str) -> dict:
    return {"family": spec["family"], "language": lang, "kind": spec["kind"], "source": source,
            "protocol": None if spec["kind"] == "builtin" else spec["protocol"]}


def limit_seed(cfg: dict) -> int:
    """The seed of the `evaluate.limit` sample: evaluate.limit_seed, else the run's seed."""
    seed = cfg["evaluate"].get("limit_seed")
    return int(cfg["seed"] if seed is None else seed)


def _write_task(cfg, lang, task, spec, prompts, out_dir: Path, tmp: Path) -> dict:
    limit = cfg["evaluate"].get("limit")
    if spec["kind"] == "builtin":
        if limit is not None:  # its items are lm-eval's: we cannot sample them, nor cut them
            raise ValueError(f"task {task} ({spec['where']}): evaluate.limit ({limit}) cannot "
                             "sample a built-in lm-eval task; unset evaluate.limit or give the "
                             "task a source whose data lrmerge reads")
        meta = _meta(spec, lang, source_label(cfg, spec))
        meta.update(metric=None, n_items=None, n_shot=None, shot_sets=[], **lim.unsampled(None),
                    lm_eval_tasks={"": spec["name"]})
        return meta
    bench = read_benchmark(cfg, lang, task, spec)
    family = spec["family"]
    if family == "classification" and spec["kind"] != "generated":
        labels = sorted({r["answer"] for r in bench.test})
        shots = [r for s in bench.shot_sets.values() for r in s]
        missing = sorted({r["answer"] for r in shots} - set(labels))
        if missing:
            raise BenchmarkError(f"task {task}: shot labels {missing} never occur in the test "
                                 f"data (labels: {', '.join(labels)})")
        for r in bench.test + shots:
            r["candidates"] = r["choices"] = labels
            r["gold"] = labels.index(r["answer"])
    for r in bench.test + [r for s in bench.shot_sets.values() for r in s]:
        r["family"] = family  # the scoring functions read it
    if family == "math" and spec["protocol"] == "loglik" and spec["kind"] != "generated":
        bm.math_choices(bench.test, task)
    styles = prompts["styles"]
    if spec["prompt"] not in styles:
        raise ValueError(f"{spec['where']}.prompt: {spec['prompt']!r} is not a prompt style "
                         f"({', '.join(styles)})")
    style = styles[spec["prompt"]][cfg["evaluate"]["prompt_language"]]
    # the language's name, only where a prompt says it (the mini's generated prompts do not)
    named = "${language}" in style["text"]
    prompt = _fill(style, {"language": prompt_language_name(cfg, lang) if named else ""})
    # Sampled last: the candidate labels and math distractors are those of the full set.
    test, sampled = lim.sample(bench.test, limit, limit_seed(cfg) if limit is not None else None,
                               task, stratify=family == "classification")
    fsutil.write_jsonl(tmp / f"{task}.test.jsonl", test)
    sets = bench.shot_sets or {"": []}
    lm_tasks = {}
    for k, shots in sets.items():
        files = {"test": str(out_dir / f"{task}.test.jsonl")}
        if shots:
            fsutil.write_jsonl(tmp / f"{task}.shots{k}.jsonl", shots)
            files["shots"] = str(out_dir / f"{task}.shots{k}.jsonl")
        name = f"{task}_shots{k}" if k else task
        y = _task_yaml(name, spec, prompt, files, len(shots), family == "classification")
        fsutil.write_text(tmp / f"{name}.yaml",
                          yaml.dump(copy.deepcopy(y), Dumper=_Dumper, allow_unicode=True,
                                    sort_keys=False, width=1000))
        lm_tasks[k] = name
    meta = _meta(spec, lang, bench.source)
    meta.update(metric="acc", n_items=len(test), held_out_for_shots=bench.held_out, **sampled,
                n_shot=max(len(s) for s in sets.values()),
                shots=spec["shots"], shot_sets=[k for k in sets if k], lm_eval_tasks=lm_tasks,
                metrics=["acc", "macro_f1"] if family == "classification" else ["acc"])
    return meta


# ----------------------------------------------------------------------------------------------
# The table of `lrmerge tasks`


def table(cfg: dict, count: bool = False) -> list[tuple]:
    """(lang, family, task, source, n_items, n_shot, metric) for every language x family, or
    (lang, family, None, reason) where no task covers the family."""
    rows = []
    langs = list(cfg["languages"]) + ["en"]
    for lang in langs:
        entry = language_entry(cfg, lang)
        by_family: dict[str, list[str]] = {}
        for task in entry["tasks"]:
            by_family.setdefault(task_spec(cfg, task)["family"], []).append(task)
        for family in FAMILIES:
            if family not in by_family:
                reason = (entry.get("gaps") or {}).get(family) or "no task of this family in config"
                rows.append((lang, family, None, reason))
                continue
            for task in by_family[family]:
                spec = task_spec(cfg, task)
                rows.append((lang, family, task, source_label(cfg, spec),
                             *_counts(cfg, lang, task, spec, count)))
    return rows


def _counts(cfg, lang, task, spec, count: bool) -> tuple[str, str, str]:
    kind, family = spec["kind"], spec["family"]
    if kind == "builtin":
        return "-", "lm-eval", "lm-eval's"
    metric = "acc,macro_f1" if family == "classification" else "acc"
    shots = spec["shots"]
    n_shot = "1/label" if shots == "per_label" else str(shots)
    if len(cfg["evaluate"]["shot_seeds"]) > 1 and shots:
        n_shot += f"x{len(cfg['evaluate']['shot_seeds'])}"
    n, published = test_items(cfg, lang, task, spec, count)
    shown = "?" if n is None else f"{n}*" if published else str(n)
    return shown, n_shot, f"{metric}/{spec['protocol']}"


def test_items(cfg: dict, lang: str, task: str, spec: dict, count: bool = False
               ) -> tuple[int | None, bool]:
    """(test items, whether that is the release's published size rather than a count). The
    data is read when `count` (generated tasks always: it costs nothing); None: unknown."""
    kind = spec["kind"]
    if kind == "builtin":
        return None, False
    if count or kind == "generated":
        return len(read_benchmark(cfg, lang, task, spec).test), False
    key = (kind, _milic_folder(spec) if kind == "milic" else None)
    return bm.PUBLISHED_ITEMS.get(key), True
