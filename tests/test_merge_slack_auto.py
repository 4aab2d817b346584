"""TIES-SV with `slack: auto`: per tensor, the protected model's discarded entries of smallest
magnitude difference are reserved until its discarded fraction is at most `target_discarded` (a
fraction, or each tensor's fraction in a merge_stats.json)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from merge_helpers import build_inputs, native_config, run_engine, write_yaml

PROPS = settings(max_examples=8, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _engine_imported():
    import lrmerge.merge.engine  # noqa: F401


@st.composite
def setups(draw, n_models=None):
    n = n_models or draw(st.integers(2, 3))
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "n": n,
        "quantized": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "bfloat16"])),
        "densities": [draw(st.sampled_from([0.1, 0.3, 0.5, 1.0])) for _ in range(n)],
        "weights": [draw(st.sampled_from([0.5, 1.0, 2.0])) for _ in range(n)],
        "protect": draw(st.integers(0, n - 1)),
        "shared_frac": draw(st.sampled_from([0.0, 0.5])),
        "target": draw(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2, 0.4])),
    }


def _build(root: Path, s: dict):
    return build_inputs(root, n_models=s["n"], dtype=s["dtype"], seed=s["seed"],
                        quantized=s["quantized"], shared_frac=s["shared_frac"], tokenizer=False)


def _config(inputs, s: dict, method: str, **over) -> dict:
    cfg = native_config(inputs, method, out_dtype="float32",
                        model_overrides=[{"weight": w, "density": d}
                                         for w, d in zip(s["weights"], s["densities"], strict=True)])
    if method == "ties_sv":
        cfg["protect"] = inputs.names[s["protect"]]
    cfg.update(over)
    return cfg


def _same(a: dict, b: dict) -> None:
    for name, t in a.items():
        assert torch.equal(t.view(torch.int32), b[name].view(torch.int32)), name


def _check_targets(s, auto: dict, ties: dict, target_of) -> None:
    """Per tensor: the protected model's discarded fraction is at most the target, by the fewest
    reserves that achieve it (at most one entry over the exact target, from flooring); the slack
    recorded is the share of candidates reserved."""
    p = s["protect"]
    for name, entries in auto["tensors"].items():
        e, before = entries[p], ties["tensors"][name][p]
        target = target_of(name)
        assert e["kept"] == before["kept"]
        assert e["discarded"] <= target * e["kept"] + 1e-9 * e["kept"], name
        if e["reserved"]:  # no more reserved than needed: the floor of the target, exactly
            assert e["discarded"] == math.floor(target * e["kept"] + 1e-6), name
        assert e["reserved"] == before["discarded"] - e["discarded"], name
        assert e["reserved"] == max(0, before["discarded"] - math.floor(target * e["kept"] + 1e-6))
        want = e["reserved"] / before["discarded"] if before["discarded"] else 0.0
        assert auto["slack"][name] == pytest.approx(want, abs=1e-15), name


def _auto_and_ties(s: dict) -> tuple[dict, dict]:
    """The stats of slack: auto at the setup's target, and of TIES, on the same inputs."""
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        auto, _ = run_engine(_config(inputs, s, "ties_sv", slack="auto",
                                     target_discarded=s["target"]), Path(d) / "auto")
        ties, _ = run_engine(_config(inputs, s, "ties"), Path(d) / "ties")
    return auto, ties


@PROPS
@given(setups())
def test_property_the_target_is_met_with_the_fewest_reserves(s):
    auto, ties = _auto_and_ties(s)
    _check_targets(s, auto, ties, lambda name: s["target"])
    assert auto["parameters"]["slack"] == "auto"
    assert auto["parameters"]["target_discarded"] == s["target"]


@PROPS
@given(setups())
def test_property_target_at_or_above_the_fraction_is_ties(s):
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        ties, out_ties = run_engine(_config(inputs, s, "ties"), Path(d) / "ties")
        high = max(t[s["protect"]]["discarded_fraction"] for t in ties["tensors"].values())
        auto, out = run_engine(_config(inputs, s, "ties_sv", slack="auto",
                                       target_discarded=min(1.0, high + 0.01)), Path(d) / "auto")
        # the per-tensor targets of a stats file: each tensor's own fraction, exactly met already
        same, out_same = run_engine(_config(inputs, s, "ties_sv", slack="auto",
                                            target_discarded=str(Path(d) / "ties.stats.json")),
                                    Path(d) / "same")
    for stats, result in ((auto, out), (same, out_same)):
        _same(result, out_ties)
        for key in ("totals", "tensors", "by_layer", "by_module"):
            assert stats[key] == ties[key], key
        assert set(stats["slack"].values()) == {0.0}


