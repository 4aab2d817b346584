# Helpers, validation, wildcard constraints and input functions. The rules files hold rules only.
import os
import re
from pathlib import Path

import yaml
from snakemake.utils import validate

from lrmerge.config import (
    NO_BASE,
    ONE_LANGUAGE,
    check_config,
    job_resources,
    language_entry,
    plan_merges,
    plan_models,
    rule_config,
    target_stats_budget,
    task_families,
)


def config_file():
    """The single config file the run uses; CLI commands read it (it is the config Snakemake sees)."""
    given = [Path(p) for p in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise ValueError(
            "pass one --configfile: lrmerge commands read a single config file, got "
            + ", ".join(map(str, given))
        )
    path = given[0] if given else Path(workflow.basedir) / "config" / "config.yaml"
    with open(path, encoding="utf-8") as fh:
        on_disk = yaml.safe_load(fh)
    # --config KEY=VALUE would change what Snakemake sees but not what the commands read.
    overrides = workflow.config_settings.overwrite_config
    if overrides and overrides != on_disk:
        raise ValueError(
            f"--config overrides are not supported (commands read {path}): "
            "edit a copy of the config file and pass it with --configfile"
        )
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


CONFIG = config_file()
validate(config, schema="../schemas/config.schema.yaml")
check_config(config, CONFIG)

RUN = config["run_name"]
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"
LANGS = list(config["languages"])
MODELS = {m.id: m for m in plan_models(config)}
MERGES = {f"{m.variant}/{m.group}/{m.tokens}": m for m in plan_merges(config)}
# The paper starts from a hub model; the mini preset builds its own base.
BASE_IS_BUILT = config["base_model"] is None
BASE = f"{RESULTS}/models/base" if BASE_IS_BUILT else config["base_model"]
# The tokenizer every corpus is tokenized with: the base model's, or the one the mini trains.
TOKENIZER = f"{RESULTS}/data/tokenizer" if BASE_IS_BUILT else config["base_model"]


def _alternatives(values):
    return "|".join(re.escape(str(v)) for v in values)


wildcard_constraints:
    lang=_alternatives(LANGS),
    corpus=_alternatives(LANGS + ["en"]),
    tokens=_alternatives(
        sorted({n for f in config["languages"].values() for n in f["budgets"]})
    ),
    method=_alternatives(sorted({m.variant for m in MERGES.values()}) or ["-"]),
    group=_alternatives(sorted({m.group for m in MERGES.values()}) or ["-"]),
    model=_alternatives(MODELS),


def summary(folder):
    """A model folder's completion marker: train_summary.json or, for merges, merge_stats.json."""
    merged = Path(folder).parent.parent.parent.name == "merge"
    return f"{folder}/{'merge_stats.json' if merged else 'train_summary.json'}"


def output_dir(wildcards, output):
    """The model folder a training or merge rule fills (its output is a file inside it)."""
    return os.path.dirname(output[0])


def data_dir(wildcards, input):
    """The token folder of a training rule's `data` input (its manifest.json)."""
    return os.path.dirname(input.data)


def english_dir(wildcards, input):
    return os.path.dirname(input.english)


def tokenizer_input(wildcards=None):
    return [f"{TOKENIZER}/tokenizer.json"] if BASE_IS_BUILT else []


def rule_threads(rule):
    return job_resources(config, rule).get("threads", 1)


def rule_resources(rule):
    """What a rule's jobs ask of the executor (gpu, cpus_per_task, mem_mb, runtime, ...)."""
    return {k: v for k, v in job_resources(config, rule).items() if k != "threads"}


def config_slice(name):
    """A params function: exactly what the rule's command reads of the config, so a changed key
    re-runs exactly the jobs that read it (lrmerge.config.rule_keys; commands see only that).
    """

    def get(wildcards):
        if name == "evaluate":
            lang = "+".join(MODELS[wildcards.model].eval_languages)
        else:
            lang = getattr(wildcards, "corpus", None) or getattr(
                wildcards, "lang", None
            )
        return rule_config(config, name, lang)

    return get


def launcher(wildcards, resources):
    """`lrmerge train`, or one process per GPU (lrmerge.train.launch) when a job has several."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f"python -m lrmerge.train.launch --nproc {gpus}"
    return "lrmerge train"


def init_dir(wildcards, input):
    return os.path.dirname(input.init)


def eval_dir(wildcards, input):
    # results/{run}/eval: every evaluation lies below it, base.json and sft.json directly.
    return os.path.commonpath(input.evals)


def models_dir(wildcards, input):
    return os.path.join(os.path.dirname(eval_dir(wildcards, input)), "models")


def tasks_dir(wildcards, input):
    return os.path.dirname(input.tasks[0])


def figures_dir(wildcards, output):
    return os.path.dirname(output[0])


def base_input(wildcards=None):
    return [summary(BASE)] if BASE_IS_BUILT else []


def budgets(lang):
    return config["languages"][lang]["budgets"]


def ct_init_dir(wildcards):
    """The previous budget's checkpoint, or the base for the first budget."""
    tokens = int(wildcards.tokens)
    chain = budgets(wildcards.lang)
    if tokens not in chain:
        raise ValueError(f"{tokens} is not a budget of {wildcards.lang}: {chain}")
    i = chain.index(tokens)
    return BASE if i == 0 else f"{RESULTS}/models/ct/{wildcards.lang}/{chain[i - 1]}"


def ct_init_input(wildcards):
    init = ct_init_dir(wildcards)
    return [summary(init)] if init != BASE or BASE_IS_BUILT else []


def merge_spec(wildcards):
    key = f"{wildcards.method}/{wildcards.group}/{wildcards.tokens}"
    if key not in MERGES:
        raise ValueError(f"no merge {key} in the config")
    return MERGES[key]


def merge_inputs(wildcards):
    m = merge_spec(wildcards)
    inputs = {
        f"ct_{lang}": summary(f"{RESULTS}/models/ct/{lang}/{m.tokens}")
        for lang in m.languages
    }
    inputs["sft"] = summary(f"{RESULTS}/models/sft")
    if m.method not in NO_BASE:
        inputs["base"] = base_input()
    first = target_stats_budget(m, config)
    if first is not None:
        inputs["target"] = target_stats(m, first)
    return inputs


def target_stats(m, tokens):
    """The merge stats whose per-tensor discarded fractions a slack: auto merge aims at."""
    return summary(f"{RESULTS}/models/merge/{m.variant}/{m.group}/{tokens}")


def merge_args(wildcards):
    """The lrmerge merge-config arguments for one merge."""
    m = merge_spec(wildcards)
    args = ["--method", m.method]
    if m.method not in NO_BASE:
        args += ["--base", BASE]
    single = len(m.languages) == 1
    weighted = (
        m.method not in ONE_LANGUAGE
    )  # chat_vector and layer_swap weigh by themselves
    for lang, weight in zip(m.languages, m.weights):
        name = "ct" if single else f"ct_{lang}"
        at = f"@{weight:g}" if weighted else ""
        args += ["--model", f"{name}={RESULTS}/models/ct/{lang}/{m.tokens}{at}"]
    at = f"@{m.weights[-1]:g}" if weighted else ""
    args += ["--model", f"sft={RESULTS}/models/sft{at}"]
    for key, value in m.params.items():
        flag = f"--{key.replace('_', '-')}"
        if key == "target_discarded" and value == "first_budget":
            first = target_stats_budget(m, config)
            # at the first budget the target is the merge's own fraction: nothing is reserved
            value = target_stats(m, first) if first is not None else 1.0
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if m.method == "ties_sv":
        args += ["--protect", "sft"]
    if m.method == "layer_swap":
        args += ["--task-model", "sft"]
    return " ".join(args)


def model_dir(wildcards):
    return BASE if wildcards.model == "base" else f"{RESULTS}/models/{wildcards.model}"


def evaluate_inputs(wildcards):
    m = MODELS[wildcards.model]
    model = base_input() if m.kind == "base" else [summary(model_dir(wildcards))]
    return {
        "model": model,
        "tasks": [f"{RESULTS}/tasks/{lang}" for lang in m.eval_languages],
    }


def eval_langs(wildcards):
    return " ".join(f"--lang {lang}" for lang in MODELS[wildcards.model].eval_languages)


def all_evals():
    return [f"{RESULTS}/eval/{model_id}.json" for model_id in MODELS]


def all_merge_stats():
    return [summary(f"{RESULTS}/models/merge/{key}") for key in MERGES]


def figures():
    """The report's figures: saturation (families averaged), saturation of each task family
    in the config, discarded parameters, and where they are lost (layer map, per module).
    """
    families = [f"saturation_{f}" for f in task_families(config)]
    names = ["saturation", *families, "discarded", "discarded_map", "discarded_modules"]
    return [
        f"{RESULTS}/figures/{name}.{ext}" for name in names for ext in ("png", "pdf")
    ]


def report_figures():
    """The figures; the PNGs flagged for `snakemake --report`, each with its caption."""
    flagged = []
    for path in figures():
        name = Path(path).stem
        if not path.endswith(".png"):
            flagged.append(path)  # the PDFs: the same figures, for papers
            continue
        family = name.partition("_")[2] if name.startswith("saturation_") else ""
        if name.startswith("discarded"):
            caption = name
        else:
            caption = "saturation_family" if family else "saturation"
        item = report(
            path,
            caption=f"../report/{caption}.rst",
            category="Report",
            subcategory="Figures",
            labels={
                "figure": name if name.startswith("discarded") else "saturation",
                "family": family or "all",
            },
        )
        flagged.append(item)
    return flagged


def eval_subcategory(wildcards):
    return MODELS[wildcards.model].variant


def eval_labels(wildcards):
    """Report labels of an evaluation: its model's method, language and CT tokens."""
    m = MODELS[wildcards.model]
    return {
        "method": m.variant,
        "language": m.language or "-",
        "tokens": str(m.tokens) if m.tokens else "-",
    }


def get_final_output():
    return [
        f"{RESULTS}/tables/scores.csv",
        f"{RESULTS}/tables/discarded.csv",
    ] + figures()
