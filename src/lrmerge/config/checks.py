"""The checks a JSON schema cannot express; each failure names the file and the key.

Merge entries are checked against the method table (lrmerge.merge.table): which methods a workflow
entry may name, the keys each takes and needs, and which fix their own pair of models.
"""

from __future__ import annotations

from lrmerge.merge.table import METHOD_TABLE, WORKFLOW_METHODS

from .study import FAMILIES, chosen_budgets, common_budgets, engine_method, text_language


class ConfigError(ValueError):
    """A config that cannot be run; the message names the file and the key."""


def _fail(source: str, key: str, message: str):
    raise ConfigError(f"{source}: {key}: {message}")


# What each kind of evaluate.sources entry must say (beyond kind and family).
SOURCE_REQUIRED = {"milic": ("lang",), "sib200": ("test",), "belebele": ("test",),
                   "mgsm": ("test",), "generated": (), "builtin": ()}
# The families each benchmark kind has.
SOURCE_FAMILIES = {"milic": FAMILIES, "sib200": ("classification",),
                   "belebele": ("reading_comprehension",), "mgsm": ("math",),
                   "generated": FAMILIES, "builtin": FAMILIES}


def check_config(config: dict, source: str = "config") -> None:
    """The checks a JSON schema cannot express. Expects a schema-valid config."""
    for lang, facts in config["languages"].items():
        _check_budgets(facts["budgets"], source, f"languages.{lang}.budgets")
        _check_subsets(facts.get("corpus") or {}, source, f"languages.{lang}.corpus")
    _check_subsets(config["english"].get("corpus") or {}, source, "english.corpus")
    ct = config["continual_pretrain"]
    if ct.get("embedding_warmup_steps") and ct.get("deepspeed"):
        _fail(source, "continual_pretrain.embedding_warmup_steps", "not supported with "
              "continual_pretrain.deepspeed (ZeRO builds its partitions from the parameters that "
              "train at start); set it to 0 or use plain torch")
    extension = config.get("mini", {}).get("vocab_extension")
    for lang in extension if isinstance(extension, list) else ():
        if lang not in config["languages"]:
            _fail(source, "mini.vocab_extension", f"{lang!r} is not in languages")
    _check_tasks(config, source)
    for name, spec in config["merge"]["methods"].items():
        _check_merge_entry(name, spec, source)
    names = set()
    for i, multi in enumerate(config["merge"]["multi"]):
        if multi["name"] in names:
            _fail(source, f"merge.multi[{i}].name", f"{multi['name']!r} is used twice")
        names.add(multi["name"])
        _check_multi(config, multi, source, f"merge.multi[{i}]")


def _check_subsets(corpus: dict, source: str, key: str) -> None:
    """A corpus's subsets: a field or a source per subset (not both, not neither); weights
    only for subsets that exist, summing to a positive number."""
    subsets = corpus.get("subsets")
    if not subsets:
        return
    key = f"{key}.subsets"
    if corpus.get("kind") == "generated":
        _fail(source, key, "not for kind generated")
    field, sources = subsets.get("field"), subsets.get("sources")
    if bool(field) == bool(sources):
        _fail(source, key, "set either field (the row field naming each row's subset) or "
              "sources (one source per subset)")
    weights = subsets.get("weights", "proportional")
    if weights == "proportional":
        return
    if sources:
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            _fail(source, f"{key}.weights", f"{', '.join(map(repr, unknown))}: no such subset "
                  f"in {key}.sources ({', '.join(sources)})")
    if not sum(float(w) for w in weights.values()) > 0:
        _fail(source, f"{key}.weights", "the weights must sum to a positive number")


def _check_budgets(budgets: list, source: str, key: str) -> None:
    for i, b in enumerate(budgets):
        # JSON schema counts 2000.0 as an integer; a budget names folders, so it must be an int.
        if not isinstance(b, int) or isinstance(b, bool):
            _fail(source, f"{key}.{i}", f"{b!r} is not an integer")
    for prev, cur in zip(budgets, budgets[1:], strict=False):
        if cur <= prev:
            _fail(source, key, "budgets must increase (each continues the previous one), got "
                  f"{prev} then {cur}")


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
        key = f"evaluate.sources.{task}"
        for name in SOURCE_REQUIRED[spec["kind"]]:
            if not spec.get(name):
                _fail(source, f"{key}.{name}", f"required for kind: {spec['kind']}")
        if spec["family"] not in SOURCE_FAMILIES[spec["kind"]]:
            _fail(source, f"{key}.family", f"kind {spec['kind']} has no {spec['family']} task "
                  f"(it has {', '.join(SOURCE_FAMILIES[spec['kind']])})")
        if spec.get("shots") == "per_label" and spec["family"] != "classification":
            _fail(source, f"{key}.shots", "per_label is for classification tasks; give a number")


