"""Load and validate a workflow config; enumerate the models a config asks for.

`load_config` validates against `workflow/schemas/config.schema.yaml`, the schema Snakemake's
`validate()` uses, filling defaults the same way, then runs `check_config` for what a schema cannot
express. The Snakefile calls the same `check_config` and the same enumeration (`plan_models`), so the
workflow, the CLI commands and the report agree on what exists.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lrmerge.merge.config import NO_BASE as NO_BASE  # re-exported for the workflow
from lrmerge.merge.config import OWN_WEIGHTS

SCHEMA_ENV = "LRMERGE_SCHEMA"
# Engine methods (lrmerge merge) and which of them elect signs and so discard entries.
ENGINE_METHODS = ("average", "task_arithmetic", "ties", "ties_sv", "dare_ties", "chat_vector",
                  "layer_swap")
TRIMMING_METHODS = ("ties", "ties_sv", "dare_ties")
# Parameters each engine method takes besides weights.
METHOD_PARAMS = {
    "average": set(),
    "task_arithmetic": {"lambda"},
    "ties": {"density", "lambda"},
    "ties_sv": {"density", "lambda", "slack", "target_discarded"},
    "dare_ties": {"density", "lambda"},
    "chat_vector": {"ratio", "skip_embed"},
    "layer_swap": {"bottom", "top", "transition", "embed_from", "head_from"},
}
REQUIRED_PARAMS = {"ties": {"density"}, "ties_sv": {"density", "slack"}, "dare_ties": {"density"}}
# The engine's: methods that read no base model, and those with weights of their own, which merge
# exactly one CT model with SFT-flan and take no merge weights.
ONE_LANGUAGE = OWN_WEIGHTS


class ConfigError(ValueError):
    """A config that cannot be run; the message names the file and the key."""


def schema_path() -> Path:
    """The workflow's schema: $LRMERGE_SCHEMA, else the checkout this package was installed from."""
    if os.environ.get(SCHEMA_ENV):
        return Path(os.environ[SCHEMA_ENV])
    path = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config schema not found at {path}; install lrmerge editable from its checkout "
            f"(pip install -e .) or set {SCHEMA_ENV}"
        )
    return path