@PROPS
@given(setups())
def test_property_target_zero_is_slack_one(s):
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        auto, out = run_engine(_config(inputs, s, "ties_sv", slack="auto", target_discarded=0.0),
                               Path(d) / "auto")
        one, out_one = run_engine(_config(inputs, s, "ties_sv", slack=1.0), Path(d) / "one")
    _same(out, out_one)
    for key in ("totals", "tensors", "by_layer", "by_module"):
        assert auto[key] == one[key], key


@settings(max_examples=2, deadline=None, derandomize=True)
@given(setups(n_models=9))
def test_property_more_models_than_the_collect_path_takes(s):
    """Nine models: the radix passes instead of the one-pass collect buffers."""
    auto, ties = _auto_and_ties(s)
    _check_targets(s, auto, ties, lambda name: s["target"])


def test_per_tensor_targets_from_a_stats_file(shared_merge_inputs, tmp_path):
    """target_discarded: a merge_stats.json (e.g. the language's first budget): each tensor aims at
    its own fraction there. Here: half of each tensor's own TIES fraction."""
    import json

    inputs = shared_merge_inputs(n_models=2, dtype="float32", seed=41)
    s = {"weights": [1.0, 1.0], "densities": [0.3, 0.3], "protect": 1}
    ties, _ = run_engine(_config(inputs, s, "ties"), tmp_path / "ties")
    halved = json.loads((tmp_path / "ties.stats.json").read_text())
    for entries in halved["tensors"].values():
        entries[1]["discarded_fraction"] /= 2
    stats_file = tmp_path / "halved.json"
    stats_file.write_text(json.dumps(halved))
    auto, _ = run_engine(_config(inputs, s, "ties_sv", slack="auto",
                                 target_discarded=str(stats_file)), tmp_path / "auto")
    _check_targets(s, auto, ties, lambda name: halved["tensors"][name][1]["discarded_fraction"])
    assert auto["totals"][1]["reserved"] > 0


@pytest.mark.parametrize("change, culprit", [
    ({}, "key 'target_discarded' is required with slack: auto"),
    ({"target_discarded": "first_budget"}, "first_budget is resolved by the workflow"),
    ({"target_discarded": 1.5}, "key 'target_discarded': must lie in \\[0, 1\\]"),
    ({"target_discarded": "missing.json"}, "stats file .*missing.json does not exist"),
])
def test_slack_auto_config_errors(shared_merge_inputs, tmp_path, change, culprit):
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    inputs = shared_merge_inputs(n_models=2, dtype="float32", seed=41)
    cfg = native_config(inputs, "ties_sv", density=0.3, protect=inputs.names[1], slack="auto")
    path = write_yaml(tmp_path / "auto.yaml", cfg | change)
    with pytest.raises(MergeError, match=culprit) as err:
        load_merge_config(path)
    assert str(path) in str(err.value)


def test_slack_auto_is_for_ties_sv_and_its_stats_file_must_fit(shared_merge_inputs, tmp_path):
    import json

    from lrmerge.merge.engine import run_merge
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    inputs = shared_merge_inputs(n_models=2, dtype="float32", seed=41)
    with pytest.raises(MergeError, match="key 'slack' has no meaning for ties \\(it is for ties_sv\\)"):
        load_merge_config(native_config(inputs, "ties", density=0.3, slack="auto",
                                        target_discarded=0.1))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"models": ["ct", "chat"], "tensors": {}}))
    cfg = native_config(inputs, "ties_sv", density=0.3, protect=inputs.names[1], slack="auto",
                        target_discarded=str(other))
    with pytest.raises(MergeError, match=f"other.json has no model named '{inputs.names[1]}'"):
        run_merge(cfg, tmp_path / "out")
    other.write_text(json.dumps({"models": inputs.names, "tensors": {}}))
    with pytest.raises(MergeError, match="tensor .* is missing from .*other.json"):
        run_merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
