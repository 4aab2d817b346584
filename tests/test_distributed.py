"""Data parallel training with two processes on this CPU, under torchrun, with both backends:
plain torch (torch.distributed over gloo) and DeepSpeed ZeRO-2 on its CPU accelerator (gloo;
DeepSpeed compiles a small C++ extension on first use, ~90 s). Each must give the losses of one
process with the same global batch, and a two-process run stopped mid-way must resume to the
weights of an uninterrupted one; and a single process stopped by SIGUSR1 likewise. `make
test-dist` (not part of `make test`: these start many processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import prepare_data, pretrain_base, tiny_config, write_config

from lrmerge.train.loop import PREEMPTED_EXIT

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
           OMP_NUM_THREADS="1")


pytestmark = pytest.mark.dist
BACKENDS = {"torch": None, "deepspeed": {"zero_optimization": {"stage": 2}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    cfg = tiny_config()
    paths = prepare_data(cfg, root, sft=False)
    pretrain_base(cfg, paths, root / "base")
    return paths, root


@pytest.fixture(params=list(BACKENDS))
def setup(request, data):
    if request.param == "deepspeed":
        import deepspeed  # noqa: F401  (make test-dist installs it)
    cfg = tiny_config(continual_pretrain__checkpoint_every=0,
                      continual_pretrain__deepspeed=BACKENDS[request.param])
    return cfg, *data


def _args(config, paths, root, out, tokens=5000, init=None):
    return ["ct", "--config", str(config), "--lang", "bn", "--tokens", str(tokens), "--init",
            str(init or root / "base"), "--data", str(paths["bn"]), "--english", str(paths["en"]),
            "--out", str(out), "--threads", "1"]


def _run(cmd, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def _summary(folder):
    return json.loads((folder / "train_summary.json").read_text())


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _torchrun(n):
    return [TORCHRUN, "--standalone", f"--nproc_per_node={n}", "-m", "lrmerge.train"]


def _launch(n):
    """What the rules run for a multi-GPU job: forwards SIGUSR1 and SIGTERM to its workers."""
    return [sys.executable, "-m", "lrmerge.train.launch", "--nproc", str(n)]


def test_stop_signal_saves_and_the_rerun_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    """One process, no launcher: SIGUSR1 (what SLURM sends before the time limit) mid-run."""
    paths, root = data
    config = write_config(tmp_path / "c.yaml", tiny_config())
    lrmerge = [sys.executable, "-m", "lrmerge.train"]
    proc = subprocess.Popen(lrmerge + _args(config, paths, root, tmp_path / "job"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 5/"):
            proc.send_signal(signal.SIGUSR1)
    assert proc.wait(60) == PREEMPTED_EXIT, "".join(lines)
    saved = json.loads((tmp_path / "job" / "checkpoint" / "meta.json").read_text())
    assert 5 <= saved["step"] < 40 and "preempted" in "".join(lines)
    assert not (tmp_path / "job" / "train_summary.json").exists()
    rerun = _run(lrmerge + _args(config, paths, root, tmp_path / "job"))
    assert f"resuming own checkpoint at step {saved['step']}" in rerun.stdout
    attempts = [(a["event"], a["step"], a.get("signal")) for a in _summary(tmp_path / "job")["attempts"]]
    assert attempts == [("start", 0, None), ("stop", saved["step"], "SIGUSR1"),
                        ("start", saved["step"], None)]
    _run(lrmerge + _args(config, paths, root, tmp_path / "straight"))
    a, b = _weights(tmp_path / "job"), _weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_follow_the_one_process_loss_curve(setup, tmp_path):
    cfg, paths, root = setup
    config = write_config(tmp_path / "c.yaml", cfg)
    _run(_torchrun(1) + _args(config, paths, root, tmp_path / "one"))
    _run(_torchrun(2) + _args(config, paths, root, tmp_path / "two"))
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    backend = "deepspeed" if cfg["continual_pretrain"]["deepspeed"] else "torch"
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["backend"] == one["backend"] == backend
    assert two["tokens_seen"] == one["tokens_seen"] == 5000 and two["steps"] == one["steps"]
    a = [h["loss"] for h in one["loss_history"]]
    b = [h["loss"] for h in two["loss_history"]]
    assert len(a) == len(b) == one["steps"]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5  # float noise
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_two_processes_stopped_midway_resume_to_the_same_weights(setup, tmp_path):
    cfg, paths, root = setup
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "job"
    proc = subprocess.Popen(_launch(2) + _args(config, paths, root, out), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 8/"):
            proc.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit
    code = proc.wait(120)
    log = "".join(lines)
    assert code == PREEMPTED_EXIT and "preempted" in log, log[-3000:]
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["world_size"] == 2 and 8 <= meta["step"] < 40
    files = sorted(p.name for p in (out / "checkpoint").rglob("*") if p.is_file())
    if meta["backend"] == "torch":  # one file per process, written in parallel
        assert files == ["meta.json", "rank00000-of-00002.safetensors",
                         "rank00001-of-00002.safetensors"]
    else:  # DeepSpeed's own per-rank optimizer shards
        assert [f for f in files if f.startswith("zero_pp_rank_")] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    rerun = _run(_launch(2) + _args(config, paths, root, out))
    assert f"resuming own checkpoint at step {meta['step']}" in rerun.stdout + rerun.stderr
    _run(_torchrun(2) + _args(config, paths, root, tmp_path / "straight"))
    a, b = _weights(out), _weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)
    if meta["backend"] == "torch":
        # plain state is not tied to the process count: one process continues the budget
        assert json.loads((out / "trainer_state" / "meta.json").read_text())["world_size"] == 2
        _run([sys.executable, "-m", "lrmerge.train",
              *_args(config, paths, root, tmp_path / "next", 9000, init=out)])
        assert _summary(tmp_path / "next")["resumed_from"] == str(out)
