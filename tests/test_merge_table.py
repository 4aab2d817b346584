"""The method table is the one place a method's facts live: the registry, the parsers and the CLI
agree with it, and breadcrumbs (added through it alone) does what its definition says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_helpers import native_config, run_cli_inprocess, run_engine, write_yaml

from lrmerge.merge import MergeError, load_merge_config
from lrmerge.merge.methods import REGISTRY, rank_window
from lrmerge.merge.table import ENGINE_METHODS, METHOD_TABLE, PARAM_KEYS, methods_with


def test_every_table_row_has_an_implementation_and_back():
    assert set(REGISTRY) == set(METHOD_TABLE)


def test_merge_config_offers_every_parameter_of_the_table(tmp_path, capsys):
    code, out, _ = run_cli_inprocess(["merge-config", "--help"], capsys)
    assert code == 0
    for key in PARAM_KEYS:
        assert f"--{key.replace('_', '-')}" in out, key
    for name in ENGINE_METHODS:
        assert name in out


@pytest.mark.parametrize("name", ENGINE_METHODS)
def test_each_method_refuses_the_parameters_of_others(name, tmp_path):
    method = METHOD_TABLE[name]
    foreign = [k for k in PARAM_KEYS if method.param(k) is None]
    assert foreign, name
    data = {"method": name, "models": [{"path": str(tmp_path / "a"), "name": "a"},
                                       {"path": str(tmp_path / "b"), "name": "b"}],
            "base": str(tmp_path / "base"), foreign[0]: 1}
    with pytest.raises(MergeError, match=f"key '{foreign[0]}' has no meaning for {name} "
                                         rf"\(it is for {', '.join(methods_with(foreign[0]))}\)"):
        load_merge_config(data)


def test_mergekit_names_parse_to_their_rows(tmp_path):
    for method in METHOD_TABLE.values():
        if method.mergekit is None:
            continue
        data = {"merge_method": method.mergekit, "base_model": str(tmp_path / "base"),
                "models": [{"model": str(tmp_path / "a"), "parameters": {"weight": 1.0}}]}
        cfg = load_merge_config(data)
        assert cfg.method == method.name
        assert cfg.normalize is method.normalizes  # mergekit's default normalize is the row's


def test_rank_window_ranks_equal_keys_by_index():
    keys = np.array([3, 1, 2, 2, 2, 5, 0], np.float32)
    # ascending by (key, index): 6(0) 1(1) 2(2) 3(2) 4(2) 0(3) 5(5)
    got = rank_window(keys, 2, 3)
    assert np.flatnonzero(got).tolist() == [2, 3, 4]
    got = rank_window(keys, 3, 3)  # ranks 3..5: indices 3, 4, 0
    assert np.flatnonzero(got).tolist() == [0, 3, 4]
    assert not rank_window(keys, 0, 0).any()
    assert rank_window(keys, 0, 7).all()


def test_breadcrumbs_by_hand(f32_two, tmp_path):
    """Against its definition computed here: per model, drop the floor(gamma N) largest |tau|, keep
    the next floor(density N), add the weighted kept deltas to the base."""
    weights, densities, gamma, lam = [1.0, 0.6], [0.4, 0.25], 0.1, 0.9
    cfg = native_config(f32_two, "breadcrumbs", density=None, gamma=gamma, **{"lambda": lam},
                        model_overrides=[{"weight": w, "density": d}
                                         for w, d in zip(weights, densities, strict=True)])
    del cfg["density"]
    stats, out = run_engine(write_yaml(tmp_path / "b.yaml", cfg), tmp_path / "out")
    for name in f32_two.tensor_names:
        base = f32_two.base[name].double().numpy().ravel()
        mixed = np.zeros_like(base)
        for i, m in enumerate(f32_two.names):
            tau = f32_two.models[m][name].double().numpy().ravel() - base
            order = np.argsort(np.abs(tau), kind="stable")
            n, k = tau.size, int(densities[i] * tau.size)
            lo = max(0, n - k - int(gamma * n))
            keep = np.zeros(n, bool)
            keep[order[lo:lo + k]] = True
            mixed += weights[i] * np.where(keep, tau, 0)
        want = base + lam * mixed
        got = out[name].double().numpy().ravel()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    numel = sum(f32_two.base[t].numel() for t in f32_two.tensor_names)
    kept = [t["kept"] for t in stats["totals"]]
    assert kept == [sum(int(d * f32_two.base[t].numel()) for t in f32_two.tensor_names)
                    for d in densities]
    assert all(t["discarded"] == 0 for t in stats["totals"])  # no sign election
    assert kept[0] < numel


def test_breadcrumbs_is_bit_identical_from_run_to_run(f32_two, tmp_path):
    cfg = write_yaml(tmp_path / "b.yaml", native_config(f32_two, "breadcrumbs", density=0.3))
    _, a = run_engine(cfg, tmp_path / "a")
    _, b = run_engine(cfg, tmp_path / "b", threads=2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_breadcrumbs_needs_density(f32_two):
    with pytest.raises(MergeError, match="key 'density' is required for breadcrumbs"):
        load_merge_config(native_config(f32_two, "breadcrumbs"))