def _validator(schema: dict):
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    # Fill defaults while validating, as Snakemake's validate() does (copies, so that two configs
    # never share a default object).
    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate `config` in place against the schema (defaults filled) and check it; return it."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(config).__name__}")
    with open(schema_path(), encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    errors = sorted(_validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError("invalid config\n" + "\n".join(lines))
    check_config(config, source)
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read a workflow config file and return it validated, with defaults filled."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(config, str(path))


def _fail(source: str, key: str, message: str):
    raise ConfigError(f"{source}: {key}: {message}")


# What each kind of evaluate.sources entry must say (beyond kind and family).
SOURCE_REQUIRED = {"milic": ("lang",), "sib200": ("test",), "belebele": ("test",),
                   "mgsm": ("test",), "generated": (), "builtin": ()}
# The families each benchmark kind has.
FAMILIES = ("classification", "reading_comprehension", "response_selection", "math")
SOURCE_FAMILIES = {"milic": FAMILIES, "sib200": ("classification",),
                   "belebele": ("reading_comprehension",), "mgsm": ("math",),
                   "generated": FAMILIES, "builtin": FAMILIES}


def _check_tasks(config: dict, source: str) -> None:
    """Every configured task has a source entry that says what its kind needs."""
    sources = config["evaluate"]["sources"]
    where = [(f"languages.{lang}.tasks", facts["tasks"]) for lang, facts in
             config["languages"].items()] + [("english.tasks", config["english"]["tasks"])]
    for key, tasks in where:
        for task in tasks:
            if task not in sources:
                _fail(source, key, f"task {task!r} has no evaluate.sources.{task} entry "
                      "(kind, family and where its data is)")
    for task, spec in sources.items():
        for key in SOURCE_REQUIRED[spec["kind"]]:
            if not spec.get(key):
                _fail(source, f"evaluate.sources.{task}.{key}",
                      f"required for kind: {spec['kind']}")
        if spec["family"] not in SOURCE_FAMILIES[spec["kind"]]:
            _fail(source, f"evaluate.sources.{task}.family", f"kind {spec['kind']} has no "
                  f"{spec['family']} task (it has {', '.join(SOURCE_FAMILIES[spec['kind']])})")
        if spec.get("shots") == "per_label" and spec["family"] != "classification":
            _fail(source, f"evaluate.sources.{task}.shots",
                  "per_label is for classification tasks; give a number")


def check_config(config: dict, source: str = "config") -> None:
    """The checks a JSON schema cannot express. Expects a schema-valid config."""
    languages = config["languages"]
    for lang, facts in languages.items():
        budgets = facts["budgets"]
        for i, b in enumerate(budgets):
            # JSON schema counts 2000.0 as an integer; a budget names folders, so it must be an int.
            if not isinstance(b, int) or isinstance(b, bool):
                _fail(source, f"languages.{lang}.budgets.{i}", f"{b!r} is not an integer")
        for prev, cur in zip(budgets, budgets[1:], strict=False):
            if cur <= prev:
                _fail(
                    source,
                    f"languages.{lang}.budgets",
                    f"budgets must increase (each continues the previous one), got {prev} then {cur}",
                )
    _check_tasks(config, source)
    methods = config["merge"]["methods"]
    for name, spec in methods.items():
        key = f"merge.methods.{name}"
        engine = spec.get("method", name)
        if engine not in ENGINE_METHODS:
            _fail(
                source,
                key,
                f"unknown merge method {name!r}; known: {', '.join(ENGINE_METHODS)} "
                "(or give `method:` for a named variant)",
            )
        extra = set(spec) - METHOD_PARAMS[engine] - {"method", "weights"}
        if extra:
            _fail(source, key, f"{', '.join(sorted(extra))} not used by method {engine}")
        missing = REQUIRED_PARAMS.get(engine, set()) - set(spec)
        if missing:
            _fail(source, key, f"method {engine} needs {', '.join(sorted(missing))}")
        if (spec.get("slack") == "auto") != ("target_discarded" in spec):
            _fail(source, key, "slack: auto and target_discarded (a fraction, or first_budget) "
                  "go together")
        if engine == "layer_swap" and not (spec.get("bottom") or spec.get("top")):
            _fail(source, key, "layer_swap needs bottom or top (layers taken from CT-X)")
        if engine in ONE_LANGUAGE and spec["weights"] != [[1.0, 1.0]]:
            _fail(source, f"{key}.weights", f"{engine} takes no merge weights")
        for i, pair in enumerate(spec["weights"]):
            if len(pair) != 2:
                _fail(source, f"{key}.weights[{i}]", f"give one (CT, SFT-flan) pair, got {pair}")
            if sum(pair) <= 0:
                _fail(source, f"{key}.weights[{i}]", "weights must not all be zero")
    names = set()
    for i, multi in enumerate(config["merge"]["multi"]):
        key = f"merge.multi[{i}]"
        if multi["name"] in names:
            _fail(source, f"{key}.name", f"{multi['name']!r} is used twice")
        names.add(multi["name"])
        if multi["name"] != "+".join(multi["languages"]):
            _fail(
                source,
                f"{key}.name",
                f"name must be the languages joined by '+': {'+'.join(multi['languages'])}",
            )
        for lang in multi["languages"]:
            if lang not in languages:
                _fail(source, f"{key}.languages", f"{lang!r} is not in languages")
        if len(set(multi["languages"])) != len(multi["languages"]):
            _fail(source, f"{key}.languages", "a language is listed twice")
        if multi["method"] not in methods:
            _fail(source, f"{key}.method", f"{multi['method']!r} is not in merge.methods")
        spec = methods[multi["method"]]
        if spec.get("method", multi["method"]) in ONE_LANGUAGE:
            _fail(source, f"{key}.method", f"{multi['method']!r} merges one CT model with "
                  "SFT-flan, not several")
        weights = multi.get("weights")
        if weights is not None and len(weights) != len(multi["languages"]) + 1:
            _fail(
                source,
                f"{key}.weights",
                f"give {len(multi['languages']) + 1} weights (each CT model, then SFT-flan)",
            )
        common = set.intersection(*(set(languages[lg]["budgets"]) for lg in multi["languages"]))
        tokens = multi["tokens"]
        if not common:
            _fail(source, f"{key}.tokens", "its languages share no budget")
        if isinstance(tokens, list):
            for n in tokens:
                if n not in common:
                    _fail(source, f"{key}.tokens", f"{n} is not a budget of every language")
        chosen = _chosen_budgets(sorted(common), tokens)
        if spec.get("target_discarded") == "first_budget" and min(common) not in chosen:
            _fail(source, f"{key}.tokens", f"{multi['method']!r} aims at the discarded fraction "
                  f"of the group's first budget ({min(common)}), which this entry does not merge; "
                  "add it (tokens: all, or a list with it)")


# ----------------------------------------------------------------------------------------------
# What a config asks for


def _fmt(w: float) -> str:
    return f"{w:g}"


@dataclass(frozen=True)
class MergeSpec:
    """One merge: `variant` names its folder, `name` is its config name (the table's method)."""

    variant: str
    name: str
    method: str
    group: str
    tokens: int
    languages: tuple[str, ...]
    weights: tuple[float, ...]  # one per CT model, then SFT-flan
    params: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ModelSpec:
    """A model the workflow builds (or takes, for a hub base) and evaluates."""

    id: str  # path under models/ and eval/ (eval/{id}.json)
    kind: str  # base | sft | ct | ct_sft | merge
    method: str  # table name: base, sft, ct, ct_sft or the merge's config name
    variant: str  # method, or a merge variant such as average_w1-2
    language: str  # CT language or merge group ("" for base and sft)
    tokens: int | None
    eval_languages: tuple[str, ...]


def merge_variants(config: dict) -> list[tuple[str, str, dict, tuple[float, float]]]:
    """(variant, config name, spec, (w_ct, w_sft)) for every single-language merge."""
    out = []
    for name, spec in config["merge"]["methods"].items():
        weights = spec["weights"]
        for pair in weights:
            variant = name if len(weights) == 1 else f"{name}_w{_fmt(pair[0])}-{_fmt(pair[1])}"
            out.append((variant, name, spec, tuple(float(w) for w in pair)))
    return out


def _params(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("method", "weights")}


def _chosen_budgets(common: list[int], tokens) -> list[int]:
    """A multi-language entry's budgets: of those its languages share (ascending)."""
    return common[-1:] if tokens == "max" else common if tokens == "all" else list(tokens)


def target_stats_budget(merge: MergeSpec, config: dict) -> int | None:
    """target_discarded: first_budget: the budget whose merge (the same variant and group) gives
    this merge its per-tensor targets; None at that budget itself, where the target is the merge's
    own fraction (nothing is reserved: TIES)."""
    if merge.params.get("target_discarded") != "first_budget":
        return None
    first = min(set.intersection(*(set(config["languages"][lg]["budgets"])
                                   for lg in merge.languages)))
    return None if merge.tokens == first else first


def plan_merges(config: dict) -> list[MergeSpec]:
    languages = config["languages"]
    merges = []
    for variant, name, spec, pair in merge_variants(config):
        for lang, facts in languages.items():
            for tokens in facts["budgets"]:
                merges.append(
                    MergeSpec(
                        variant,
                        name,
                        spec.get("method", name),
                        lang,
                        tokens,
                        (lang,),
                        pair,
                        _params(spec),
                    )
                )
    for multi in config["merge"]["multi"]:
        spec = config["merge"]["methods"][multi["method"]]
        langs = tuple(multi["languages"])
        common = sorted(set.intersection(*(set(languages[lg]["budgets"]) for lg in langs)))
        tokens = multi["tokens"]
        chosen = _chosen_budgets(common, tokens)
        weights = tuple(float(w) for w in multi.get("weights") or [1.0] * (len(langs) + 1))
        for n in chosen:
            merges.append(
                MergeSpec(
                    multi["method"],
                    multi["method"],
                    spec.get("method", multi["method"]),
                    multi["name"],
                    n,
                    langs,
                    weights,
                    _params(spec),
                )
            )
    return merges


def plan_models(config: dict) -> list[ModelSpec]:
    """Every model of the study, in a stable order (base, sft, ct, ct_sft, merges)."""
    langs = tuple(config["languages"])
    every = langs + ("en",)
    models = [
        ModelSpec("base", "base", "base", "base", "", None, every),
        ModelSpec("sft", "sft", "sft", "sft", "", None, every),
    ]
    for kind in ("ct", "ct_sft"):
        for lang, facts in config["languages"].items():
            for tokens in facts["budgets"]:
                models.append(
                    ModelSpec(
                        f"{kind}/{lang}/{tokens}", kind, kind, kind, lang, tokens, (lang, "en")
                    )
                )
    for m in plan_merges(config):
        models.append(
            ModelSpec(
                f"merge/{m.variant}/{m.group}/{m.tokens}",
                "merge",
                m.name,
                m.variant,
                m.group,
                m.tokens,
                m.languages + ("en",),
            )
        )
    return models


def task_families(config: dict) -> list[str]:
    """The task families the config evaluates, in the canonical order."""
    tasks = [t for facts in config["languages"].values() for t in facts["tasks"]]
    tasks += config["english"]["tasks"]
    present = {config["evaluate"]["sources"][t]["family"] for t in tasks}
    return [f for f in FAMILIES if f in present]


def tasks_of(config: dict, lang: str) -> list[str]:
    if lang == "en":
        return list(config["english"]["tasks"])
    return list(config["languages"][lang]["tasks"])


def language_entry(config: dict, lang: str) -> dict:
    """The config entry of a language code ("en" is the `english` section)."""
    if lang == "en":
        return config["english"]
    langs = config.get("languages") or {}
    if lang not in langs:
        raise KeyError(
            f"language {lang!r} is not in config key 'languages' "
            f"(configured: {', '.join(langs) or 'none'})"
        )
    return langs[lang]


def corpus_key(lang: str) -> str:
    """The config key of a language's corpus entry (for messages)."""
    return "english.corpus" if lang == "en" else f"languages.{lang}.corpus"


# ----------------------------------------------------------------------------------------------
# What each rule's command reads of the config. The rule's params are exactly this slice (so a
# changed key re-runs exactly the jobs that read it), and the command sees the config pruned to
# it (so a key it reads but that is not listed fails loudly, in the tests, instead of silently
# escaping the rerun triggers).


def _entry(lang: str) -> str:
    return "english" if lang == "en" else f"languages.{lang}"


def _generated(config: dict, lang: str) -> bool:
    return language_entry(config, lang)["corpus"]["kind"] == "generated"


def job_resources(config: dict, rule: str) -> dict:
    """A rule's `resources` entry over `resources.default` (threads and executor resources)."""
    res = config["resources"]
    return {**res["default"], **res.get(rule, {})}


def rule_keys(config: dict, rule: str, lang: str | None = None) -> list[str]:
    """Dotted config paths a rule's command reads (`*`: every key at that level)."""
    entry = _entry(lang) if lang else None
    ev = config["evaluate"]
    if rule == "train_tokenizer":
        return ["seed", "mini.tokenizer_docs", "mini.tokenizer_vocab", "mini.vocab_extension",
                "languages.*.corpus"]
    if rule == "prepare_corpus":
        keys = [f"{entry}.corpus", "continual_pretrain.seq_len", "continual_pretrain.english_ratio",
                "continual_pretrain.data_margin", "data.shard_tokens", "data.document_separator",
                "data.add_bos", "data.pad"]
        if lang == "en":  # sized for every language's English replay, and the mini's base
            keys += ["languages.*.budgets", "base_model"]
            if config["base_model"] is None:
                keys += ["pretrain.steps", "pretrain.batch_size", "pretrain.seq_len"]
        else:
            keys += [f"languages.{lang}.budgets"]
        if _generated(config, lang):
            keys += ["seed"] + (["mini.code_switch"] if lang != "en" else [])
        return keys
    if rule == "prepare_sft_data":
        keys = ["sft.data", "sft.join", "sft.seq_len", "sft.steps", "sft.batch_size",
                "data.shard_tokens", "data.document_separator", "data.add_bos", "data.pad"]
        if config["sft"]["data"]["kind"] == "generated":  # English test items are held out
            keys += ["seed", "mini.sft_examples", "mini.eval_examples", "english.tasks"]
            keys += [f"evaluate.sources.{t}" for t in config["english"]["tasks"]]
        return keys
    if rule == "pretrain_base":
        return ["seed", "pretrain", "mini.model"]
    if rule == "continual_pretrain":  # every budget: the step count and decay depend on them
        return ["seed", "continual_pretrain", f"languages.{lang}.budgets"]
    if rule in ("finetune_sft", "ct_then_sft"):
        return ["seed", "sft"]
    if rule == "build_tasks":
        tasks = language_entry(config, lang)["tasks"]
        kinds = {ev["sources"][t]["kind"] for t in tasks}
        keys = [f"{entry}.tasks", *(f"evaluate.sources.{t}" for t in tasks),
                "evaluate.prompt_language", "evaluate.protocol", "evaluate.shot_seeds",
                "evaluate.max_gen_toks", "evaluate.max_text_chars", "evaluate.limit",
                "evaluate.limit_seed"]
        if ev.get("limit") is not None and ev.get("limit_seed") is None:
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
    if rule == "evaluate":  # lang: the model's languages, joined by "+"
        return ["seed", "evaluate.batch_size", "evaluate.device", "evaluate.dtype",
                *(f"{_entry(lg)}.tasks" for lg in lang.split("+"))]
    if rule == "aggregate":
        return ["base_model", "languages.*.budgets", "languages.*.tasks", "english.tasks", "merge",
                "evaluate.collapse_share"]
    if rule == "plot":
        return ["languages.*.name", "languages.*.tasks", "english.tasks",
                *(f"evaluate.sources.{t}.family" for t in _all_tasks(config))]
    raise KeyError(f"no config slice for rule {rule!r}")


def _all_tasks(config: dict) -> list[str]:
    tasks = [t for facts in config["languages"].values() for t in facts["tasks"]]
    return list(dict.fromkeys(tasks + config["english"]["tasks"]))


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
