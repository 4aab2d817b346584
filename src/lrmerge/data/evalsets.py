"""Evaluation sets: task data (jsonl) and declarative lm-eval task YAMLs per language, generated
(mini) or read from a benchmark's files (MiLiC-Eval, SIB-200, ...)."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from lrmerge import fsutil
from lrmerge.config import language_entry
from lrmerge.data.sources import load_hf
from lrmerge.data.synthetic import FAMILIES, Grammar, lexicon, mc_item


def task_family(cfg: dict, task: str) -> str:
    """The task family of a task name: `evaluate.sources[task].family`, else the name's prefix."""
    src = (cfg.get("evaluate", {}).get("sources") or {}).get(task)
    if src and src.get("family"):
        fam = src["family"]
    else:
        fam = task.split("_", 1)[0]
    if fam not in FAMILIES:
        raise ValueError(f"task {task!r}: cannot tell its family (expected a name starting with "
                         f"one of {', '.join(FAMILIES)}, or evaluate.sources.{task}.family)")
    return fam


ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def mc_task_yaml(task: str, files: dict[str, str], fewshot: bool) -> dict:
    """A declarative lm-eval multiple-choice task (scored by log-likelihood of each choice)."""
    y = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": ACC,
        "metadata": {"version": 1.0},
    }
    if fewshot:
        y["fewshot_split"] = "train"
        y["fewshot_delimiter"] = "\n\n"
    return y


def gen_task_yaml(task: str, files: dict[str, str], fewshot: bool, max_gen_toks: int) -> dict:
    """A generative lm-eval task: greedy decoding, first line, first number compared."""
    y = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "query",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": int(max_gen_toks),
                              "do_sample": False},
        "filter_list": [{"name": "first_number", "filter": [
            {"function": "regex", "regex_pattern": r"(-?[0-9]+(?:\.[0-9]+)?)", "group_select": 0},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True, "ignore_case": True,
                         "ignore_punctuation": False}],
        "metadata": {"version": 1.0},
    }
    if fewshot:
        y["fewshot_split"] = "train"
        y["fewshot_delimiter"] = "\n\n"
    return y


def _as_generative(row: dict) -> dict:
    return {"query": row["query"], "answer": str(row["choices"][row["gold"]]).replace(" ", "")}


def generated_task_rows(cfg: dict, lang: str, task: str, family: str, split: str,
                         n: int) -> list[dict]:
    seed = int(cfg.get("seed", 0))
    # The split is in the RNG key, so test items are drawn independently of few-shot items.
    g = Grammar(random.Random(f"eval:{seed}:{task}:{split}"))
    return [mc_item(family, g, lexicon(cfg, lang)) for _ in range(n)]


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise KeyError(f"{where}: a row has no field {name!r} (fields: {', '.join(row)})")
    return row[name]


def _source_task_rows(spec: dict, split_key: str, where: str) -> list[dict]:
    """Task rows from a dataset on disk or the hub, normalised to {query, choices, gold}.

    `spec` maps the source's fields: `text_field` (the query), `choices_field` (a list) or
    `choices` (a fixed label list), `label_field` (an index, or the label text), optional
    `question_field` appended to the query, and `template` (a str.format over the row)."""
    load = dict(spec)
    load.update(spec.get(split_key) or {})
    ds = load_hf(load, f"{where}.{split_key}")
    rows = []
    limit = spec.get("max_examples")
    for row in ds:
        if limit is not None and len(rows) >= int(limit):
            break
        if spec.get("template"):
            try:
                query = spec["template"].format(**row)
            except KeyError as e:
                raise KeyError(f"{where}.template names field {e} not in the data "
                               f"(fields: {', '.join(row)})") from None
        else:
            query = str(_field(row, spec.get("text_field", "text"), where))
            if spec.get("question_field"):
                query += "\n" + str(_field(row, spec["question_field"], where))
        if spec.get("choices") is not None:
            choices = [str(c) for c in spec["choices"]]
        else:
            choices = [str(c) for c in _field(row, spec.get("choices_field", "choices"), where)]
        label = _field(row, spec.get("label_field", "label"), where)
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in choices:
                raise ValueError(f"{where}: label {label!r} is not among the choices {choices}")
            gold = choices.index(label)
        else:
            gold = int(label) - int(spec.get("label_offset", 0))
        if not 0 <= gold < len(choices):
            raise ValueError(f"{where}: label {label!r} out of range for {len(choices)} choices")
        rows.append({"query": query + spec.get("prompt_suffix", ""), "choices": choices,
                     "gold": gold})
    if not rows:
        raise ValueError(f"{where}.{split_key}: no examples")
    return rows


# MiLiC-Eval (hub pkupie/milic-eval): files data/<task>/<lang>/{train_1..3,dev,test}.json. The
# record fields are not documented offline; these defaults are ours and each is a config key.
MILIC_DEFAULTS = {"repo": "pkupie/milic-eval", "fewshot_file": "train_1", "test_file": "test",
                  "text_field": "text", "choices_field": "options", "label_field": "answer"}


