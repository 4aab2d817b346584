"""Config validation: the schema with defaults plus the checks a schema cannot express."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lrmerge.config import ConfigError, load_config, plan_merges, plan_models, validate_config

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
    config = _check(tmp_path, lambda c: c.pop("seed"))
    assert config["seed"] == 0
    assert config["merge"]["methods"]["ties"]["weights"] == [[1.0, 1.0]]
    assert isinstance(config["evaluate"], dict) and "batch_size" in config["evaluate"]


def test_paper_preset_is_the_study():
    config = load_config(REPO / "config" / "config.yaml")
    assert config["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert list(config["languages"]) == ["bo", "ug", "mn", "ta", "te", "or", "bn"]
    assert config["continual_pretrain"]["english_ratio"] == pytest.approx(0.2)  # 4:1
    assert len(config["merge"]["methods"]["average"]["weights"]) > 1  # tuned: a grid
    assert [m["name"] for m in config["merge"]["multi"]] == ["mn+ug"]


def test_mini_preset_plans_the_study():
    config = load_config(REPO / "config" / "mini.yaml")
    assert len(config["languages"]) >= 2
    assert all(len(f["budgets"]) >= 3 for f in config["languages"].values())
    kinds = {m.kind for m in plan_models(config)}
    assert kinds == {"base", "sft", "ct", "ct_sft", "merge"}
    methods = {m.entry for m in plan_merges(config)}
    assert {"average", "ties", "ties_sv"} <= methods
    assert any(len(m.languages) == 2 for m in plan_merges(config))


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
        ("ties_auto", "bn+bo", 400000): 100000}
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
