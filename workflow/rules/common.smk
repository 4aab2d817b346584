# Helpers, validation, wildcard constraints and input functions. The rules files hold rules only.
import os
import re
from pathlib import Path

import yaml
from snakemake.utils import validate

from lrmerge.config import (
    Layout,
    check_config,
    expand_variants,
    extends_vocabulary,
    job_resources,
    merge_args as merge_config_args,
    plan_merges,
    plan_models,
    rule_config,
    schema_path,
    target_stats_budget,
)
from lrmerge.config.layout import (
    BASE_ID,
    FIGURE_FORMATS,
    RELATIVE,
    SFT_ID,
    ct_id,
    ct_sft_id,
    merge_id,
    root_of,
)
from lrmerge.report import figure_names


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
expand_variants(config, CONFIG)  # vocabulary variants filled from their base entries
validate(config, schema=str(schema_path()))
check_config(config, CONFIG)

L = Layout.of(config)  # every path of the run (lrmerge.config.layout)
RESULTS = L.root
LOGS = L.logs
LANGS = list(config["languages"])
MODELS = {m.id: m for m in plan_models(config)}
MERGES = {m.id: m for m in plan_merges(config)}
# The paper starts from a hub model; the mini preset builds its own base.
BASE_IS_BUILT = config["base_model"] is None
BASE = L.model(BASE_ID) if BASE_IS_BUILT else config["base_model"]
# The tokenizer every corpus is tokenized with: the base model's, or the one the mini trains.
TOKENIZER = L.tokenizer() if BASE_IS_BUILT else config["base_model"]


def _alternatives(values):
    return "|".join(re.escape(str(v)) for v in values)


wildcard_constraints:
    lang=_alternatives(LANGS),
    corpus=_alternatives(LANGS + ["en"]),
    tokens=_alternatives(
        sorted({n for f in config["languages"].values() for n in f["budgets"]})
    ),
    variant=_alternatives(sorted({m.variant for m in MERGES.values()}) or ["-"]),
    group=_alternatives(sorted({m.group for m in MERGES.values()}) or ["-"]),
    model=_alternatives(MODELS),


def output_dir(wildcards, output):
    """The model folder a training or merge rule fills (its output is a file inside it)."""
    return os.path.dirname(output[0])


def data_dir(wildcards, input):
    """The token folder of a training rule's `data` input (its manifest.json)."""
    return os.path.dirname(input.data)


def english_dir(wildcards, input):
    return os.path.dirname(input.english)


def init_dir(wildcards, input):
    return os.path.dirname(input.init)


def tasks_root(wildcards, output):
    """The folder of every language's task folder (build_tasks' output is one of them)."""
    return os.path.dirname(output[0])


def results_dir(wildcards, input):
    """The run's results folder, from the report's inputs (so that it follows a storage prefix)."""
    return root_of(input.evals[0], RELATIVE.eval(next(iter(MODELS))))


def tokenizer_input(wildcards=None):
    return [f"{TOKENIZER}/tokenizer.json"] if BASE_IS_BUILT else []


def extended(lang):
    """Whether a language (or "en") runs with its own extended tokenizer."""
    return lang in LANGS and extends_vocabulary(config, lang)


def corpus_tokenizer(wildcards):
    """The tokenizer a corpus is tokenized with: its extended one, or the base's."""
    corpus = wildcards.corpus
    return L.language_tokenizer(corpus) if extended(corpus) else TOKENIZER


def corpus_tokenizer_input(wildcards):
    if extended(wildcards.corpus):
        return [f"{L.language_tokenizer(wildcards.corpus)}/tokenizer.json"]
    return tokenizer_input()


def ct_tokenizer_input(wildcards):
    if extended(wildcards.lang):
        return [f"{L.language_tokenizer(wildcards.lang)}/tokenizer.json"]
    return []


def ct_tokenizer_arg(wildcards):
    """--tokenizer for CT with an extended tokenizer (the model grows its vocabulary to it)."""
    if extended(wildcards.lang):
        return f"--tokenizer {L.language_tokenizer(wildcards.lang)}"
    return ""


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


def base_input(wildcards=None):
    return [L.summary(BASE_ID)] if BASE_IS_BUILT else []


