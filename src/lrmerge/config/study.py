"""What a config asks for: the study's models and merge jobs, in a stable order.

Names: a *merge entry* is a key of `merge.methods` (`ties_auto`); its *method* is the engine
method it runs (`ties_sv`, the entry's `method:` or else its name); a *variant* names one merge
folder of an entry (`average_w1-2` where an entry lists several weight pairs, else the entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrmerge.merge.table import METHOD_TABLE, Method

from . import layout

# The task families, in the tables' and figures' order.
FAMILIES = ("classification", "reading_comprehension", "response_selection", "math")


@dataclass(frozen=True)
class MergeJob:
    """One merge: the folder models/merge/{variant}/{group}/{tokens}."""

    variant: str
    entry: str  # the merge entry's name (ties_auto)
    method: str  # its engine method (ties_sv)
    group: str  # the language, or the languages joined by "+"
    tokens: int
    languages: tuple[str, ...]
    weights: tuple[float, ...]  # one per CT model, then SFT-flan
    params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return layout.merge_id(self.variant, self.group, self.tokens)

    @property
    def row(self) -> Method:
        """The method table's row of the engine method."""
        return METHOD_TABLE[self.method]


@dataclass(frozen=True)
class StudyModel:
    """A model the study builds (or takes, for a hub base) and evaluates."""

    id: str  # its folder under models/ and its eval file, eval/{id}.json (lrmerge.config.layout)
    kind: str  # base | sft | ct | ct_sft | merge
    entry: str  # the merge entry's name; the kind for the others (the tables' `method` column)
    variant: str  # the merge variant (average_w1-2); the kind for the others
    language: str  # CT language or merge group ("" for base and sft)
    tokens: int | None
    eval_languages: tuple[str, ...]  # whose tasks it is evaluated on (text languages, then en)


def engine_method(name: str, spec: dict) -> str:
    """The engine method a merge entry runs."""
    return spec.get("method", name)


def _fmt(w: float) -> str:
    return f"{w:g}"


def merge_variants(config: dict) -> list[tuple[str, str, dict, tuple[float, float]]]:
    """(variant, entry, spec, (w_ct, w_sft)) for every single-language merge."""
    out = []
    for name, spec in config["merge"]["methods"].items():
        weights = spec["weights"]
        for pair in weights:
            variant = name if len(weights) == 1 else f"{name}_w{_fmt(pair[0])}-{_fmt(pair[1])}"
            out.append((variant, name, spec, tuple(float(w) for w in pair)))
    return out


def merge_params(spec: dict) -> dict:
    """A merge entry's method parameters (all but method and weights)."""
    return {k: v for k, v in spec.items() if k not in ("method", "weights")}


def common_budgets(config: dict, langs) -> list[int]:
    """The budgets every one of `langs` has, ascending."""
    return sorted(set.intersection(*(set(config["languages"][lg]["budgets"]) for lg in langs)))


def chosen_budgets(common: list[int], tokens) -> list[int]:
    """A multi-language entry's budgets: of those its languages share (ascending)."""
    return common[-1:] if tokens == "max" else common if tokens == "all" else list(tokens)


def target_stats_budget(merge: MergeJob, config: dict) -> int | None:
    """target_discarded: first_budget: the budget whose merge (the same variant and group) gives
    this merge its per-tensor targets; None at that budget itself, where the target is the merge's
    own fraction (nothing is reserved: TIES)."""
    if merge.params.get("target_discarded") != "first_budget":
        return None
    first = common_budgets(config, merge.languages)[0]
    return None if merge.tokens == first else first


def _single_merges(config: dict) -> list[MergeJob]:
    return [MergeJob(variant, name, engine_method(name, spec), lang, tokens, (lang,), pair,
                     merge_params(spec))
            for variant, name, spec, pair in merge_variants(config)
            for lang, facts in config["languages"].items()
            for tokens in facts["budgets"]]


def _multi_merges(config: dict) -> list[MergeJob]:
    merges = []
    for multi in config["merge"]["multi"]:
        name = multi["method"]
        spec = config["merge"]["methods"][name]
        langs = tuple(multi["languages"])
        weights = tuple(float(w) for w in multi.get("weights") or [1.0] * (len(langs) + 1))
        for n in chosen_budgets(common_budgets(config, langs), multi["tokens"]):
            merges.append(MergeJob(name, name, engine_method(name, spec), multi["name"], n, langs,
                                   weights, merge_params(spec)))
    return merges


