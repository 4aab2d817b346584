"""Parity with mergekit 0.1.5 (a test-only dependency) on the same mergekit YAML.

float32 inputs: bit for bit for linear, task_arithmetic and ties. bfloat16 inputs: linear and
task_arithmetic bit for bit; ties may differ only at entries where some model's |tau| ties with its
k-th largest value (mergekit's argsort picks arbitrarily among them, lrmerge keeps the lowest flat
indices); those positions are computed here from the inputs. Mergekit features lrmerge does not
support are refused with a message (exit 2, nothing written).

mergekit runs in this process through its Python API (`mergekit.merge.run_merge`, as
`mergekit-yaml --no-copy-tokenizer` would), imported once per module: its import costs seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from merge_helpers import (
    MergeInputs,
    load_model,
    mergekit_config,
    run_cli_inprocess,
    run_engine,
    write_yaml,
)


@pytest.fixture(autouse=True, scope="module")
def _engine_imported_outside_capsys():
    """Import the engine before any capsys-capturing test: an engine that binds sys.stderr at
    import time would otherwise keep a closed capture stream (that bug has its own test:
    test_engine_survives_stderr_replaced_at_import)."""
    import lrmerge.merge  # noqa: F401


@pytest.fixture(scope="module")
def mergekit_merge():
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    def run(cfg_path: Path, out: Path) -> dict[str, torch.Tensor]:
        cfg = MergeConfiguration.model_validate(yaml.safe_load(Path(cfg_path).read_text()))
        options = MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False)
        run_merge(cfg, str(out), options)
        return load_model(out)

    return run


def both(mergekit_merge, cfg: dict, tmp_path: Path):
    """Run mergekit and lrmerge on one YAML file; returns (mergekit tensors, lrmerge tensors)."""
    path = write_yaml(tmp_path / "mergekit.yaml", cfg)
    theirs = mergekit_merge(path, tmp_path / "mergekit_out")
    _, ours = run_engine(path, tmp_path / "lrmerge_out")
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    return theirs, ours


def assert_bitwise_equal(theirs: dict, ours: dict, allowed: dict | None = None) -> int:
    """Every tensor equal bit for bit, except at `allowed` positions (name -> bool mask).
    Returns how many entries differ (all inside `allowed`)."""
    differing = 0
    for name, t in theirs.items():
        o = ours[name]
        assert o.dtype == t.dtype, (name, o.dtype, t.dtype)
        assert o.shape == t.shape, name
        # compare bit patterns so that -0.0 vs 0.0 or NaN payloads would show
        itype = torch.int32 if t.dtype == torch.float32 else torch.int16
        diff = (o.view(itype) != t.view(itype)).numpy()
        if allowed is not None and name in allowed:
            outside = diff & ~allowed[name]
        else:
            outside = diff
        assert not outside.any(), (
            f"{name}: {int(outside.sum())} entries differ from mergekit outside tie positions; "
            f"first at {np.argwhere(outside)[0].tolist()}: lrmerge {o.flatten()[outside.ravel()][:3]}"
            f" mergekit {t.flatten()[outside.ravel()][:3]}"
        )
        differing += int(diff.sum())
    return differing


def tie_positions(inputs: MergeInputs, densities, arith_dtype=torch.float32) -> dict:
    """name -> mask of entries where, for some model, |tau| equals its k-th largest |tau| and more
    than k entries reach that value (so which of them survive the trim is a free choice)."""
    out = {}
    for name in inputs.tensor_names:
        b = inputs.base[name].to(arith_dtype)
        mask = np.zeros(tuple(b.shape), dtype=bool)
        for i, mname in enumerate(inputs.names):
            tau = (inputs.models[mname][name].to(arith_dtype) - b).float().abs().numpy()
            flat = tau.ravel()
            d = densities[i]
            k = flat.size if d >= 1 else max(1, int(np.floor(d * flat.size)))
            thr = np.sort(flat)[::-1][k - 1]
            if np.sum(flat >= thr) > k:
                mask |= tau == thr
        out[name] = mask
    return out


# ---------------------------------------------------------------------------------------------
# float32: bit for bit


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_float32(mergekit_merge, f32_two, tmp_path, normalize):
    cfg = mergekit_config(f32_two, "linear", [1.0, 0.6], with_base=False,
                          params={"normalize": normalize})
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


def test_linear_float32_three_sharded(mergekit_merge, f32_three_sharded, tmp_path):
    cfg = mergekit_config(f32_three_sharded, "linear", [0.5, 1.3, 0.7], with_base=False)
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


@pytest.mark.parametrize(
    "weights, params",
    [([1.0, 1.0], None), ([1.0, 0.6], {"lambda": 0.7}), ([0.3, 1.7], {"normalize": True})],
)
def test_task_arithmetic_float32(mergekit_merge, f32_two, tmp_path, weights, params):
    cfg = mergekit_config(f32_two, "task_arithmetic", weights, params=params)
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


def test_task_arithmetic_float32_three(mergekit_merge, f32_three_sharded, tmp_path):
    cfg = mergekit_config(f32_three_sharded, "task_arithmetic", [1.0, 0.6, 1.3],
                          params={"lambda": 1.25})
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


@pytest.mark.parametrize(
    "weights, densities, params",
    [
        ([1.0, 1.0], [0.3, 0.3], None),
        ([1.0, 0.6], [0.3, 0.3], None),
        ([1.0, 0.6], [0.3, 0.5], {"lambda": 0.8}),
        ([0.7, 1.4], [0.3, 0.3], {"normalize": False}),
        ([1.0, 0.6], [1.0, 0.3], {"normalize": True, "lambda": 1.3}),
    ],
)
def test_ties_float32_two(mergekit_merge, f32_two, tmp_path, weights, densities, params):
    cfg = mergekit_config(f32_two, "ties", weights, densities, params=params)
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert not any(m.any() for m in tie_positions(f32_two, densities).values())
    assert_bitwise_equal(theirs, ours)


@pytest.mark.parametrize("params", [None, {"normalize": False, "lambda": 0.9}])
def test_ties_float32_three_sharded(mergekit_merge, f32_three_sharded, tmp_path, params):
    densities = [0.3, 0.5, 0.2]
    cfg = mergekit_config(f32_three_sharded, "ties", [1.0, 0.6, 1.3], densities, params=params)
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


def test_ties_float32_top_level_density_and_out_dtype(mergekit_merge, f32_two, tmp_path):
    # density given once under top-level `parameters`; output cast to bf16 on both sides
    cfg = mergekit_config(f32_two, "ties", [1.0, 0.6], params={"density": 0.3},
                          out_dtype="bfloat16")
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert next(iter(theirs.values())).dtype == torch.bfloat16
    assert_bitwise_equal(theirs, ours)


def test_ties_density_zero_keeps_nothing_as_mergekit(mergekit_merge, f32_two, tmp_path):
    # mergekit drops a model whose density is 0 entirely (the native recipe keeps k = max(1, .))
    cfg = mergekit_config(f32_two, "ties", [1.0, 0.6], [0.0, 0.4])
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


# ---------------------------------------------------------------------------------------------
# bfloat16 inputs


def test_linear_and_task_arithmetic_bf16(mergekit_merge, bf16_two, tmp_path):
    for method, params, with_base in [("linear", None, False),
                                      ("task_arithmetic", {"lambda": 0.9}, True)]:
        cfg = mergekit_config(bf16_two, method, [1.0, 0.6], params=params,
                              out_dtype="bfloat16", with_base=with_base)
        (tmp_path / method).mkdir()
        theirs, ours = both(mergekit_merge, cfg, tmp_path / method)
        assert_bitwise_equal(theirs, ours)


@pytest.mark.parametrize("fixture", ["bf16_two", "bf16_three_sharded"])
def test_ties_bf16_differs_only_at_threshold_ties(mergekit_merge, fixture, tmp_path, request):
    inputs = request.getfixturevalue(fixture)
    n = len(inputs.names)
    densities = [0.3, 0.2, 0.5][:n]
    cfg = mergekit_config(inputs, "ties", [1.0, 0.6, 1.3][:n], densities,
                          dtype="float32", out_dtype="bfloat16")
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    ties = tie_positions(inputs, densities)
    n_ties = sum(int(m.sum()) for m in ties.values())
    assert n_ties > 0, "test data has no ties at the threshold; the check would be vacuous"
    differing = assert_bitwise_equal(theirs, ours, allowed=ties)
    assert differing <= n_ties


def test_ties_bf16_arithmetic_dtype(mergekit_merge, bf16_two, tmp_path):
    # dtype: bfloat16 (mergekit does the whole merge in bf16, as many user YAMLs ask)
    densities = [0.3, 0.3]
    cfg = mergekit_config(bf16_two, "ties", [1.0, 0.5], densities, dtype="bfloat16")
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    ties = tie_positions(bf16_two, densities, arith_dtype=torch.bfloat16)
    assert_bitwise_equal(theirs, ours, allowed=ties)


# ---------------------------------------------------------------------------------------------
# mergekit features lrmerge refuses


def _refused(tmp_path, capsys, cfg: dict, *words: str):
    path = write_yaml(tmp_path / "refused.yaml", cfg)
    out = tmp_path / "out"
    code, _, err = run_cli_inprocess(["merge", path, "--out", out,
                                      "--stats", tmp_path / "s.json"], capsys)
    assert code == 2, err
    assert err.startswith("lrmerge merge: error:"), err
    low = err.lower()
    assert any(w.lower() in low for w in words), f"message names none of {words}: {err}"
    assert not out.exists() and not (tmp_path / "s.json").exists()
    assert not list(tmp_path.glob(".out.partial*"))


def test_refuses_slices(f32_two, tmp_path, capsys):
    cfg = {
        "merge_method": "ties",
        "base_model": str(f32_two.base_path),
        "slices": [{"sources": [
            {"model": str(p), "layer_range": [0, 2], "parameters": {"weight": 1.0, "density": 0.5}}
            for p in f32_two.model_paths
        ]}],
        "dtype": "float32",
    }
    _refused(tmp_path, capsys, cfg, "slices")


@pytest.mark.parametrize("key, value", [("density", [0.2, 0.8]), ("weight", [1.0, 0.5, 0.2])])
def test_refuses_gradient_parameters(f32_two, tmp_path, capsys, key, value):
    cfg = mergekit_config(f32_two, "ties", [1.0, 1.0], [0.3, 0.3])
    cfg["models"][0]["parameters"][key] = value
    _refused(tmp_path, capsys, cfg, key)


def test_refuses_filtered_parameters(f32_two, tmp_path, capsys):
    cfg = mergekit_config(f32_two, "ties", [1.0, 1.0], [0.3, 0.3])
    cfg["models"][1]["parameters"]["weight"] = [{"filter": "self_attn", "value": 0.5},
                                                {"value": 1.0}]
    _refused(tmp_path, capsys, cfg, "weight", "filter")


def test_refuses_filtered_top_level_parameter(f32_two, tmp_path, capsys):
    cfg = mergekit_config(f32_two, "ties", [1.0, 1.0], [0.3, 0.3],
                          params={"lambda": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]})
    _refused(tmp_path, capsys, cfg, "lambda", "filter")


@pytest.mark.parametrize("key, value", [("tokenizer_source", "union"),
                                        ("tokenizer", {"source": "union"})])
def test_refuses_tokenizer_merging(f32_two, tmp_path, capsys, key, value):
    cfg = mergekit_config(f32_two, "ties", [1.0, 1.0], [0.3, 0.3])
    cfg[key] = value
    _refused(tmp_path, capsys, cfg, "tokenizer")


@pytest.mark.parametrize("method", ["slerp", "model_stock", "della"])
def test_refuses_unsupported_methods(f32_two, tmp_path, capsys, method):
    cfg = mergekit_config(f32_two, method, [1.0, 1.0])
    if method == "slerp":
        cfg["parameters"] = {"t": 0.5}
    _refused(tmp_path, capsys, cfg, method)


# ---------------------------------------------------------------------------------------------
# YAML shapes users bring


def test_ties_base_also_listed_in_models(mergekit_merge, f32_two, tmp_path):
    # mergekit's own TIES example lists the base among the models, without parameters
    cfg = mergekit_config(f32_two, "ties", [1.0, 0.6], [0.5, 0.3])
    cfg["models"].insert(0, {"model": str(f32_two.base_path)})
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


def test_top_level_weight_and_density_with_per_model_override(mergekit_merge, f32_three_sharded,
                                                              tmp_path):
    cfg = mergekit_config(f32_three_sharded, "ties", [1.0, 0.6, 1.3],
                          params={"weight": 0.7, "density": 0.4, "lambda": 0.9})
    for m in cfg["models"][:2]:
        del m["parameters"]["weight"]  # these two take the top-level weight
    cfg["models"][2]["parameters"]["density"] = 0.2
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


@pytest.mark.parametrize("method, params", [("task_arithmetic", {"lambda": 0.8}),
                                            ("linear", None),
                                            ("ties", {"normalize": False})])
def test_bf16_arithmetic_dtype_other_methods(mergekit_merge, bf16_three_sharded, tmp_path,
                                             method, params):
    densities = [0.3, 0.5, 0.2] if method == "ties" else None
    cfg = mergekit_config(bf16_three_sharded, method, [1.0, 0.6, 1.3], densities, params=params,
                          dtype="bfloat16", with_base=method != "linear")
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    allowed = (tie_positions(bf16_three_sharded, densities, arith_dtype=torch.bfloat16)
               if method == "ties" else None)
    assert_bitwise_equal(theirs, ours, allowed=allowed)


# ---------------------------------------------------------------------------------------------
# breadcrumbs: a method added through the method table alone


@pytest.mark.parametrize(
    "weights, densities, params",
    [
        ([1.0, 1.0], [0.3, 0.3], None),
        ([1.0, 0.6], [0.5, 0.2], {"gamma": 0.05, "lambda": 0.8}),
        ([0.7, 1.4], [0.9, 0.3], {"gamma": 0.2, "normalize": True}),  # k + top > N for model 0
        ([1.0, 0.6], [1.0, 0.4], {"gamma": 0.1}),  # density 1 keeps all, gamma or not
    ],
)
def test_breadcrumbs_float32(mergekit_merge, f32_two, tmp_path, weights, densities, params):
    cfg = mergekit_config(f32_two, "breadcrumbs", weights, densities, params=params)
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    assert_bitwise_equal(theirs, ours)


def test_breadcrumbs_three_sharded_bf16_arithmetic(mergekit_merge, bf16_three_sharded, tmp_path):
    cfg = mergekit_config(bf16_three_sharded, "breadcrumbs", [1.0, 0.6, 1.3], [0.3, 0.5, 0.2],
                          params={"gamma": 0.02}, dtype="bfloat16")
    theirs, ours = both(mergekit_merge, cfg, tmp_path)
    # bf16 deltas repeat values: where a model's |tau| at either end of its window is shared by
    # entries inside and outside it, mergekit's unstable sort may keep others than ours
    allowed = {}
    for name in bf16_three_sharded.tensor_names:
        b = bf16_three_sharded.base[name]
        mask = np.zeros(tuple(b.shape), dtype=bool)
        for i, m in enumerate(bf16_three_sharded.names):
            tau = (bf16_three_sharded.models[m][name] - b).float().abs().numpy()
            flat = np.sort(tau.ravel())
            k = int([0.3, 0.5, 0.2][i] * flat.size)
            lo = max(0, flat.size - k - int(0.02 * flat.size))
            for v in (flat[lo], flat[lo + k - 1]):
                mask |= tau == v
        allowed[name] = mask
    assert_bitwise_equal(theirs, ours, allowed=allowed)


def test_breadcrumbs_refuses_what_it_cannot_match(f32_two, tmp_path, capsys):
    cfg = mergekit_config(f32_two, "breadcrumbs", [1.0, 1.0], [0.3, 0.3], params={"rescale": True})
    _refused(tmp_path, capsys, cfg, "rescale")
    cfg = mergekit_config(f32_two, "breadcrumbs", [1.0, 1.0], [0.3, 0.3])
    cfg["models"][0]["parameters"]["gamma"] = 0.1
    (tmp_path / "g").mkdir()
    _refused(tmp_path / "g", capsys, cfg, "per-model gamma")
    cfg = mergekit_config(f32_two, "ties", [1.0, 1.0], [0.3, 0.3], params={"gamma": 0.1})
    (tmp_path / "t").mkdir()
    _refused(tmp_path / "t", capsys, cfg, "gamma has no meaning for ties")
