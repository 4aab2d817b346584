"""Data parallel training with two processes on this CPU, under torchrun, with both backends:
plain torch (torch.distributed over gloo) and DeepSpeed ZeRO-2 on its CPU accelerator (gloo;
DeepSpeed compiles a small C++ extension on first use, ~90 s). Each must give the losses of one
process with the same global batch, and a two-process run stopped mid-way must resume to the
weights of an uninterrupted one; and a single process stopped by SIGUSR1 likewise. CT from the
base with an extended tokenizer (issue 17), untied and tied: two plain processes with the
embedding warm-up follow one, and a run inside the warm-up moves only the embeddings; DeepSpeed
grows the vocabulary as plain torch does, and refuses the warm-up. `make test-dist` (not part of
`make test`: these start many processes)."""

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


# --------------------------------------------------------------------------------------------
# CT from the base with an extended tokenizer (issue 17), in two processes
# --------------------------------------------------------------------------------------------
K = 12
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _vocab_config(**overrides) -> dict:
    """The mini tokenizer without its own Bengali words, so that K new tokens can be learned."""
    return tiny_config(mini__vocab_extension=False, **overrides)


@pytest.fixture(scope="module")
def vocab_data(tmp_path_factory):
    """The mini tokenizer extended by K tokens learned from the Bengali corpus, the Bengali and
    English token folders made with it, and an untied ("base") and a tied ("tied") tiny base
    pre-trained on English with the base tokenizer (tests/test_vocab_init.py's fixtures)."""
    import itertools

    from stage_helpers import quiet

    from lrmerge.data import synthetic, tokenize, vocab

    root = tmp_path_factory.mktemp("dist_vocab")
    cfg = _vocab_config()
    paths = prepare_data(cfg, root, langs=("en",), sft=False)
    paths["ext"] = root / "extended"
    docs = list(itertools.islice(synthetic.documents(cfg, "bn", "ct"), 200))
    vocab.extend_tokenizer(paths["tokenizer"], docs, K, paths["ext"])
    for lang in ("bn", "en"):
        paths[f"{lang}_ext"] = root / "tokens" / f"{lang}_ext"
        tokenize.prepare_corpus(cfg, lang, str(paths["ext"]), paths[f"{lang}_ext"], log=quiet)
    tied = _vocab_config()
    tied["mini"]["model"]["tie_word_embeddings"] = True
    for name, c in (("base", cfg), ("tied", tied)):
        paths[name] = root / name
        pretrain_base(c, paths, paths[name])
    return paths


def _ext_args(config, paths, base, out, tokens):
    return ["ct", "--config", str(config), "--lang", "bn", "--tokens", str(tokens), "--init",
            str(paths[base]), "--tokenizer", str(paths["ext"]), "--data", str(paths["bn_ext"]),
            "--english", str(paths["en_ext"]), "--out", str(out), "--threads", "1"]


def _extended_base(paths, base):
    """The base's state dict with the new rows, as CT starts from it."""
    from lrmerge.train.model import extend_embeddings, load_model, read_extension

    model = load_model(str(paths[base]), "sdpa")
    extend_embeddings(model, read_extension(paths["ext"]))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_grown(folder, paths, tied: bool):
    """The saved folder holds the grown vocabulary: its tokenizer, its config, its rows (tied:
    one tensor under the base's name), and the extension record beside them."""
    from transformers import AutoConfig, AutoTokenizer

    ext = json.loads((paths["ext"] / "vocab_extension.json").read_text())
    n = ext["base_vocab_size"]
    w = _weights(folder)
    assert w[EMBED].shape[0] == n + K and (HEAD in w) == (not tied)
    assert len(AutoTokenizer.from_pretrained(folder)) == n + K
    assert AutoConfig.from_pretrained(folder).vocab_size == n + K
    assert json.loads((folder / "vocab_extension.json").read_text()) == ext
    return n


