"""Bad input to `lrmerge merge`: exit code 2, a message on stderr starting `lrmerge merge: error:`
that names the file, key or tensor at fault, and nothing written (no OUT_DIR, no stats file, no
partial folder). Also the interrupted merge: killed mid-way it leaves no OUT_DIR, and a re-run
gives the same bytes as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from merge_helpers import (
    file_digests,
    llama_config,
    llama_shapes,
    load_model,
    lrmerge_exe,
    native_config,
    run_cli,
    run_cli_inprocess,
    weight_files,
    write_model,
    write_yaml,
)
from safetensors.torch import save_file


@pytest.fixture(autouse=True, scope="module")
def _engine_imported_outside_capsys():
    """Import the engine before any capsys-capturing test: an engine that binds sys.stderr at
    import time would otherwise keep a closed capture stream (that bug has its own test:
    test_engine_survives_stderr_replaced_at_import)."""
    import lrmerge.merge  # noqa: F401


TENSOR = "model.layers.1.mlp.up_proj.weight"


def expect_error(tmp_path: Path, capsys, cfg, *culprits: str, out: Path | None = None,
                 extra: tuple = ()) -> str:
    """Run `lrmerge merge` on cfg (dict or path); assert exit 2, the message, nothing written."""
    path = write_yaml(tmp_path / "merge.yaml", cfg) if isinstance(cfg, dict) else cfg
    out = out or tmp_path / "merged"
    stats = tmp_path / "stats.json"
    code, _, err = run_cli_inprocess(["merge", path, "--out", out, "--stats", stats, *extra],
                                     capsys)
    assert code == 2, f"exit {code}: {err}"
    assert err.startswith("lrmerge merge: error:"), err
    for c in culprits:
        assert str(c) in err, f"message does not name {c!r}: {err}"
    assert not out.exists(), "OUT_DIR was written"
    assert not stats.exists(), "stats file was written"
    assert not list(out.parent.glob(f".{out.name}.partial*")), "a partial folder was left"
    return err


def rewrite_tensor(folder: Path, name: str, new: torch.Tensor | None) -> Path:
    """Replace (or with None remove) one tensor in a model folder, in the file holding it."""
    for f in weight_files(folder):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            keys = list(fh.keys())
            if name not in keys:
                continue
            tensors = {k: fh.get_tensor(k) for k in keys}
        if new is None:
            del tensors[name]
        else:
            tensors[name] = new
        save_file(tensors, str(f), metadata={"format": "pt"})
        index = folder / "model.safetensors.index.json"
        if new is None and index.exists():
            data = json.loads(index.read_text())
            del data["weight_map"][name]
            index.write_text(json.dumps(data))
        return f
    raise KeyError(name)


@pytest.fixture
def inputs(make_merge_inputs):
    return make_merge_inputs(n_models=2, seed=5, shards=2)


def ties_cfg(inputs, **kw):
    kw.setdefault("density", 0.3)
    return native_config(inputs, "ties", **kw)


def test_missing_model_folder(inputs, tmp_path, capsys):
    cfg = ties_cfg(inputs)
    missing = tmp_path / "no_such_model"
    cfg["models"][1]["path"] = str(missing)
    expect_error(tmp_path, capsys, cfg, "no_such_model")


def test_missing_base_folder(inputs, tmp_path, capsys):
    cfg = ties_cfg(inputs)
    cfg["base"] = str(tmp_path / "no_such_base")
    expect_error(tmp_path, capsys, cfg, "no_such_base")


def test_missing_shard(inputs, tmp_path, capsys):
    shard = weight_files(inputs.model_paths[1])[1]
    shard.unlink()
    expect_error(tmp_path, capsys, ties_cfg(inputs), shard.name)


def test_tensor_missing_from_one_model(inputs, tmp_path, capsys):
    rewrite_tensor(inputs.model_paths[1], TENSOR, None)
    expect_error(tmp_path, capsys, ties_cfg(inputs), TENSOR)


def test_shape_mismatch(inputs, tmp_path, capsys):
    t = load_model(inputs.model_paths[0])[TENSOR]
    rewrite_tensor(inputs.model_paths[0], TENSOR, t[:, :-1].contiguous())
    expect_error(tmp_path, capsys, ties_cfg(inputs), TENSOR)


def test_dtype_mismatch(inputs, tmp_path, capsys):
    t = load_model(inputs.model_paths[1])[TENSOR]
    rewrite_tensor(inputs.model_paths[1], TENSOR, t.to(torch.float16))
    expect_error(tmp_path, capsys, ties_cfg(inputs), TENSOR)


@pytest.mark.parametrize("which, value", [("model", float("nan")), ("base", float("inf"))])
def test_non_finite_input(inputs, tmp_path, capsys, which, value):
    folder = inputs.model_paths[1] if which == "model" else inputs.base_path
    t = load_model(folder)[TENSOR].clone()
    t[3, 2] = value
    rewrite_tensor(folder, TENSOR, t)
    expect_error(tmp_path, capsys, ties_cfg(inputs), TENSOR)


def test_non_finite_result(inputs, tmp_path, capsys):
    # finite inputs and parameters, but lambda * weight * tau overflows float32 (|tau| ~ 0.01)
    cfg = native_config(inputs, "task_arithmetic", **{"lambda": 1.0e30},
                        model_overrides=[{"weight": 1.0e30}, {"weight": 1.0e30}])
    err = expect_error(tmp_path, capsys, cfg)
    assert any(w in err.lower() for w in ("finite", "inf", "nan", "overflow")), err


def test_unknown_method(inputs, tmp_path, capsys):
    cfg = ties_cfg(inputs)
    cfg["method"] = "tiess"
    expect_error(tmp_path, capsys, cfg, "tiess")


@pytest.mark.parametrize("where", ["top", "model"])
def test_unknown_key(inputs, tmp_path, capsys, where):
    cfg = ties_cfg(inputs)
    if where == "top":
        cfg["densty"] = 0.2
    else:
        cfg["models"][0]["wieght"] = 0.5
    expect_error(tmp_path, capsys, cfg, "wieght" if where == "model" else "densty")


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_density_outside_unit_interval(inputs, tmp_path, capsys, value):
    expect_error(tmp_path, capsys, ties_cfg(inputs, density=value), "density")


def test_per_model_density_outside_unit_interval(inputs, tmp_path, capsys):
    cfg = ties_cfg(inputs)
    cfg["models"][1]["density"] = 2.0
    expect_error(tmp_path, capsys, cfg, "density")


@pytest.mark.parametrize("value", [1.2, -0.5])
def test_slack_outside_unit_interval(inputs, tmp_path, capsys, value):
    cfg = native_config(inputs, "ties_sv", density=0.3, slack=value, protect="m1")
    expect_error(tmp_path, capsys, cfg, "slack")


def test_protect_naming_no_model(inputs, tmp_path, capsys):
    cfg = native_config(inputs, "ties_sv", density=0.3, slack=0.2, protect="nobody")
    expect_error(tmp_path, capsys, cfg, "nobody")


def test_vocabulary_size_mismatch(inputs, tmp_path, capsys):
    # m1 has 8 more rows: config, embeddings and lm_head all say so, but its tokenizer names none
    # of them, so they cannot be aligned by token text (tests/test_merge_vocab.py: ones that can)
    folder = inputs.model_paths[1]
    tensors = load_model(folder)
    grow = torch.zeros(8, tensors["lm_head.weight"].shape[1], dtype=torch.float32)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rewrite_tensor(folder, name, torch.cat([tensors[name], grow + 0.01]))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] += 8
    (folder / "config.json").write_text(json.dumps(cfg))
    err = expect_error(tmp_path, capsys, ties_cfg(inputs))
    assert "model 'm1': embedding row 64 has no token" in err and "vocabularies" in err, err


def test_missing_base_key(inputs, tmp_path, capsys):
    cfg = ties_cfg(inputs)
    del cfg["base"]
    expect_error(tmp_path, capsys, cfg, "base")


def test_existing_out_dir_without_force(inputs, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = file_digests(out)
    path = write_yaml(tmp_path / "m.yaml", ties_cfg(inputs))
    code, _, err = run_cli_inprocess(["merge", path, "--out", out, "--stats",
                                      tmp_path / "s.json"], capsys)
    assert code == 2, err
    assert err.startswith("lrmerge merge: error:") and str(out.name) in err, err
    assert file_digests(out) == before
    assert not (tmp_path / "s.json").exists()


def test_console_script_exit_code_and_stderr(inputs, tmp_path):
    # the real process, not the in-process entry point
    cfg = ties_cfg(inputs)
    cfg["densty"] = 0.2
    path = write_yaml(tmp_path / "m.yaml", cfg)
    proc = run_cli(["merge", path, "--out", tmp_path / "o"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lrmerge merge: error:") and "densty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# an interrupted merge


def _big_inputs(root: Path) -> tuple[Path, list[Path]]:
    """~40M-parameter bf16 Llama base + 2 models (sharded), built with torch.randn for speed."""
    cfg = llama_config(hidden=512, layers=10, heads=8, kv_heads=8, intermediate=1408,
                       vocab=8000, dtype="bfloat16")
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
            for n, s in llama_shapes(cfg).items()}
    write_model(root / "base", base, cfg, shards=2, tokenizer=False)
    paths = []
    for i in range(2):
        m = {n: (b.float() + torch.randn(b.shape, generator=g) * 0.01).to(torch.bfloat16)
             for n, b in base.items()}
        paths.append(write_model(root / f"m{i}", m, cfg, shards=2, tokenizer=False))
    return root / "base", paths


def test_interrupted_merge_leaves_nothing_and_rerun_is_identical(tmp_path):
    base, models = _big_inputs(tmp_path / "in")
    cfg = {"method": "ties", "base": str(base),
           "models": [{"path": str(p), "name": p.name} for p in models],
           "density": 0.2, "dtype": "float32", "out_dtype": "float32"}
    path = write_yaml(tmp_path / "m.yaml", cfg)
    out = tmp_path / "merged"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen([lrmerge_exe(), "merge", str(path), "--out", str(out),
                             "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    partial = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(tmp_path.glob(f".{out.name}.partial*"))
            if partial and any(p.iterdir() for p in partial if p.is_dir()):
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"merge ended (rc {proc.returncode}) before it could be interrupted; "
        f"partial folder seen: {partial}; stderr: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    assert partial, "no partial folder beside OUT_DIR while merging"
    assert not out.exists(), "an interrupted merge left OUT_DIR"

    # re-run into the same OUT_DIR: the stale partial folder goes, the output is complete
    rerun = run_cli(["merge", path, "--out", out, "--stats", tmp_path / "a.json"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "\r" not in rerun.stderr, "progress to a log (not a terminal) must be plain lines"
    assert not list(tmp_path.glob(f".{out.name}.partial*"))
    clean = run_cli(["merge", path, "--out", tmp_path / "clean", "--stats", tmp_path / "b.json"])
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert file_digests(out) == file_digests(tmp_path / "clean")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_hub_id_base_is_looked_up_on_the_hub(f32_two, tmp_path, monkeypatch, capsys):
    # "org/name" that is no local folder goes to the hub (offline here: a clear error naming it),
    # and merge-config keeps it as a hub id instead of turning it into a path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cfg_path = tmp_path / "m.yaml"
    code, _, err = run_cli_inprocess(
        ["merge-config", "--method", "ties", "--base", "meta-llama/Llama-2-7b-hf",
         "--model", f"ct={f32_two.model_paths[0]}", "--model", f"sft={f32_two.model_paths[1]}",
         "--density", "0.2", "--out", cfg_path], capsys)
    assert code == 0, err
    assert "base: meta-llama/Llama-2-7b-hf" in cfg_path.read_text()
    code, _, err = run_cli_inprocess(["merge", cfg_path, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert "meta-llama/Llama-2-7b-hf" in err and "hub" in err
    assert not (tmp_path / "out").exists()