def previous_ct(wildcards):
    """The id of the previous budget's CT model, or None at the first budget (the base)."""
    tokens = int(wildcards.tokens)
    chain = config["languages"][wildcards.lang]["budgets"]
    if tokens not in chain:
        raise ValueError(f"{tokens} is not a budget of {wildcards.lang}: {chain}")
    i = chain.index(tokens)
    return None if i == 0 else ct_id(wildcards.lang, chain[i - 1])


def ct_init_dir(wildcards):
    """The previous budget's checkpoint, or the base for the first budget."""
    previous = previous_ct(wildcards)
    return BASE if previous is None else L.model(previous)


def ct_init_input(wildcards):
    previous = previous_ct(wildcards)
    return base_input() if previous is None else [L.summary(previous)]


def merge_job(wildcards):
    key = merge_id(wildcards.variant, wildcards.group, wildcards.tokens)
    if key not in MERGES:
        raise ValueError(f"no merge {key} in the config")
    return MERGES[key]


def merge_inputs(wildcards):
    m = merge_job(wildcards)
    inputs = {f"ct_{lang}": L.summary(ct_id(lang, m.tokens)) for lang in m.languages}
    inputs["sft"] = L.summary(SFT_ID)
    if m.row.reads_base:
        inputs["base"] = base_input()
    first = target_stats_budget(m, config)
    if first is not None:  # the merge stats a slack: auto merge aims at
        inputs["target"] = L.summary(merge_id(m.variant, m.group, first))
    return inputs


def merge_args(wildcards):
    """The lrmerge merge-config arguments for one merge (lrmerge.config.merge_args)."""
    return " ".join(merge_config_args(merge_job(wildcards), config, L, BASE))


def model_dir(wildcards):
    return BASE if wildcards.model == BASE_ID else L.model(wildcards.model)


def evaluate_inputs(wildcards):
    m = MODELS[wildcards.model]
    model = base_input() if m.id == BASE_ID else [L.summary(m.id)]
    return {"model": model, "tasks": [L.tasks(lang) for lang in m.eval_languages]}


def eval_langs(wildcards):
    return " ".join(f"--lang {lang}" for lang in MODELS[wildcards.model].eval_languages)


def all_evals():
    return [L.eval(model_id) for model_id in MODELS]


def all_merge_stats():
    return [L.summary(model_id) for model_id in MERGES]


def report_manifests():
    """Every token folder's manifest: a language's text counts (tables/vocabulary.csv, and the
    characters estimate of a CT summary from before text was counted), and what each CT
    budget and SFT-flan read per subset and task (tables/data.csv)."""
    return [L.manifest(lang) for lang in LANGS] + [L.manifest("en"), L.manifest("sft")]


def report_ct_summaries():
    """Every CT model's summary: the target-language text it saw (the scores' characters)."""
    return [
        L.summary(ct_id(lang, tokens))
        for lang in LANGS
        for tokens in config["languages"][lang]["budgets"]
    ]


def report_tokenizers():
    """The extended tokenizers (extend_tokenizer's output); the report reads the
    vocab_extension.json written beside each tokenizer.json."""
    return [
        f"{L.language_tokenizer(lang)}/tokenizer.json"
        for lang in LANGS
        if extended(lang)
    ]


def figure_caption(name, family):
    """(caption file under workflow/report/, `figure` label) of a report figure."""
    if family:
        return "saturation_family", "saturation"
    return name, name


def report_figures():
    """The report's figures (lrmerge.report.figure_names); the PNGs flagged for `snakemake
    --report`, each with its caption. The PDFs are the same figures, for papers."""
    flagged = []
    for name, family in figure_names(config):
        caption, figure = figure_caption(name, family)
        for fmt in FIGURE_FORMATS:
            path = L.figure(name, fmt)
            if fmt != "png":
                flagged.append(path)
                continue
            item = report(
                path,
                caption=f"../report/{caption}.rst",
                category="Report",
                subcategory="Figures",
                labels={"figure": figure, "family": family or "all"},
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
    return [L.table("scores"), L.table("discarded")] + [
        L.figure(name, fmt)
        for name, _ in figure_names(config)
        for fmt in FIGURE_FORMATS
    ]