# Checks of one engine method's parameters beyond the table's keys: method -> (test, message).
ENTRY_CHECKS = {
    "layer_swap": (lambda spec: spec.get("bottom") or spec.get("top"),
                   "layer_swap needs bottom or top (layers taken from CT-X)"),
}


def _check_merge_entry(name: str, spec: dict, source: str) -> None:
    key = f"merge.methods.{name}"
    method = engine_method(name, spec)
    if method not in WORKFLOW_METHODS:
        _fail(source, key, f"unknown merge method {name!r}; known: {', '.join(WORKFLOW_METHODS)} "
              "(or give `method:` for a named variant)")
    row = METHOD_TABLE[method]
    extra = set(spec) - set(row.workflow_keys) - {"method", "weights"}
    if extra:
        _fail(source, key, f"{', '.join(sorted(extra))} not used by method {method}")
    missing = set(row.workflow_required) - set(spec)
    if missing:
        _fail(source, key, f"method {method} needs {', '.join(sorted(missing))}")
    if (spec.get("slack") == "auto") != ("target_discarded" in spec):
        _fail(source, key, "slack: auto and target_discarded (a fraction, or first_budget) "
              "go together")
    test, message = ENTRY_CHECKS.get(method, (None, ""))
    if test is not None and not test(spec):
        _fail(source, key, message)
    if row.fixed_pair and spec["weights"] != [[1.0, 1.0]]:
        _fail(source, f"{key}.weights", f"{method} takes no merge weights")
    for i, pair in enumerate(spec["weights"]):
        if len(pair) != 2:
            _fail(source, f"{key}.weights[{i}]", f"give one (CT, SFT-flan) pair, got {pair}")
        if sum(pair) <= 0:
            _fail(source, f"{key}.weights[{i}]", "weights must not all be zero")


def _check_multi(config: dict, multi: dict, source: str, key: str) -> None:
    """A multi-language merge: its name, languages, entry, weights and budgets."""
    langs, entry = multi["languages"], multi["method"]
    if multi["name"] != "+".join(langs):
        _fail(source, f"{key}.name", f"name must be the languages joined by '+': {'+'.join(langs)}")
    for lang in langs:
        if lang not in config["languages"]:
            _fail(source, f"{key}.languages", f"{lang!r} is not in languages")
    if len(set(langs)) != len(langs):
        _fail(source, f"{key}.languages", "a language is listed twice")
    texts = [text_language(config, lg) for lg in langs]
    if len(set(texts)) != len(texts):
        _fail(source, f"{key}.languages", "a language and its vocabulary variant share their "
              "text and tasks; merge one of them")
    methods = config["merge"]["methods"]
    if entry not in methods:
        _fail(source, f"{key}.method", f"{entry!r} is not in merge.methods")
    spec = methods[entry]
    if METHOD_TABLE[engine_method(entry, spec)].fixed_pair:
        _fail(source, f"{key}.method", f"{entry!r} merges one CT model with SFT-flan, not several")
    weights = multi.get("weights")
    if weights is not None and len(weights) != len(langs) + 1:
        _fail(source, f"{key}.weights", f"give {len(langs) + 1} weights (each CT model, then "
              "SFT-flan)")
    common = common_budgets(config, langs)
    if not common:
        _fail(source, f"{key}.tokens", "its languages share no budget")
    if isinstance(multi["tokens"], list):
        for n in multi["tokens"]:
            if n not in common:
                _fail(source, f"{key}.tokens", f"{n} is not a budget of every language")
    if (spec.get("target_discarded") == "first_budget"
            and common[0] not in chosen_budgets(common, multi["tokens"])):
        _fail(source, f"{key}.tokens", f"{entry!r} aims at the discarded fraction of the group's "
              f"first budget ({common[0]}), which this entry does not merge; add it (tokens: all, "
              "or a list with it)")