@pytest.mark.parametrize("base", ["base", "tied"])
def test_two_processes_grow_the_vocabulary_and_warm_up_the_embeddings_as_one_does(
        vocab_data, base, tmp_path):
    """Plain torch over gloo, embedding_warmup_steps 3 of 24 steps: the vocabulary record, the
    loss curve and the final weights of two processes are the one process's; a two-process run
    that ends inside its warm-up moved only the input embeddings and the output layer."""
    paths, tied = vocab_data, base == "tied"
    config = write_config(tmp_path / "c.yaml",
                          _vocab_config(continual_pretrain__embedding_warmup_steps=3))
    _run(_torchrun(1) + _ext_args(config, paths, base, tmp_path / "one", 3000))
    r = _run(_torchrun(2) + _ext_args(config, paths, base, tmp_path / "two", 3000))
    log = r.stdout + r.stderr
    assert "step 0: training only the embeddings and the output layer until step 3" in log, log
    assert "step 3: embedding warm-up over, training all parameters" in log, log
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["backend"] == two["backend"] == "torch"
    for s in (one, two):
        rec = s["vocab_extension"]
        assert rec["added"] == K and rec["initialised"] == "mean_of_pieces"
        assert rec["tied"] == tied and rec["vocab_size"] == rec["base_vocab_size"] + K
        assert rec["embedding_warmup_steps"] == s["embedding_warmup_steps"] == 3
    assert two["steps"] == one["steps"] > 3
    a = [h["loss"] for h in one["loss_history"]]
    b = [h["loss"] for h in two["loss_history"]]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5  # float noise
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    n = _assert_grown(tmp_path / "two", paths, tied)

    # the whole run inside the warm-up (5 steps of 10): only the embedding rows move
    config = write_config(tmp_path / "w.yaml",
                          _vocab_config(continual_pretrain__embedding_warmup_steps=10))
    _run(_torchrun(2) + _ext_args(config, paths, base, tmp_path / "warm", 640))
    assert _summary(tmp_path / "warm")["steps"] == 5
    start, warm = _extended_base(paths, base), _weights(tmp_path / "warm")
    assert warm.keys() <= start.keys()
    moved = {k for k in warm if not torch.equal(warm[k], start[k])}
    assert moved == ({EMBED} if tied else {EMBED, HEAD})
    for k in moved:  # the new rows (and the base rows) moved
        assert all(not torch.equal(warm[k][i], start[k][i]) for i in range(n, n + K))
    assert all(not torch.equal(wb[k], start[k]) for k in wb if "layers.0." in k)  # vs all steps


@pytest.mark.parametrize("base", ["base", "tied"])
def test_deepspeed_two_processes_train_a_grown_vocabulary(vocab_data, base, tmp_path):
    """DeepSpeed ZeRO-2, two processes, no warm-up: the model grows before the engine is built;
    it trains (the loss falls, every tensor moves, the new rows too) and saves the grown
    vocabulary with the tokenizer."""
    import deepspeed  # noqa: F401  (make test-dist installs it)

    paths, tied = vocab_data, base == "tied"
    config = write_config(tmp_path / "c.yaml", _vocab_config(
        continual_pretrain__deepspeed=BACKENDS["deepspeed"]))
    _run(_torchrun(2) + _ext_args(config, paths, base, tmp_path / "ds", 3000))
    s = _summary(tmp_path / "ds")
    assert s["backend"] == "deepspeed" and s["world_size"] == 2
    rec = s["vocab_extension"]
    assert rec["added"] == K and rec["initialised"] == "mean_of_pieces" and rec["tied"] == tied
    assert rec["embedding_warmup_steps"] == s["embedding_warmup_steps"] == 0
    losses = [h["loss"] for h in s["loss_history"]]
    assert len(losses) == s["steps"] and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    n = _assert_grown(tmp_path / "ds", paths, tied)
    start, trained = _extended_base(paths, base), _weights(tmp_path / "ds")
    assert trained.keys() <= start.keys()
    assert all(not torch.equal(trained[k], start[k]) for k in trained)
    for k in {EMBED, HEAD} & trained.keys():
        assert all(not torch.equal(trained[k][i], start[k][i]) for i in range(n, n + K))
    # and it is the plain one-process run of the same config
    config = write_config(tmp_path / "p.yaml", _vocab_config())
    _run(_torchrun(1) + _ext_args(config, paths, base, tmp_path / "plain", 3000))
    one = _summary(tmp_path / "plain")
    assert one["backend"] == "torch" and one["vocab_extension"] == rec
    assert max(abs(x - h["loss"]) for x, h in zip(losses, one["loss_history"], strict=True)) < 1e-5
    ref = _weights(tmp_path / "plain")
    assert ref.keys() == trained.keys()
    assert all(torch.allclose(trained[k], ref[k], atol=1e-5) for k in ref)


def test_deepspeed_with_an_embedding_warmup_is_refused(vocab_data, tmp_path):
    """Refused before any process trains: by the config check, which names the key (the loop
    refuses it too for a config that was not checked: tests/test_vocab_init.py)."""
    paths = vocab_data
    cfg = _vocab_config(continual_pretrain__embedding_warmup_steps=2)
    cfg["continual_pretrain"]["deepspeed"] = BACKENDS["deepspeed"]  # tiny_config checks it
    config = write_config(tmp_path / "c.yaml", cfg)
    r = subprocess.run([sys.executable, "-m", "lrmerge.train",
                        *_ext_args(config, paths, "base", tmp_path / "x", 3000)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"lrmerge train: error: {config}: continual_pretrain.embedding_warmup_steps: not "
            "supported with continual_pretrain.deepspeed") in r.stderr, r.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()
