"""The train stage on a 2-layer, 32-wide Llama over token shards: schedule, data stream, CT
chains, resume, preemption, packed SFT, throughput figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import prepare_data, pretrain_base, quiet, tiny_config, write_config

from lrmerge.cli import main as cli
from lrmerge.data.shards import DataShortError, TokenShards
from lrmerge.train import schedule
from lrmerge.train.loop import STATE_DIR, train
from lrmerge.train.stream import Blocks, Mix, Packed


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def files(tmp_path_factory, cfg):
    """Tokenizer, English / Bengali / SFT token folders, and a pre-trained tiny base."""
    root = tmp_path_factory.mktemp("train")
    paths = prepare_data(cfg, root)
    torch.set_num_threads(1)
    paths["base"] = root / "base"
    paths["base_summary"] = pretrain_base(cfg, paths, paths["base"])
    return paths


def _ct(cfg, files, out, tokens, init=None, log=quiet):
    return train(stage="ct", cfg=cfg, init=str(init or files["base"]), out=str(out),
                 data=str(files["bn"]), english=str(files["en"]), tokens=tokens, lang="bn",
                 threads=1, log=log)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_schedule_warmup_cosine_floor():
    lrs = [schedule.lr_at(s, 1.0, 0.1, warmup=4, decay_steps=20) for s in range(30)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.55)  # halfway through the cosine
    assert all(a >= b for a, b in zip(lrs[3:20], lrs[4:21], strict=True))
    assert lrs[20:] == [0.1] * 10


def test_steps_are_cut_at_every_budget():
    cuts = [3000, 5000, 9000]
    ends, seen = [], 0
    while seen < 9000:
        seen = schedule.next_cut(seen, 2048, cuts, 9000)
        ends.append(seen)
    assert ends == [2048, 3000, 4096, 5000, 6144, 8192, 9000]
    assert schedule.count_steps(9000, 2048, cuts) == 7


def test_stream_mixes_english_at_the_exact_ratio(files):
    bn, en = TokenShards(files["bn"]), TokenShards(files["en"])
    stream = Mix(Blocks(bn, 32, "bn", 0, False), Blocks(en, 32, "en", 0, False), 0.2)
    english, t, e = [0], 0, 0
    for i in range(50):
        ids, keep, pos = stream.sample(i)
        from_en = np.array_equal(ids, en.slice(e * 32, e * 32 + 32))
        if from_en:
            e += 1
        else:
            assert np.array_equal(ids, bn.slice(t * 32, t * 32 + 32))  # target blocks in order
            t += 1
        english.append(english[-1] + from_en)
        assert english[-1] == math.floor((i + 1) * 0.2)  # every prefix holds the exact mix
        assert keep.all() and pos is None
    # past the end: an error unless repeating was allowed, then a seeded order per pass
    short = Blocks(bn, 32, "bn", 0, False)
    with pytest.raises(DataShortError, match=f"bn: the run needs block {short.rep.n + 1} but"):
        short.sample(short.rep.n)
    again = Blocks(bn, 32, "bn", 0, True)
    seen = {again.rep.index(again.rep.n + k) for k in range(again.rep.n)}
    assert seen == set(range(again.rep.n)) and again.usage(2 * again.rep.n)["passes"] == 2.0
    assert stream.usage(50)["english"]["blocks_read"] == 10


def test_pretrain_builds_an_hf_model_and_reports_its_throughput(cfg, files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lrmerge.data import synthetic
    from lrmerge.train.model import flops_per_token, llama_matmul_params, matmul_params

    s = files["base_summary"]
    assert s["stage"] == "pretrain" and s["steps"] == cfg["pretrain"]["steps"]
    assert s["tokens_seen"] == 6 * 4 * 32
    model = AutoModelForCausalLM.from_pretrained(files["base"])
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    tok = AutoTokenizer.from_pretrained(files["base"])
    bn_word = synthetic.lexicon(cfg, "bn").map["ball"]
    assert len(tok(" " + bn_word)["input_ids"]) == 1  # one token per target word
    # 6 x matmul parameters (all but the input embedding) + 12 x layers x hidden x seq
    n = matmul_params(model)
    assert n == sum(p.numel() for p in model.parameters()) - len(tok) * 32
    assert n == llama_matmul_params(model.config.to_dict())  # the planner's count, from sizes
    assert s["flops_per_token"] == flops_per_token(model, 32) == 6 * n + 12 * 2 * 32 * 32
    assert s["tokens_per_s"] > 0 and s["peak_tflops"] == cfg["pretrain"]["peak_tflops"]
    assert s["mfu"] == pytest.approx(s["tokens_per_s"] * s["flops_per_token"] / 0.157e12,
                                     abs=1e-5)
    assert s["peak_mem_gb"] > 0.1 and s["disk_gb"] > 0


def test_training_learns(cfg, files, tmp_path):
    """A short CT run on the tiny model: the loss falls well below where it started (with a
    learning rate of 0 it would stay where it is)."""
    s = _ct(cfg, files, tmp_path / "ct", 9000)
    losses = [h["loss"] for h in s["loss_history"]]
    assert len(losses) == s["steps"] > 60
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses


def test_ct_chain_is_the_straight_run_and_hands_over_its_state(cfg, files):
    root = files["root"]
    first = _ct(cfg, files, root / "ct3000", 3000)
    assert first["tokens_seen"] == 3000 and first["resumed_from"] is None
    assert first["state_kept"] and (root / "ct3000" / STATE_DIR / "meta.json").is_file()
    assert first["data"]["target"]["passes"] < 1 and first["data"]["english"]["passes"] < 1
    second = _ct(cfg, files, root / "ct5000", 5000, init=root / "ct3000")
    assert second["tokens_seen"] == 5000 and second["tokens_this_run"] == 2000
    assert second["resumed_from"] == str(root / "ct3000")
    # keep_optimizer: next -- the consumed state is gone, the weights stay
    assert not (root / "ct3000" / STATE_DIR).exists() and (root / "ct3000" / "model.safetensors").exists()
    straight = _ct(cfg, files, root / "straight5000", 5000)
    assert straight["steps"] == second["steps"]
    assert _same(_weights(root / "ct5000"), _weights(root / "straight5000"))
    assert second["lr_schedule"]["lr_last"] == straight["lr_schedule"]["lr_last"]
    # the cosine spans the largest budget: not finished at 5000 of 9000 tokens
    assert second["lr_schedule"]["lr_last"] > cfg["continual_pretrain"]["min_lr"]
    # the language's last budget keeps no state (nothing continues it)
    last = _ct(cfg, files, root / "ct9000", 9000, init=root / "ct5000")
    assert not last["state_kept"] and not (root / "ct9000" / STATE_DIR).exists()
    assert last["disk_gb"] < first["disk_gb"] / 2  # weights only, no fp32 state and moments
    # keep_optimizer: all keeps every budget's state
    keep = tiny_config(continual_pretrain__keep_optimizer="all")
    _ct(keep, files, root / "k3000", 3000)
    _ct(keep, files, root / "k5000", 5000, init=root / "k3000")
    assert (root / "k3000" / STATE_DIR).is_dir() and (root / "k5000" / STATE_DIR).is_dir()


def test_ct_refuses_a_wrong_chain(cfg, files, tmp_path):
    first = tmp_path / "ct3000"
    _ct(cfg, files, first, 3000)
    with pytest.raises(ValueError, match="already seen 3000 tokens"):
        _ct(cfg, files, tmp_path / "bad", 3000, init=first)
    with pytest.raises(ValueError, match="CT run of 'bn', not 'bo'"):
        train(stage="ct", cfg=cfg, init=str(first), out=str(tmp_path / "bad"),
              data=str(files["bn"]), english=str(files["en"]), tokens=5000, lang="bo", log=quiet)
    with pytest.raises(ValueError, match="no English token folder"):
        train(stage="ct", cfg=cfg, init=str(files["base"]), out=str(tmp_path / "bad"),
              data=str(files["bn"]), tokens=3000, lang="bn", log=quiet)
    _ct(cfg, files, tmp_path / "ct5000", 5000, init=first)
    with pytest.raises(FileNotFoundError, match=r"trainer_state missing.*keep_optimizer: all"):
        _ct(cfg, files, tmp_path / "again", 5000, init=first)


def test_data_of_another_tokenizer_is_refused(cfg, files, tmp_path):
    other = tiny_config(mini__tokenizer_vocab=350)
    paths = prepare_data(other, tmp_path, langs=("bn",), sft=False)
    with pytest.raises(ValueError, match=r"was tokenized by .* not by this model's tokenizer"):
        train(stage="ct", cfg=cfg, init=str(files["base"]), out=str(tmp_path / "x"),
              data=str(paths["bn"]), english=str(files["en"]), tokens=3000, lang="bn", log=quiet)


def test_interrupted_job_resumes_from_its_own_checkpoint(files, tmp_path):
    cfg = tiny_config(continual_pretrain__checkpoint_every=1)

    class Killed(Exception):
        pass

    def kill_at_step_3(msg):
        if msg.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        _ct(cfg, files, tmp_path / "killed", 5000, log=kill_at_step_3)
    assert (tmp_path / "killed" / "checkpoint" / "meta.json").is_file()
    assert not (tmp_path / "killed" / "train_summary.json").exists()
    messages = []
    summary = _ct(cfg, files, tmp_path / "killed", 5000, log=messages.append)
    # killed while logging step 3, before its checkpoint: the last checkpoint is step 2
    assert any(m.startswith("resuming own checkpoint at step 2") for m in messages), messages
    assert summary["steps_this_run"] == summary["steps"] - 2
    reference = _ct(cfg, files, tmp_path / "reference", 5000)
    assert _same(_weights(tmp_path / "killed"), _weights(tmp_path / "reference"))
    assert summary["final_loss"] == reference["final_loss"]
    assert not (tmp_path / "killed" / "checkpoint").exists()  # removed once done
    # the record of the job's attempts: killed outright (no stop event), then resumed at step 2
    assert [(a["event"], a["step"]) for a in summary["attempts"]] == [("start", 0), ("start", 2)]
    assert [(a["event"], a["step"]) for a in reference["attempts"]] == [("start", 0)]


def _ct_args(config, files, out, tokens=5000):
    return ["--config", str(config), "--lang", "bn", "--tokens", str(tokens), "--init",
            str(files["base"]), "--data", str(files["bn"]), "--english", str(files["en"]),
            "--out", str(out), "--threads", "1"]


def test_packed_sft_keeps_attention_inside_each_example(cfg, files):
    from transformers import AutoModelForCausalLM

    from lrmerge.train.model import prepare_for_training

    shards = TokenShards(files["sft"])
    packed = Packed(shards, 128, "all", 0, 0, False)
    k = next(i for i in range(packed.rep.n) if packed.seqs[i + 1] - packed.seqs[i] >= 2)
    ids, keep, pos = packed.sample(k)
    first, last = int(packed.seqs[k]), int(packed.seqs[k + 1])
    model = prepare_for_training(AutoModelForCausalLM.from_pretrained(files["base"]), cfg["sft"])
    model.eval()
    with torch.no_grad():
        whole = model(input_ids=torch.tensor(ids[None]), position_ids=torch.tensor(pos[None])).logits[0]
        at = 0
        for e in range(first, last):
            n = int(packed.lengths[e])
            alone = model(input_ids=torch.tensor(ids[None, at:at + n])).logits[0]
            assert torch.allclose(whole[at:at + n], alone, atol=1e-5)  # sees only itself
            assert pos[at] == 0 and not keep[at] and keep[at + 1:at + n].all()
            at += n
    assert not keep[at:].any()  # padding is never a target
    response = Packed(shards, 128, "response", 0, 0, False).sample(k)[1]
    n0, p0 = int(packed.lengths[first]), int(shards.prompts[first])
    assert not response[:p0].any() and response[p0:n0].all()


def test_sft_saves_in_the_configured_dtype(files, tmp_path):
    cfg = tiny_config(sft__save_dtype="float16", sft__loss_on="response")
    s = train(stage="sft", cfg=cfg, init=str(files["base"]), out=str(tmp_path / "s"),
              data=str(files["sft"]), threads=1, log=quiet)
    assert s["steps"] == 4 and s["save_dtype"] == "float16"
    assert s["data"]["target"]["sequences_read"] == 16
    assert {t.dtype for t in _weights(tmp_path / "s").values()} == {torch.float16}
    assert (tmp_path / "s" / "tokenizer.json").exists()
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dtype"] == "float16"


def test_cli_ct_and_sft(files, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    assert cli(["train", "ct", *_ct_args(cfg_path, files, tmp_path / "ct", 3000)]) == 0
    assert json.loads((tmp_path / "ct" / "train_summary.json").read_text())["tokens_seen"] == 3000
    assert cli(["train", "sft", "--config", str(cfg_path), "--init", str(tmp_path / "ct"),
                "--data", str(files["sft"]), "--out", str(tmp_path / "ctsft")]) == 0
    s = json.loads((tmp_path / "ctsft" / "train_summary.json").read_text())
    assert s["stage"] == "sft" and s["init"] == str(tmp_path / "ct")
    assert cli(["train", "sft", "--config", str(cfg_path), "--init", str(files["base"]),
                "--data", str(files["bn"]), "--out", str(tmp_path / "x")]) == 2
    assert "not SFT data" in capsys.readouterr().err
    assert cli(["train", "ct", *_ct_args(cfg_path, files, tmp_path / "y", 3000)[:8],
                "--data", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "none/manifest.json not found" in capsys.readouterr().err


def test_deepspeed_is_configured_from_the_section(files, tmp_path, monkeypatch):
    from lrmerge.train.backend import deepspeed_config

    tc = {"batch_size": 512, "micro_batch_size": 4, "grad_clip": 1.0, "precision": "bf16",
          "deepspeed": {"zero_optimization": {"stage": 2, "overlap_comm": True}}}
    conf = deepspeed_config(tc, world_size=8)
    assert conf["gradient_accumulation_steps"] == 16
    assert conf["train_batch_size"] == 512 and conf["bf16"] == {"enabled": True}
    assert conf["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    with pytest.raises(ValueError, match="not a multiple"):
        deepspeed_config(dict(tc, batch_size=100), world_size=8)
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        deepspeed_config(dict(tc, deepspeed={"zero_stage": 3}), world_size=1)


def test_a_tied_model_is_saved_with_the_base_tensor_names(files, tmp_path):
    """Tied input and output embeddings (SmolLM2, Llama-3.2) stay one tensor when saved in another
    dtype: no lm_head.weight the base lacks, which would make every merge refuse the model."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(continual_pretrain__save_dtype="bfloat16")
    cfg["mini"]["model"]["tie_word_embeddings"] = True
    tied = pretrain_base(cfg, files, tmp_path / "tied")
    assert tied["steps"] == 6
    base_names = set(_weights(tmp_path / "tied"))
    assert "lm_head.weight" not in base_names and "model.embed_tokens.weight" in base_names
    _ct(cfg, files, tmp_path / "ct", 3000, init=tmp_path / "tied")
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == base_names
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
