"""Config validation: the schema with defaults plus the checks a schema cannot express."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lrmerge.config import (
    ConfigError,
    extends_vocabulary,
    load_config,
    plan_merges,
    plan_models,
    text_language,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
MINI = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())


def _check(tmp_path, mutate):
    cfg = copy.deepcopy(MINI)
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_config(path)


@pytest.mark.parametrize("name", ["mini.yaml", "config.yaml"])
def test_presets_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["languages"]
    for facts in config["languages"].values():
        assert facts["budgets"] == sorted(facts["budgets"])


def test_defaults_are_filled(tmp_path):
    """The schema's defaults, filled in nested sections and in each merge entry."""
    from lrmerge.config import load_schema

    def bare(c):
        c.pop("seed")
        c["evaluate"] = {"sources": c["evaluate"]["sources"]}

    config = _check(tmp_path, bare)
    props = load_schema()["properties"]
    assert config["seed"] == props["seed"]["default"]
    assert config["merge"]["methods"]["ties"]["weights"] == [[1.0, 1.0]]
    assert config["evaluate"]["collapse_share"] == props["evaluate"]["properties"][
        "collapse_share"]["default"]
    # two configs never share a default object
    other = _check(tmp_path, bare)
    assert config["evaluate"]["shot_seeds"] is not other["evaluate"]["shot_seeds"]


def test_schema_names_the_workflow_methods_of_the_table():
    """The schema's method enum (Snakemake validates with it) and the keys a merge entry may
    give are the method table's, so a method added there is one the workflow accepts."""
    from lrmerge.config import load_schema, schema_path
    from lrmerge.merge.table import METHOD_TABLE, WORKFLOW_METHODS

    entry = load_schema()["$defs"]["merge_method"]["properties"]
    assert entry["method"]["enum"] == list(WORKFLOW_METHODS)
    keys = {k for name in WORKFLOW_METHODS for k in METHOD_TABLE[name].workflow_keys}
    assert set(entry) == keys | {"method", "weights"}
    # the schema ships in the package (pip install without a checkout validates)
    assert schema_path().parent == Path(__import__("lrmerge.config").config.__file__).parent


def test_mini_plan_by_hand():
    """The mini preset: 2 languages x 3 budgets and a vocabulary variant of bo at 2 budgets; 6
    merge entries of one weight pair each and one two-language merge at the largest shared
    budget."""
    config = load_config(REPO / "config" / "mini.yaml")
    models = plan_models(config)
    merges = plan_merges(config)
    assert len(merges) == 6 * (2 * 3 + 2) + 1
    assert len(models) == 2 + 8 + 8 + len(merges)
    assert len({m.id for m in models}) == len(models)
    auto = next(m for m in merges if m.variant == "ties_auto")
    assert (auto.entry, auto.method, auto.id) == ("ties_auto", "ties_sv", "merge/ties_auto/bn/100000")
    multi = merges[-1]
    assert (multi.id, multi.languages, multi.weights) == ("merge/ties/bn+bo/400000", ("bn", "bo"),
                                                          (1.0, 1.0, 1.0))
    by_id = {m.id: m for m in models}
    assert by_id["ct_sft/bo/200000"].eval_languages == ("bo", "en")
    assert by_id[multi.id].eval_languages == ("bn", "bo", "en")
    assert by_id["base"].eval_languages == ("bn", "bo", "en")
    # the variant is evaluated on its base's tasks (its text language's folder)
    assert by_id["ct/bo-v90/400000"].eval_languages == ("bo", "en")
    assert by_id["merge/ties/bo-v90/100000"].eval_languages == ("bo", "en")


def _variant(c, **entry):
    c["languages"]["bo-v"] = {"based_on": "bo", "tokenizer": {"extend": 8}, **entry}