def milic_spec(spec: dict, where: str) -> dict:
    """A `kind: milic` source as `kind: hf` load arguments (json files of the MiLiC repo)."""
    s = dict(MILIC_DEFAULTS, **spec)
    for key in ("task", "lang"):
        if not s.get(key):
            raise ValueError(f"config key {where}.{key} is required for kind: milic "
                             "(the folder data/<task>/<lang>/ of the benchmark)")
    folder = f"data/{s['task']}/{s['lang']}"
    out = {k: v for k, v in s.items() if k not in ("repo", "task", "lang", "fewshot_file",
                                                    "test_file")}
    out.update(kind="hf", path=s["repo"], split="train",
               test={"data_files": f"{folder}/{s['test_file']}.json"})
    if s.get("fewshot_file"):
        out["fewshot"] = {"data_files": f"{folder}/{s['fewshot_file']}.json"}
    return out


def build_eval(cfg: dict, lang: str, out_dir: str | Path) -> list[str]:
    """Write the task data (jsonl) and lm-eval task YAMLs of a language into `out_dir`.

    Returns the task names written. Built-in lm-eval tasks (evaluate.sources.<task>.kind:
    builtin) need no files and are skipped."""
    out_dir = Path(out_dir).resolve()
    ev = cfg.get("evaluate") or {}
    entry = language_entry(cfg, lang)
    tasks = entry.get("tasks") or []
    where_tasks = "english.tasks" if lang == "en" else f"languages.{lang}.tasks"
    if not tasks:
        raise ValueError(f"config key {where_tasks} is empty")
    sources = ev.get("sources") or {}
    mini = cfg.get("mini") or {}
    math_format = ev.get("math_format", "multiple_choice")
    if math_format not in ("multiple_choice", "generate"):
        raise ValueError(f"evaluate.math_format: {math_format!r} is not multiple_choice or "
                         "generate")
    n_test = int(mini.get("eval_examples", 100))
    n_shot = int(mini.get("fewshot_examples", 20))
    written = []
    # Files are written into a temporary folder and the folder renamed at the end; the YAMLs
    # name the final (absolute) paths, since lm-eval resolves data_files against the cwd.
    with fsutil.atomic_dir(out_dir) as tmp:
        for task in tasks:
            written += _write_task(cfg, lang, task, entry, sources, where_tasks, math_format,
                                   n_test, n_shot, out_dir, tmp, ev)
        if written:
            group = {"group": f"lrmerge_{lang}", "task": written}
            fsutil.write_text(tmp / f"_group_{lang}.yaml", yaml.safe_dump(group, sort_keys=False))
    return written


def _write_task(cfg, lang, task, entry, sources, where_tasks, math_format, n_test, n_shot,
                out_dir: Path, tmp: Path, ev: dict) -> list[str]:
    """Write one task's data and YAML into `tmp` (paths in the YAML under `out_dir`)."""
    spec = sources.get(task)
    if spec is None and (entry.get("corpus") or {}).get("kind") != "generated":
        raise ValueError(f"task {task!r} ({where_tasks}) has no evaluate.sources.{task} "
                         "entry and the language is not generated")
    if spec is not None and spec.get("kind") == "builtin":
        return []
    family = task_family(cfg, task)
    where = f"evaluate.sources.{task}"
    if spec is None:
        test = generated_task_rows(cfg, lang, task, family, "test", n_test)
        shots = generated_task_rows(cfg, lang, task, family, "train", n_shot)
    else:
        if spec.get("kind") == "milic":
            spec = milic_spec(spec, where)
        if spec.get("kind", "hf") != "hf":
            raise ValueError(f"{where}.kind: {spec.get('kind')!r} is not one of hf, milic, "
                             "builtin")
        test = _source_task_rows(spec, "test", where)
        shots = _source_task_rows(spec, "fewshot", where) if spec.get("fewshot") else []
    generative = family == "math" and math_format == "generate"
    if spec is not None and spec.get("format"):
        generative = spec["format"] == "generate"
    if generative:
        test = [_as_generative(r) for r in test]
        shots = [_as_generative(r) for r in shots]
    files = {"test": str(out_dir / f"{task}.test.jsonl")}
    fsutil.write_jsonl(tmp / f"{task}.test.jsonl", test)
    if shots:
        files["train"] = str(out_dir / f"{task}.train.jsonl")
        fsutil.write_jsonl(tmp / f"{task}.train.jsonl", shots)
    if generative:
        y = gen_task_yaml(task, files, bool(shots), int(ev.get("max_gen_toks", 16)))
    else:
        y = mc_task_yaml(task, files, bool(shots))
    fsutil.write_text(tmp / f"{task}.yaml", yaml.safe_dump(y, allow_unicode=True,
                                                            sort_keys=False))
    return [task]