def plan_merges(config: dict) -> list[MergeJob]:
    """Every merge: each entry's variants x language x budget, then the multi-language ones."""
    return _single_merges(config) + _multi_merges(config)


def text_language(config: dict, lang: str) -> str:
    """The language whose text and tasks an entry uses: a vocabulary variant's `based_on`, else
    the language itself."""
    return language_entry(config, lang).get("based_on") or lang


def extends_vocabulary(config: dict, lang: str) -> bool:
    """Whether a language runs with its own extended tokenizer (`tokenizer: {extend: K}`)."""
    return lang != "en" and "tokenizer" in language_entry(config, lang)


def text_languages(config: dict, langs) -> tuple[str, ...]:
    """The task languages of `langs`: each one's text language, once, in order."""
    return tuple(dict.fromkeys(text_language(config, lg) for lg in langs))


def plan_models(config: dict) -> list[StudyModel]:
    """Every model of the study, in a stable order (base, sft, ct, ct_sft, merges). A model is
    evaluated on the tasks of its languages' text languages (a variant's are its base's)."""
    every = (*text_languages(config, config["languages"]), "en")
    models = [StudyModel(layout.BASE_ID, "base", "base", "base", "", None, every),
              StudyModel(layout.SFT_ID, "sft", "sft", "sft", "", None, every)]
    for kind, model_id in (("ct", layout.ct_id), ("ct_sft", layout.ct_sft_id)):
        for lang, facts in config["languages"].items():
            for tokens in facts["budgets"]:
                models.append(StudyModel(model_id(lang, tokens), kind, kind, kind, lang, tokens,
                                         (text_language(config, lang), "en")))
    for m in plan_merges(config):
        models.append(StudyModel(m.id, "merge", m.entry, m.variant, m.group, m.tokens,
                                 text_languages(config, m.languages) + ("en",)))
    return models


def all_tasks(config: dict) -> list[str]:
    """Every task the config evaluates, once, languages first."""
    tasks = [t for facts in config["languages"].values() for t in facts["tasks"]]
    return list(dict.fromkeys(tasks + config["english"]["tasks"]))


def task_families(config: dict) -> list[str]:
    """The task families the config evaluates, in the canonical order."""
    present = {config["evaluate"]["sources"][t]["family"] for t in all_tasks(config)}
    return [f for f in FAMILIES if f in present]


def tasks_of(config: dict, lang: str) -> list[str]:
    return list(language_entry(config, lang)["tasks"])


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


def entry_key(lang: str) -> str:
    """The config key of a language's entry: english, or languages.{lang}."""
    return "english" if lang == "en" else f"languages.{lang}"


def corpus_key(lang: str) -> str:
    """The config key of a language's corpus entry (for messages)."""
    return f"{entry_key(lang)}.corpus"


def merge_args(m: MergeJob, config: dict, lay: layout.Layout, base: str) -> list[str]:
    """The `lrmerge merge-config` arguments of one merge (without --out), from the method table:
    a base where the method reads one, weights where it takes them, the entry's parameters, and
    the parameters the workflow fixes itself (ties_sv protects SFT-flan, ...)."""
    row = m.row
    args = ["--method", m.method] + (["--base", base] if row.reads_base else [])
    weighted = not row.fixed_pair  # the method weighs its two models itself
    single = len(m.languages) == 1
    for lang, weight in zip(m.languages, m.weights, strict=False):
        name = "ct" if single else f"ct_{lang}"
        at = f"@{weight:g}" if weighted else ""
        args += ["--model", f"{name}={lay.model(layout.ct_id(lang, m.tokens))}{at}"]
    at = f"@{m.weights[-1]:g}" if weighted else ""
    args += ["--model", f"sft={lay.model(layout.SFT_ID)}{at}"]
    params = dict(m.params)
    if params.get("target_discarded") == "first_budget":
        first = target_stats_budget(m, config)
        # at the first budget the target is the merge's own fraction: nothing is reserved
        params["target_discarded"] = (lay.summary(layout.merge_id(m.variant, m.group, first))
                                      if first is not None else 1.0)
    for key, value in {**params, **row.workflow_fixed}.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return args
