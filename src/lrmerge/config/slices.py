"""What each rule's command reads of the config, and the job resources of each rule.

A rule's params are exactly its slice (so a changed key re-runs exactly the jobs that read it),
and the command sees the config pruned to it (so a key it reads but that is not listed fails
loudly, in the tests, instead of silently escaping the rerun triggers).
"""

from __future__ import annotations

import os

from .load import load_config
from .study import all_tasks, entry_key, language_entry

# What a tokenized folder's job reads besides its corpus.
SHARD_KEYS = ["data.shard_tokens", "data.document_separator", "data.add_bos", "data.pad"]


def job_resources(config: dict, rule: str) -> dict:
    """A rule's `resources` entry over `resources.default` (threads and executor resources)."""
    res = config["resources"]
    return {**res["default"], **res.get(rule, {})}


def _train_tokenizer(config: dict, lang: str | None) -> list[str]:
    return ["seed", "mini.tokenizer_docs", "mini.tokenizer_vocab", "mini.vocab_extension",
            "languages.*.corpus", "languages.*.based_on"]


def _extend_tokenizer(config: dict, lang: str) -> list[str]:
    keys = ["seed", f"languages.{lang}.tokenizer", f"languages.{lang}.corpus",
            f"languages.{lang}.based_on"]
    if language_entry(config, lang)["corpus"]["kind"] == "generated":
        keys.append("mini.code_switch")
    return keys


def _prepare_corpus(config: dict, lang: str) -> list[str]:
    keys = [f"{entry_key(lang)}.corpus", "continual_pretrain.seq_len",
            "continual_pretrain.english_ratio", "continual_pretrain.data_margin", *SHARD_KEYS]
    if lang == "en":  # sized for every language's English replay, and the mini's base
        keys += ["languages.*.budgets", "base_model"]
        if config["base_model"] is None:
            keys += ["pretrain.steps", "pretrain.batch_size", "pretrain.seq_len"]
    else:  # a vocabulary variant reads its base's text (generated: the same documents)
        keys += [f"languages.{lang}.budgets", f"languages.{lang}.based_on"]
    keys.append("seed")  # the seeded order its documents are drawn in
    if language_entry(config, lang)["corpus"]["kind"] == "generated" and lang != "en":
        keys.append("mini.code_switch")
    return keys


def _prepare_sft_data(config: dict, lang: str | None) -> list[str]:
    # seed: the mixture's sample and order
    keys = ["seed", "sft.data", "sft.join", "sft.seq_len", "sft.steps", "sft.batch_size",
            *SHARD_KEYS]
    if config["sft"]["data"]["kind"] == "generated":  # English test items are held out
        keys += ["mini.sft_examples", "mini.eval_examples", "english.tasks"]
        keys += [f"evaluate.sources.{t}" for t in config["english"]["tasks"]]
    return keys


def _build_tasks(config: dict, lang: str) -> list[str]:
    ev, entry = config["evaluate"], entry_key(lang)
    tasks = language_entry(config, lang)["tasks"]
    kinds = {ev["sources"][t]["kind"] for t in tasks}
    keys = [f"{entry}.tasks", *(f"evaluate.sources.{t}" for t in tasks),
            "evaluate.prompt_language", "evaluate.protocol", "evaluate.shot_seeds",
            "evaluate.max_gen_toks", "evaluate.shots", "evaluate.max_text_chars", "evaluate.limit",
            "evaluate.limit_seed"]
    if ev["limit"] is not None and ev["limit_seed"] is None:
        keys.append("seed")  # the sample's seed
    if "milic" in kinds:
        keys.append("evaluate.milic_root")
    if kinds - {"generated", "builtin"}:  # prompts that name the language
        keys += [f"{entry}.name", f"{entry}.prompt_name", f"{entry}.prompt_name_zh"]
    if "generated" in kinds:
        keys += ["seed", "mini.eval_examples", "mini.fewshot_examples"]
        if lang != "en":
            keys.append(f"{entry}.corpus")  # the generated language's script
    return keys


def _evaluate(config: dict, lang: str) -> list[str]:
    """lang: the model's languages, joined by "+"."""
    return ["seed", "evaluate.batch_size", "evaluate.device", "evaluate.dtype",
            *(f"{entry_key(lg)}.tasks" for lg in lang.split("+"))]


def _plot(config: dict, lang: str | None) -> list[str]:
    # based_on: a vocabulary variant shares its text language's panels
    return ["languages.*.name", "languages.*.tasks", "languages.*.based_on", "english.tasks",
            *(f"evaluate.sources.{t}.family" for t in all_tasks(config))]


# rule -> (config, lang) -> the dotted config paths its command reads (`*`: every key there)
RULE_KEYS = {
    "train_tokenizer": _train_tokenizer,
    "extend_tokenizer": _extend_tokenizer,
    "prepare_corpus": _prepare_corpus,
    "prepare_sft_data": _prepare_sft_data,
    "pretrain_base": lambda config, lang: ["seed", "pretrain", "mini.model"],
    # every budget: the step count and decay depend on them
    "continual_pretrain": lambda config, lang: ["seed", "continual_pretrain",
                                                f"languages.{lang}.budgets"],
    "finetune_sft": lambda config, lang: ["seed", "sft"],
    "ct_then_sft": lambda config, lang: ["seed", "sft"],
    "build_tasks": _build_tasks,
    "evaluate": _evaluate,
    # based_on: a variant's models are scored on its text language's tasks; tokenizer: which
    # languages have an extended one (the vocabulary table)
    # seq_len, english_ratio, sft steps: which blocks and sequences each run read (data.csv)
    "aggregate": lambda config, lang: ["languages.*.budgets", "languages.*.tasks",
                                       "languages.*.based_on", "languages.*.tokenizer",
                                       "english.tasks", "merge", "evaluate.collapse_share",
                                       "continual_pretrain.seq_len",
                                       "continual_pretrain.english_ratio", "sft.steps",
                                       "sft.batch_size", "sft.seq_len"],
    "plot": _plot,
}


def rule_keys(config: dict, rule: str, lang: str | None = None) -> list[str]:
    """Dotted config paths a rule's command reads (`*`: every key at that level)."""
    if rule not in RULE_KEYS:
        raise KeyError(f"no config slice for rule {rule!r}")
    return RULE_KEYS[rule](config, lang)


def prune(config: dict, paths: list[str]) -> dict:
    """The parts of `config` at the dotted `paths`, nested as in the config. A path that is not
    in the config (an optional key left out) is skipped."""
    out: dict = {}

    def walk(src, dst, parts):
        key, rest = parts[0], parts[1:]
        keys = list(src) if key == "*" else [key]
        for k in keys:
            if not isinstance(src, dict) or k not in src:
                continue
            if not rest:
                dst[k] = src[k]
            elif isinstance(src[k], dict):
                walk(src[k], dst.setdefault(k, {}), rest)

    for path in paths:
        walk(config, out, path.split("."))
    return out


def rule_config(config: dict, rule: str, lang: str | None = None) -> dict:
    """The config as a rule's command sees it: only what it reads."""
    return prune(config, rule_keys(config, rule, lang))


def load_rule_config(path: str | os.PathLike, rule: str, lang: str | None = None) -> dict:
    return rule_config(load_config(path), rule, lang)