def test_a_vocabulary_variant_takes_what_it_does_not_set_from_its_base(tmp_path):
    path = tmp_path / "c.yaml"
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    _variant(cfg, budgets=[300000])
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    config = load_config(path)
    v, bo = config["languages"]["bo-v"], config["languages"]["bo"]
    assert (v["name"], v["tasks"], v["corpus"]) == (bo["name"], bo["tasks"], bo["corpus"])
    assert v["budgets"] == [300000] and v["tokenizer"] == {"extend": 8, "min_frequency": 2,
                                                           "sample_chars": 20000000,
                                                           "scripts": None}
    assert text_language(config, "bo-v") == "bo" and text_language(config, "bo") == "bo"
    assert extends_vocabulary(config, "bo-v") and not extends_vocabulary(config, "bo")
    # the variant's entry is a copy: the base's lists are not shared
    v["tasks"].append("x")
    assert "x" not in bo["tasks"]


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda c: _variant(c, based_on="xx"), r"languages\.bo-v\.based_on: 'xx' is not in"),
        (lambda c: (_variant(c), c["languages"].update(w={"based_on": "bo-v"})),
         r"languages\.w\.based_on: 'bo-v' is a variant itself"),
        (lambda c: c["languages"].update(v2={"based_on": "bo"}),
         r"languages\.v2\.tokenizer: a variant of 'bo' must set"),
        (lambda c: _variant(c, tokenizer={"extend": 0}), r"languages\.bo-v\.tokenizer\.extend"),
        (lambda c: c["languages"].update({"bo_v": {**c["languages"]["bo"]}}), r"bo_v"),
        (lambda c: (_variant(c), c["merge"]["multi"].append(
            {"name": "bo+bo-v", "languages": ["bo", "bo-v"], "method": "ties"})),
         r"merge\.multi\[1\]\.languages: a language and its vocabulary variant"),
        (lambda c: c["continual_pretrain"].update(embedding_warmup_steps=5,
                                                   deepspeed={"stage": 2}),
         r"continual_pretrain\.embedding_warmup_steps: not supported with"),
        (lambda c: c["mini"].update(vocab_extension=["xx"]),
         r"mini\.vocab_extension: 'xx' is not in languages"),
    ],
)
def test_bad_vocabulary_variants_are_refused(tmp_path, mutate, pattern):
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        # unknown keys, at the top and inside sections
        (lambda c: c.update(learning_rate=1), r"\(top level\): .*'learning_rate' was unexpected"),
        (
            lambda c: c["merge"]["methods"]["ties"].update(densty=0.3),
            r"merge\.methods\.ties: .*'densty' was unexpected",
        ),
        (lambda c: c["languages"]["bn"].update(budget=[1]), r"languages\.bn: .*'budget'"),
        # wrong types
        (lambda c: c.update(seed="zero"), r"seed: 'zero' is not of type 'integer'"),
        (
            lambda c: c["merge"]["methods"]["ties"].update(density="high"),
            r"merge\.methods\.ties\.density: 'high' is not of type 'number'",
        ),
        (lambda c: c["languages"]["bo"].update(tasks="topic_bo"), r"languages\.bo\.tasks: "),
        # unknown merge methods
        (
            lambda c: c["merge"]["methods"].update(slerp={}),
            r"merge\.methods\.slerp: unknown merge method 'slerp'",
        ),
        (
            lambda c: c["merge"]["methods"].update(mine={"method": "magic"}),
            r"merge\.methods\.mine\.method: 'magic' is not one of",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(method="dare"),
            r"merge\.multi\[0\]\.method: 'dare' is not in merge\.methods",
        ),
        # budgets: positive integers, increasing
        (
            lambda c: c["languages"]["bn"].update(budgets=[0, 100]),
            r"languages\.bn\.budgets\.0: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c["languages"]["bn"].update(budgets=[-5]),
            r"languages\.bn\.budgets\.0: -5 is less than the minimum",
        ),
        (
            lambda c: c["languages"]["bn"].update(budgets=[100, 150.5]),
            r"languages\.bn\.budgets\.1: 150\.5 is not of type 'integer'",
        ),
        (
            lambda c: c["languages"]["bn"].update(budgets=[100, 200000.0]),
            r"languages\.bn\.budgets\.1: 200000\.0 is not an integer",
        ),
        (
            lambda c: c["languages"]["bn"].update(budgets=[100, "2e5"]),
            r"languages\.bn\.budgets\.1: '2e5' is not of type 'integer'",
        ),
        (
            lambda c: c["languages"]["bo"].update(budgets=[200, 100, 400]),
            r"languages\.bo\.budgets: budgets must increase .* 200 then 100",
        ),
        (
            lambda c: c["languages"]["bo"].update(budgets=[100, 100]),
            r"languages\.bo\.budgets: budgets must increase",
        ),
        # a language without a corpus
        (
            lambda c: c["languages"]["bo"].pop("corpus"),
            r"languages\.bo: 'corpus' is a required property",
        ),
        (
            lambda c: c["languages"]["bo"].update(corpus={"kind": "ftp"}),
            r"languages\.bo\.corpus\.kind: 'ftp' is not one of",
        ),
        # method parameters
        (
            lambda c: c["merge"]["methods"]["average"].update(density=0.2),
            r"merge\.methods\.average: density not used by method average",
        ),
        (
            lambda c: c["merge"]["methods"]["ties_sv"].pop("slack"),
            r"merge\.methods\.ties_sv: method ties_sv needs slack",
        ),
        (
            lambda c: c["merge"]["methods"]["ties"].update(density=1.5),
            r"merge\.methods\.ties\.density: 1\.5 is greater than the maximum of 1",
        ),
        (
            lambda c: c["merge"]["methods"]["average"].update(weights=[[1.0, 1.0, 1.0]]),
            r"merge\.methods\.average\.weights\[0\]: give one \(CT, SFT-flan\) pair",
        ),
        # the methods beyond the paper
        (
            lambda c: c["merge"]["methods"]["ties_auto"].pop("target_discarded"),
            r"merge\.methods\.ties_auto: slack: auto and target_discarded .* go together",
        ),
        (
            lambda c: c["merge"]["methods"]["ties_auto"].update(target_discarded="last_budget"),
            r"merge\.methods\.ties_auto\.target_discarded: ",
        ),
        (
            lambda c: c["merge"]["methods"]["layer_swap"].update(bottom=0, top=0),
            r"merge\.methods\.layer_swap: layer_swap needs bottom or top",
        ),
        (
            lambda c: c["merge"]["methods"]["layer_swap"].update(embed_from="base"),
            r"merge\.methods\.layer_swap\.embed_from: ",
        ),
        (
            lambda c: c["merge"]["methods"]["chat_vector"].update(weights=[[1.0, 2.0]]),
            r"merge\.methods\.chat_vector\.weights: chat_vector takes no merge weights",
        ),
        (
            lambda c: c["merge"]["methods"]["chat_vector"].update(density=0.2),
            r"merge\.methods\.chat_vector: density not used by method chat_vector",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(method="layer_swap"),
            r"merge\.multi\[0\]\.method: 'layer_swap' merges one CT model with SFT-flan",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(method="ties_auto"),
            r"merge\.multi\[0\]\.tokens: 'ties_auto' aims at the discarded fraction of the "
            r"group's first budget \(100000\)",
        ),
        # multi-language merges
        (
            lambda c: c["merge"]["multi"][0].update(languages=["bn", "ta"], name="bn+ta"),
            r"merge\.multi\[0\]\.languages: 'ta' is not in languages",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(tokens=[300]),
            r"merge\.multi\[0\]\.tokens: 300 is not a budget of every language",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(name="bo+bn"),
            r"merge\.multi\[0\]\.name: name must be the languages joined by '\+': bn\+bo",
        ),
        # merge entries against the method table
        (
            lambda c: c["merge"]["methods"].update(della={"density": 0.5}),
            r"merge\.methods\.della: unknown merge method 'della'",
        ),
        (
            lambda c: c["merge"]["methods"].update(crumbs={"method": "breadcrumbs"}),
            r"merge\.methods\.crumbs: method breadcrumbs needs density",
        ),
        (
            lambda c: c["merge"]["methods"]["ties"].update(gamma=0.1),
            r"merge\.methods\.ties: gamma not used by method ties",
        ),
        (
            lambda c: c["merge"]["methods"]["ties"].update(weights=[[0.0, 0.0]]),
            r"merge\.methods\.ties\.weights\[0\]: weights must not all be zero",
        ),
        # multi-language merges, each check
        (
            lambda c: c["merge"]["multi"].append(dict(c["merge"]["multi"][0])),
            r"merge\.multi\[1\]\.name: 'bn\+bo' is used twice",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(languages=["bn", "bn"], name="bn+bn"),
            r"merge\.multi\[0\]\.languages: a language is listed twice",
        ),
        (
            lambda c: c["merge"]["multi"][0].update(weights=[1.0, 1.0]),
            r"merge\.multi\[0\]\.weights: give 3 weights",
        ),
        (
            lambda c: c["languages"]["bo"].update(budgets=[300000]),
            r"merge\.multi\[0\]\.tokens: its languages share no budget",
        ),
        # evaluation sources
        (
            lambda c: c["languages"]["bo"]["tasks"].append("topic_xx"),
            r"languages\.bo\.tasks: task 'topic_xx' has no evaluate\.sources\.topic_xx entry",
        ),
        (
            lambda c: c["evaluate"]["sources"].update(t={"kind": "milic", "family": "math"}),
            r"evaluate\.sources\.t\.lang: required for kind: milic",
        ),
        (
            lambda c: c["evaluate"]["sources"].update(
                t={"kind": "mgsm", "family": "classification", "test": {"path": "x"}}),
            r"evaluate\.sources\.t\.family: kind mgsm has no classification task",
        ),
        (
            lambda c: c["evaluate"]["sources"]["math_bn"].update(shots="per_label"),
            r"evaluate\.sources\.math_bn\.shots: per_label is for classification tasks",
        ),
        # the English code is reserved for the English corpus
        (lambda c: c["languages"].update(en=copy.deepcopy(c["languages"]["bn"])), r"languages: "),
        (lambda c: c.pop("run_name"), r"'run_name' is a required property"),
    ],
)
def test_bad_config_names_the_key(tmp_path, mutate, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        _check(tmp_path, mutate)
    assert "bad.yaml" in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("run_name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate_config(["not", "a", "mapping"], "list.yaml")


def test_variants_of_a_weight_grid_and_named_methods(tmp_path):
    def mutate(c):
        c["merge"]["methods"]["average"] = {"weights": [[1.0, 1.0], [0.5, 1.0]]}
        c["merge"]["methods"]["ties_d05"] = {"method": "ties", "density": 0.5}

    config = _check(tmp_path, mutate)
    variants = {(m.variant, m.entry, m.method, m.weights) for m in plan_merges(config)}
    assert ("average_w1-1", "average", "average", (1.0, 1.0)) in variants
    assert ("average_w0.5-1", "average", "average", (0.5, 1.0)) in variants
    assert ("ties_d05", "ties_d05", "ties", (1.0, 1.0)) in variants
    ids = {m.id for m in plan_models(config)}
    assert "merge/ties_d05/bo/400000" in ids and "merge/ties/bn+bo/400000" in ids


def test_first_budget_target_names_the_merge_at_the_smallest_budget(tmp_path):
    from lrmerge.config import target_stats_budget

    def multi_auto(c):
        c["merge"]["multi"][0].update(method="ties_auto", tokens="all")

    config = _check(tmp_path, multi_auto)
    firsts = {(m.variant, m.group, m.tokens): target_stats_budget(m, config)
              for m in plan_merges(config) if m.variant == "ties_auto"}
    assert firsts == {
        ("ties_auto", "bn", 100000): None, ("ties_auto", "bn", 200000): 100000,
        ("ties_auto", "bn", 400000): 100000, ("ties_auto", "bo", 100000): None,
        ("ties_auto", "bo", 200000): 100000, ("ties_auto", "bo", 400000): 100000,
        ("ties_auto", "bn+bo", 100000): None, ("ties_auto", "bn+bo", 200000): 100000,
        ("ties_auto", "bn+bo", 400000): 100000, ("ties_auto", "bo-v90", 100000): None,
        ("ties_auto", "bo-v90", 400000): 100000}
    ties = next(m for m in plan_merges(config) if m.variant == "ties")
    assert target_stats_budget(ties, config) is None


def test_multi_merge_tokens(tmp_path):
    def mutate(c):
        c["languages"]["bo"]["budgets"] = [100000, 200000, 800000]
        c["merge"]["multi"][0]["tokens"] = "all"

    config = _check(tmp_path, mutate)
    multi = [m for m in plan_merges(config) if m.group == "bn+bo"]
    assert [m.tokens for m in multi] == [100000, 200000]
    assert multi[0].weights == (1.0, 1.0, 1.0)


def _merge_args(config, variant, group, tokens, base="BASE"):
    from lrmerge.config import Layout, merge_args

    job = next(m for m in plan_merges(config)
               if (m.variant, m.group, m.tokens) == (variant, group, tokens))
    return merge_args(job, config, Layout("R"), base)


def test_merge_config_arguments_come_from_the_method_table(tmp_path):
    """One merge of each kind: weights where the method takes them, a base where it reads one,
    the entry's parameters, and the ones the workflow fixes (ties_sv protects SFT-flan,
    layer_swap keeps SFT-flan's middle layers)."""
    def more(c):
        c["merge"]["methods"]["crumbs"] = {"method": "breadcrumbs", "density": 0.3, "gamma": 0.05}
        c["merge"]["methods"]["dare_linear"] = {"density": 0.4}

    config = _check(tmp_path, more)
    assert _merge_args(config, "ties_sv", "bo", 200000) == [
        "--method", "ties_sv", "--base", "BASE", "--model", "ct=R/models/ct/bo/200000@1",
        "--model", "sft=R/models/sft@1", "--density", "0.2", "--lambda", "1", "--slack", "0.1",
        "--protect", "sft"]
    assert _merge_args(config, "layer_swap", "bn", 100000) == [
        "--method", "layer_swap", "--model", "ct=R/models/ct/bn/100000", "--model",
        "sft=R/models/sft", "--bottom", "1", "--top", "1", "--task-model", "sft"]
    assert _merge_args(config, "chat_vector", "bn", 100000) == [
        "--method", "chat_vector", "--base", "BASE", "--model", "ct=R/models/ct/bn/100000",
        "--model", "sft=R/models/sft", "--ratio", "1"]
    assert _merge_args(config, "average", "bn", 100000) == [
        "--method", "average", "--model", "ct=R/models/ct/bn/100000@1", "--model",
        "sft=R/models/sft@1"]
    assert _merge_args(config, "crumbs", "bn", 400000)[:2] == ["--method", "breadcrumbs"]
    assert _merge_args(config, "crumbs", "bn", 400000)[-4:] == ["--density", "0.3", "--gamma",
                                                               "0.05"]
    assert _merge_args(config, "dare_linear", "bn", 100000) == [
        "--method", "dare_linear", "--base", "BASE", "--model", "ct=R/models/ct/bn/100000@1",
        "--model", "sft=R/models/sft@1", "--density", "0.4"]
    assert _merge_args(config, "ties", "bn+bo", 400000)[4:8] == [
        "--model", "ct_bn=R/models/ct/bn/400000@1", "--model", "ct_bo=R/models/ct/bo/400000@1"]
    # slack: auto aims at the first budget's merge stats; at that budget, at its own fraction
    auto = _merge_args(config, "ties_auto", "bn", 200000)
    assert auto[auto.index("--target-discarded") + 1] == (
        "R/models/merge/ties_auto/bn/100000/merge_stats.json")
    first = _merge_args(config, "ties_auto", "bn", 100000)
    assert first[first.index("--target-discarded") + 1] == "1"


def test_layout_names_each_path_once():
    from lrmerge.config import Layout
    from lrmerge.config.layout import RELATIVE, kind_of, root_of

    config = load_config(REPO / "config" / "mini.yaml")
    lay = Layout.of(config)
    assert (lay.root, lay.logs) == ("results/mini", "logs/mini")
    for m in plan_models(config):
        assert kind_of(m.id) == m.kind
        marker = "merge_stats.json" if m.kind == "merge" else "train_summary.json"
        assert lay.summary(m.id) == f"results/mini/models/{m.id}/{marker}"
        assert lay.eval(m.id) == f"results/mini/eval/{m.id}.json"
    # wildcard patterns for the rules, relative paths for the pilot's globs
    assert lay.summary("ct/{lang}/{tokens}") == "results/mini/models/ct/{lang}/{tokens}/train_summary.json"
    assert RELATIVE.benchmark("merge", "**/*") == "benchmarks/merge/**/*.tsv"
    assert lay.log("merge", "a/b/1") == "logs/mini/merge/a/b/1.log"
    assert root_of("s3://x/" + lay.eval("base"), RELATIVE.eval("base")) == "s3://x/results/mini"
    with pytest.raises(ValueError):
        root_of("elsewhere/base.json", RELATIVE.eval("base"))


def test_every_rule_with_a_config_slice_has_one():
    """Each rule's params are its command's config slice (lrmerge.config.slices): every rule that
    asks for one has one, and each slice holds only keys of the config."""
    import re

    from lrmerge.config import rule_config
    from lrmerge.config.slices import RULE_KEYS

    rules = REPO / "workflow" / "rules"
    asked = {name for f in rules.glob("*.smk")
             for name in re.findall(r'config_slice\("(\w+)"\)', f.read_text())}
    assert asked == set(RULE_KEYS)
    config = load_config(REPO / "config" / "mini.yaml")
    for rule in RULE_KEYS:
        for lang in ("bn", "en", "bn+en"):
            if rule in ("prepare_corpus", "build_tasks", "continual_pretrain",
                        "extend_tokenizer") and "+" in lang:
                continue
            if rule == "extend_tokenizer" and lang == "en":
                continue
            if rule == "continual_pretrain" and lang == "en":
                continue
            assert rule_config(config, rule, lang), (rule, lang)
    # the report's tables read which merges exist and the collapse threshold, not the base
    assert "base_model" not in rule_config(config, "aggregate")
    with pytest.raises(KeyError, match="no config slice for rule 'merge'"):
        rule_config(config, "merge")
