"""The merge engine (`lrmerge merge`, `lrmerge.merge.run_merge`) against the spec of issue 2:
the output folder, equality with the independent reference (tests/merge_reference.py) for every
method and option, hypothesis properties of TIES / TIES-SV and their stats, determinism, threads,
the output's atomic placement, and `merge-config`."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import merge_reference as R
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from merge_helpers import (
    assert_close_to_ref,
    assert_stats_equal,
    build_inputs,
    file_digests,
    load_model,
    mergekit_config,
    native_config,
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


# ---------------------------------------------------------------------------------------------
# the output folder


def test_output_is_a_loadable_sharded_hf_folder(bf16_three_sharded, tmp_path, capsys):
    inputs = bf16_three_sharded
    cfg = native_config(inputs, "ties", density=0.3, out_dtype="bfloat16")
    path = write_yaml(tmp_path / "merge.yaml", cfg)
    out = tmp_path / "merged"
    shard = 8000  # bytes: the tiny model (~13 KB in bf16) must be split in several shards
    code, _, err = run_cli_inprocess(["merge", path, "--out", out, "--stats",
                                      tmp_path / "stats.json", "--shard-size", f"{shard}B",
                                      "--threads", "1"],
                                     capsys)
    assert code == 0, err

    # sharded safetensors + index, every tensor once, shards within the size option
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    for name in shards:
        assert re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name), name
    assert set(index["weight_map"]) == set(inputs.tensor_names)
    tensors = load_model(out)
    assert set(tensors) == set(inputs.tensor_names)
    largest = max(t.numel() * t.element_size() for t in tensors.values())
    for name in shards:
        data = sum(tensors[k].numel() * tensors[k].element_size()
                   for k, f in index["weight_map"].items() if f == name)
        assert data <= max(shard, largest), (name, data)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == total

    # config, generation config and tokenizer files from the base
    base = inputs.base_path
    out_cfg = json.loads((out / "config.json").read_text())
    base_cfg = json.loads((base / "config.json").read_text())
    for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size",
                "num_key_value_heads", "tie_word_embeddings"):
        assert out_cfg[key] == base_cfg[key], key
    for fname in ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json"):
        assert (out / fname).read_bytes() == (base / fname).read_bytes(), fname

    # README model card: method, inputs with content hashes, parameters
    card = (out / "README.md").read_text()
    assert "ties" in card
    assert "0.3" in card  # density
    for p in [inputs.base_path, *inputs.model_paths]:
        assert p.name in card, p
    hashes = set(re.findall(r"\b[0-9a-f]{16,64}\b", card))
    assert len(hashes) >= 1 + len(inputs.names), "expected a content hash per input"

    # transformers loads it; its weights are the files' weights; the tokenizer loads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    sd = model.state_dict()
    for name, t in tensors.items():
        assert torch.equal(sd[name].to(t.dtype), t), name
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], inputs.cfg["vocab_size"])
    assert torch.isfinite(logits).all()


def test_average_without_base_copies_first_model_files(make_merge_inputs, tmp_path):
    inputs = make_merge_inputs(n_models=2, seed=3)
    first = inputs.model_paths[0]
    gen = json.loads((first / "generation_config.json").read_text())
    gen["max_new_tokens"] = 99  # tell the first model's file from the base's
    (first / "generation_config.json").write_text(json.dumps(gen))
    cfg = native_config(inputs, "average", out_dtype="float32")
    assert "base" not in cfg
    stats, _ = run_engine(cfg, tmp_path / "avg")
    out = tmp_path / "avg"
    assert (out / "generation_config.json").read_bytes() == (
        first / "generation_config.json").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    assert stats["method"] == "average"


def test_model_names_default_to_folder_names(f32_two, tmp_path):
    cfg = native_config(f32_two, "ties", density=0.5, out_dtype="float32")
    for m in cfg["models"]:
        del m["name"]
    stats, _ = run_engine(cfg, tmp_path / "o")
    assert stats["models"] == [p.name for p in f32_two.model_paths]


def test_top_level_weight_is_the_default_that_models_override(f32_two, tmp_path):
    explicit = native_config(f32_two, "ties", density=0.5, out_dtype="float32")
    explicit["models"][0]["weight"] = 0.4
    explicit["models"][1]["weight"] = 1.5
    defaulted = native_config(f32_two, "ties", density=0.5, out_dtype="float32")
    defaulted["weight"] = 0.4
    defaulted["models"][0].pop("weight", None)
    defaulted["models"][1]["weight"] = 1.5
    a_stats, a = run_engine(explicit, tmp_path / "a")
    b_stats, b = run_engine(defaulted, tmp_path / "b")
    assert b_stats["parameters"]["models"][0]["weight"] == 0.4
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_no_partial_folder_left_and_stale_partial_removed(f32_two, tmp_path):
    out = tmp_path / "merged"
    stale = tmp_path / ".merged.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"junk from an interrupted run")
    cfg = native_config(f32_two, "ties", density=0.5, out_dtype="float32")
    run_engine(cfg, out)
    assert out.is_dir()
    assert not list(tmp_path.glob(".merged.partial*")), list(tmp_path.iterdir())


def test_force_overwrites_existing_output(f32_two, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("old")
    cfg = write_yaml(tmp_path / "m.yaml", native_config(f32_two, "task_arithmetic",
                                                        out_dtype="float32"))
    code, _, err = run_cli_inprocess(["merge", cfg, "--out", out, "--force", "--threads", "1"],
                                     capsys)
    assert code == 0, err
    assert not (out / "old.txt").exists()
    assert set(load_model(out)) == set(f32_two.tensor_names)


def test_merge_path_does_not_import_transformers(f32_two, tmp_path):
    cfg = write_yaml(tmp_path / "m.yaml", native_config(f32_two, "ties", density=0.3))
    code = (
        "import sys\n"
        "from lrmerge.cli import main\n"
        f"rc = main(['merge', {str(cfg)!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in ('transformers', 'peft', 'accelerate') if m in sys.modules]\n"
        "assert not bad, bad\n"
        # numba's BLAS probe (an import of scipy.linalg, ~0.3 s) is skipped, and scipy.linalg
        # stays importable afterwards
        "import importlib.util\n"
        "if importlib.util.find_spec('scipy'):\n"
        "    assert 'scipy.linalg' not in sys.modules\n"
        "    import scipy.linalg\n"
        "    assert scipy.linalg.norm([3.0, 4.0]) == 5.0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# the engine equals the reference, stats included

CASES = {
    # id: (fixture, native config keys, reference keyword arguments)
    "average": ("f32_two", {"method": "average", "models_w": [1.0, 0.6]},
                {"method": "average", "weights": [1.0, 0.6]}),
    "task_arithmetic": ("f32_two", {"method": "task_arithmetic", "models_w": [1.0, 0.6],
                                    "lambda": 0.7},
                        {"method": "task_arithmetic", "weights": [1.0, 0.6], "lam": 0.7}),
    "ties": ("f32_two", {"method": "ties", "density": 0.3},
             {"method": "ties", "weights": [1.0, 1.0], "densities": 0.3}),
    "ties_weights_lambda": ("f32_two", {"method": "ties", "density": 0.3, "lambda": 0.5,
                                        "models_w": [0.6, 1.4]},
                            {"method": "ties", "weights": [0.6, 1.4], "densities": 0.3,
                             "lam": 0.5}),
    "ties_unweighted": ("f32_two", {"method": "ties", "density": 0.3, "vote": "unweighted",
                                    "models_w": [0.6, 1.4]},
                        {"method": "ties", "weights": [0.6, 1.4], "densities": 0.3,
                         "vote": "unweighted"}),
    "ties_overrides": ("f32_three_sharded",
                       {"method": "ties", "density": 0.3,
                        "overrides": [{}, {"density": 0.6}, {"weight": 1.5, "density": 0.1}]},
                       {"method": "ties", "weights": [1.0, 1.0, 1.5],
                        "densities": [0.3, 0.6, 0.1]}),
    "ties_three": ("f32_three_sharded", {"method": "ties", "density": 0.2,
                                         "models_w": [1.0, 0.6, 1.3]},
                   {"method": "ties", "weights": [1.0, 0.6, 1.3], "densities": 0.2}),
    "ties_model_scope": ("f32_two", {"method": "ties", "density": 0.3, "trim_scope": "model"},
                         {"method": "ties", "weights": [1.0, 1.0], "densities": 0.3,
                          "trim_scope": "model"}),
    "ties_sv": ("f32_two", {"method": "ties_sv", "density": 0.3, "slack": 0.3, "protect": "m1"},
                {"method": "ties_sv", "weights": [1.0, 1.0], "densities": 0.3, "slack": 0.3,
                 "protect": 1}),
    "ties_sv_three": ("f32_three_sharded",
                      {"method": "ties_sv", "density": 0.4, "slack": 0.5, "protect": "m0",
                       "models_w": [1.0, 0.6, 1.3], "lambda": 1.1},
                      {"method": "ties_sv", "weights": [1.0, 0.6, 1.3], "densities": 0.4,
                       "slack": 0.5, "protect": 0, "lam": 1.1}),
    "ties_sv_unweighted": ("f32_three_sharded",
                           {"method": "ties_sv", "density": 0.3, "slack": 0.4, "protect": "m1",
                            "vote": "unweighted", "models_w": [1.0, 0.6, 1.3]},
                           {"method": "ties_sv", "weights": [1.0, 0.6, 1.3], "densities": 0.3,
                            "slack": 0.4, "protect": 1, "vote": "unweighted"}),
    "ties_sv_model_scope": ("f32_two", {"method": "ties_sv", "density": 0.3, "slack": 0.3,
                                        "protect": "m0", "trim_scope": "model"},
                            {"method": "ties_sv", "weights": [1.0, 1.0], "densities": 0.3,
                             "slack": 0.3, "protect": 0, "trim_scope": "model"}),
    # bf16 inputs: many |tau| ties at the threshold, so the tie rule decides the stats
    "ties_bf16": ("bf16_two", {"method": "ties", "density": 0.3, "models_w": [1.0, 0.6]},
                  {"method": "ties", "weights": [1.0, 0.6], "densities": 0.3}),
    "ties_sv_bf16_three": ("bf16_three_sharded",
                           {"method": "ties_sv", "density": 0.25, "slack": 0.4,
                            "protect": "m2"},
                           {"method": "ties_sv", "weights": [1.0, 1.0, 1.0], "densities": 0.25,
                            "slack": 0.4, "protect": 2}),
}


def _native(inputs, spec: dict, out_dtype: str = "float32") -> dict:
    spec = dict(spec)
    method = spec.pop("method")
    weights = spec.pop("models_w", None)
    overrides = spec.pop("overrides", None) or [{} for _ in inputs.names]
    if weights is not None:
        overrides = [dict(o, weight=w) for o, w in zip(overrides, weights, strict=True)]
    return native_config(inputs, method, model_overrides=overrides, out_dtype=out_dtype, **spec)


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_equals_reference(case, tmp_path, request):
    fixture, spec, ref_kw = CASES[case]
    inputs = request.getfixturevalue(fixture)
    stats, out = run_engine(_native(inputs, spec), tmp_path / "out")
    ref = R.merge_model(inputs, **ref_kw)
    assert stats["method"] == ref_kw["method"]
    assert_stats_equal(stats, ref, inputs.names)
    assert_close_to_ref(out, ref, "float32")


def test_engine_equals_reference_bf16_output(bf16_two, tmp_path):
    spec = {"method": "ties", "density": 0.3, "models_w": [1.0, 0.6]}
    stats, out = run_engine(_native(bf16_two, spec, out_dtype="bfloat16"), tmp_path / "out")
    ref = R.merge_model(bf16_two, "ties", [1.0, 0.6], 0.3)
    assert_stats_equal(stats, ref, bf16_two.names)
    assert_close_to_ref(out, ref, "bfloat16")


# ---------------------------------------------------------------------------------------------
# hypothesis: properties on random small models


DYADIC = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0])


@st.composite
def merge_setups(draw, method="ties_sv"):
    n = draw(st.integers(2, 3))
    setup = {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "n": n,
        "quantized": draw(st.booleans()),  # values on a coarse grid: many exact ties
        "dtype": draw(st.sampled_from(["float32", "bfloat16"])),
        "densities": [draw(st.sampled_from([0.05, 0.1, 0.2, 0.3, 0.5, 0.9, 1.0]))
                      for _ in range(n)],
        "weights": [draw(DYADIC) for _ in range(n)],
        "lam": draw(st.sampled_from([0.5, 1.0, 1.25])),
        "slack": draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])),
        "protect": draw(st.integers(0, n - 1)),
        "shared_frac": draw(st.sampled_from([0.0, 0.5, 0.9])),
    }
    return setup


def _build(root: Path, s: dict):
    return build_inputs(root, n_models=s["n"], dtype=s["dtype"], seed=s["seed"],
                        quantized=s["quantized"], shared_frac=s["shared_frac"],
                        tokenizer=False)


def _config(inputs, s: dict, method: str, **over) -> dict:
    cfg = native_config(
        inputs, method,
        model_overrides=[{"weight": w, "density": d}
                         for w, d in zip(s["weights"], s["densities"], strict=True)],
        out_dtype="float32", **{"lambda": s["lam"]})
    if method == "ties_sv":
        cfg["slack"] = s["slack"]
        cfg["protect"] = inputs.names[s["protect"]]
    cfg.update(over)
    return cfg


PROPS = settings(max_examples=10, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(merge_setups())
def test_property_engine_matches_reference_and_stats_add_up(s):
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        stats, out = run_engine(_config(inputs, s, "ties_sv"), Path(d) / "out")
        ref = R.merge_model(inputs, "ties_sv", s["weights"], s["densities"], lam=s["lam"],
                            slack=s["slack"], protect=s["protect"])
    # structure: per tensor, kept == k, discarded <= kept, reserved only for the protected model
    # and never more than its discarded entries before the slack
    for name, entries in stats["tensors"].items():
        numel = inputs.base[name].numel()
        for i, e in enumerate(entries):
            assert e["kept"] == R.n_keep(s["densities"][i], numel), (name, i)
            assert 0 <= e["discarded"] <= e["kept"]
            if i != s["protect"]:
                assert e["reserved"] == 0
            else:
                assert e["reserved"] <= ref[name].discarded_before_slack[i]
    # totals == sum over tensors == sum over layers == sum over modules
    for key in ("kept", "discarded", "reserved"):
        for i in range(s["n"]):
            total = stats["totals"][i][key]
            assert total == sum(v[i][key] for v in stats["tensors"].values())
            assert total == sum(v[i][key] for v in stats["by_layer"].values())
            assert total == sum(v[i][key] for v in stats["by_module"].values())
    for i in range(s["n"]):
        t = stats["totals"][i]
        assert math.isclose(t["discarded_fraction"], t["discarded"] / t["kept"])
    assert_stats_equal(stats, ref, inputs.names)
    assert_close_to_ref(out, ref, "float32")


@PROPS
@given(merge_setups())
def test_property_slack_zero_is_ties_exactly(s):
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        st_sv, out_sv = run_engine(_config(inputs, s, "ties_sv", slack=0.0), Path(d) / "sv")
        st_ties, out_ties = run_engine(_config(inputs, s, "ties"), Path(d) / "ties")
    for name, t in out_ties.items():
        assert torch.equal(out_sv[name].view(torch.int32), t.view(torch.int32)), name
    for key in ("totals", "tensors", "by_layer", "by_module"):
        assert st_sv[key] == st_ties[key], key
    assert all(e["reserved"] == 0 for e in st_sv["totals"])


@PROPS
@given(merge_setups())
def test_property_slack_one_discards_nothing_of_protected(s):
    p = s["protect"]
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        st_sv, _ = run_engine(_config(inputs, s, "ties_sv", slack=1.0), Path(d) / "sv")
        st_ties, _ = run_engine(_config(inputs, s, "ties"), Path(d) / "ties")
    assert st_sv["totals"][p]["discarded"] == 0
    for name, entries in st_sv["tensors"].items():
        assert entries[p]["discarded"] == 0, name
        # everything ties discarded of p was reserved
        assert entries[p]["reserved"] == st_ties["tensors"][name][p]["discarded"], name
        assert entries[p]["kept"] == st_ties["tensors"][name][p]["kept"], name


@PROPS
@given(merge_setups())
def test_property_unanimous_sign_result_between_base_and_models(s):
    with tempfile.TemporaryDirectory() as d:
        inputs = _build(Path(d), s)
        s = dict(s, weights=[1.0] * s["n"], lam=1.0)
        _, out = run_engine(_config(inputs, s, "ties"), Path(d) / "ties")
    checked = 0
    for name in inputs.tensor_names:
        base = inputs.base_np(name).astype(np.float64)
        thetas = np.stack([t.astype(np.float64) for t in inputs.thetas(name)])
        taus = thetas - base
        unanimous = np.all(taus > 0, axis=0) | np.all(taus < 0, axis=0)
        lo = np.minimum(base, thetas.min(axis=0))
        hi = np.maximum(base, thetas.max(axis=0))
        got = out[name].double().numpy()
        slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(lo), np.abs(hi))
        bad = unanimous & ((got < lo - slack) | (got > hi + slack))
        assert not bad.any(), (name, np.argwhere(bad)[:3].tolist())
        checked += int(unanimous.sum())
    assert checked > 0


# ---------------------------------------------------------------------------------------------
# determinism, threads, merge-config


def test_two_runs_byte_identical(f32_two, tmp_path):
    cfg = native_config(f32_two, "ties_sv", density=0.3, slack=0.2, protect="m1",
                        out_dtype="bfloat16")
    run_engine(cfg, tmp_path / "a", threads=2)
    run_engine(cfg, tmp_path / "b", threads=2)
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    assert (tmp_path / "a.stats.json").read_bytes() == (tmp_path / "b.stats.json").read_bytes()


@pytest.mark.parametrize("method", ["ties", "average"])
def test_threads_one_and_two_identical(bf16_three_sharded, tmp_path, method):
    kw = {"density": 0.3} if method == "ties" else {}
    cfg = native_config(bf16_three_sharded, method, out_dtype="bfloat16", **kw)
    run_engine(cfg, tmp_path / "t1", threads=1)
    run_engine(cfg, tmp_path / "t2", threads=2)
    assert file_digests(tmp_path / "t1") == file_digests(tmp_path / "t2")
    assert (tmp_path / "t1.stats.json").read_bytes() == (tmp_path / "t2.stats.json").read_bytes()


def test_merge_config_round_trip(f32_two, tmp_path, capsys):
    a, b = f32_two.model_paths
    path = tmp_path / "written.yaml"
    code, _, err = run_cli_inprocess(
        ["merge-config", "--method", "ties_sv", "--base", f32_two.base_path,
         "--model", f"ct={a}@0.7", "--model", f"sft={b}", "--density", "0.3",
         "--lambda", "0.9", "--slack", "0.25", "--protect", "sft", "--out", path], capsys)
    assert code == 0, err
    written = yaml.safe_load(path.read_text())
    assert written["method"] == "ties_sv"
    assert Path(written["base"]) == f32_two.base_path
    assert [m["name"] for m in written["models"]] == ["ct", "sft"]
    assert [Path(m["path"]) for m in written["models"]] == [a, b]
    assert written["models"][0]["weight"] == 0.7
    assert written["models"][1].get("weight", 1.0) == 1.0
    assert written["density"] == 0.3 and written["lambda"] == 0.9
    assert written["slack"] == 0.25 and written["protect"] == "sft"

    # merging the written config == merging the same config written by hand
    hand = {"method": "ties_sv", "base": str(f32_two.base_path),
            "models": [{"path": str(a), "name": "ct", "weight": 0.7},
                       {"path": str(b), "name": "sft", "weight": 1.0}],
            "density": 0.3, "lambda": 0.9, "slack": 0.25, "protect": "sft"}
    st1, out1 = run_engine(path, tmp_path / "from_written")
    st2, out2 = run_engine(hand, tmp_path / "from_hand")
    assert st1 == st2
    assert all(torch.equal(out1[k], out2[k]) for k in out2)
    ref = R.merge_model(f32_two, "ties_sv", [0.7, 1.0], 0.3, lam=0.9, slack=0.25, protect=1)
    assert_stats_equal(st1, ref, ["ct", "sft"])


def test_engine_survives_stderr_replaced_at_import(f32_two, tmp_path):
    # A library must not capture sys.stderr at import time: here stderr is a temporary stream
    # while lrmerge.merge is imported (as under pytest's capsys or a redirecting caller), then
    # closed and restored before the merge runs.
    cfg = write_yaml(tmp_path / "m.yaml", native_config(f32_two, "ties", density=0.3))
    code = (
        "import io, sys\n"
        "real = sys.stderr\n"
        "sys.stderr = io.StringIO()\n"
        "import lrmerge.merge\n"
        "sys.stderr.close()\n"
        "sys.stderr = real\n"
        "from lrmerge.merge import run_merge\n"
        f"run_merge({str(cfg)!r}, {str(tmp_path / 'o')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# dare_ties: random drops, so no reference values; seeded, and about d of each tensor kept


def test_dare_ties_seeded_and_keeps_about_density(f32_two, tmp_path):
    d = 0.3
    cfg = native_config(f32_two, "dare_ties", density=d, seed=7, out_dtype="float32")
    st1, out1 = run_engine(cfg, tmp_path / "a")
    st2, out2 = run_engine(cfg, tmp_path / "b")
    st3, out3 = run_engine(dict(cfg, seed=8), tmp_path / "c")
    assert st1 == st2 and all(torch.equal(out1[k], out2[k]) for k in out1)
    assert any(not torch.equal(out1[k], out3[k]) for k in out1), "seed has no effect"
    for i in range(2):
        kept = st1["totals"][i]["kept"]
        n = sum(t.numel() for t in f32_two.base.values())
        assert abs(kept - d * n) <= 5 * math.sqrt(n * d * (1 - d)), (kept, d * n)
    # entries that no model kept stay at the base
    for name, t in out1.items():
        base = f32_two.base[name]
        assert torch.isfinite(t).all()
        assert (t == base).any(), name


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_mergekit_yaml_dare_accepted(f32_two, tmp_path, method):
    cfg = mergekit_config(f32_two, method, [1.0, 0.5], [0.5, 0.5])
    stats, out = run_engine(cfg, tmp_path / "o")
    assert set(out) == set(f32_two.tensor_names)
    assert all(torch.isfinite(t).all() for t in out.values())
