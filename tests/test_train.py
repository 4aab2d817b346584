"""The train stage on a 2-layer, 32-wide Llama: schedule, data stream, CT chains, resume, SFT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import tiny_config, write_config

from lrmerge import data, fsutil, train
from lrmerge.cli import main as cli

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def files(tmp_path_factory, cfg):
    """English and Bengali corpora, mini FLAN, and a pre-trained tiny base."""
    root = tmp_path_factory.mktemp("train")
    paths = {"en": root / "en.jsonl", "bn": root / "bn.jsonl", "flan": root / "flan.jsonl",
             "base": root / "base", "root": root}
    fsutil.write_jsonl(paths["en"], data.build_corpus(cfg, "en"))
    fsutil.write_jsonl(paths["bn"], data.build_corpus(cfg, "bn"))
    fsutil.write_jsonl(paths["flan"], data.build_sft(cfg))
    torch.set_num_threads(1)
    train.pretrain(cfg, str(paths["en"]), str(paths["base"]), threads=1, log=quiet)
    return paths


def _ct(cfg, files, out, tokens, init=None, log=quiet):
    return train.train(stage="ct", cfg=cfg, init=str(init or files["base"]), out=str(out),
                       rows=fsutil.read_jsonl(files["bn"]), english_rows=fsutil.read_jsonl(
                           files["en"]), tokens=tokens, lang="bn", threads=1, log=log)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_schedule_warmup_cosine_floor():
    lrs = [train.lr_at(s, 1.0, 0.1, warmup=4, decay_steps=20) for s in range(30)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.55)  # halfway through the cosine
    assert all(a >= b for a, b in zip(lrs[3:20], lrs[4:21], strict=True))
    assert lrs[20:] == [0.1] * 10


def test_steps_are_cut_at_every_budget():
    cuts = [3000, 5000, 9000]
    ends, seen = [], 0
    while seen < 9000:
        seen = train.next_cut(seen, 2048, cuts, 9000)
        ends.append(seen)
    assert ends == [2048, 3000, 4096, 5000, 6144, 8192, 9000]
    assert train.count_steps(9000, 2048, cuts) == 7


def test_stream_mixes_english_at_the_exact_ratio(cfg, files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(files["base"])
    rows = fsutil.read_jsonl(files["bn"])
    en = fsutil.read_jsonl(files["en"])
    stream = train.Stream(train.Source("bn", rows, tok, 32, 0), train.Source("en", en, tok, 32, 0),
                          0.2)
    english = [0]
    for i in range(50):
        ids, _ = stream.block(i)
        english.append(english[-1] + int(tok.decode(ids).isascii()))
        assert english[-1] == math.floor((i + 1) * 0.2)  # every prefix holds the exact mix
    assert torch.equal(stream.block(17)[0], stream.block(17)[0])


def test_pretrain_builds_an_hf_model_with_extended_vocabulary(cfg, files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = files["base"]
    summary = json.loads((base / "train_summary.json").read_text())
    assert summary["stage"] == "pretrain" and summary["steps"] == cfg["pretrain"]["steps"]
    assert summary["tokens_seen"] == 6 * 4 * 32
    model = AutoModelForCausalLM.from_pretrained(base)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    tok = AutoTokenizer.from_pretrained(base)
    bn_word = data.lexicon(cfg, "bn").map["ball"]
    assert len(tok(" " + bn_word)["input_ids"]) == 1  # one token per target word
    assert len(model.get_input_embeddings().weight) == len(tok)
    # without the extension a target word falls back to bytes, as with Llama-2
    plain = train.build_tokenizer(["the ball is fast ."] * 50, 300)
    assert len(plain(" " + bn_word)["input_ids"]) >= 2 * len(bn_word)


def test_ct_chain_is_the_straight_run_and_counts_tokens_exactly(cfg, files):
    root = files["root"]
    first = _ct(cfg, files, root / "ct3000", 3000)
    assert first["tokens_seen"] == 3000 and first["resumed_from"] is None
    second = _ct(cfg, files, root / "ct5000", 5000, init=root / "ct3000")
    assert second["tokens_seen"] == 5000 and second["tokens_this_run"] == 2000
    assert second["resumed_from"] == str(root / "ct3000")
    straight = _ct(cfg, files, root / "straight5000", 5000)
    assert straight["steps"] == second["steps"]
    a, b = _weights(root / "ct5000"), _weights(root / "straight5000")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second["lr_schedule"]["lr_last"] == straight["lr_schedule"]["lr_last"]
    # the cosine spans the largest budget: not finished at 5000 of 9000 tokens
    assert second["lr_schedule"]["lr_last"] > cfg["continual_pretrain"]["min_lr"]
    assert json.loads((root / "ct5000" / "train_summary.json").read_text())["tokens_seen"] == 5000


def test_ct_refuses_a_wrong_chain(cfg, files):
    root = files["root"]
    if not (root / "ct3000" / "train_summary.json").exists():
        _ct(cfg, files, root / "ct3000", 3000)
    with pytest.raises(ValueError, match="already seen 3000 tokens"):
        _ct(cfg, files, root / "bad", 3000, init=root / "ct3000")
    with pytest.raises(ValueError, match="CT run of 'bn', not 'bo'"):
        train.train(stage="ct", cfg=cfg, init=str(root / "ct3000"), out=str(root / "bad"),
                    rows=fsutil.read_jsonl(files["bn"]), english_rows=[], tokens=5000,
                    lang="bo", log=quiet)
    with pytest.raises(ValueError, match="no English corpus"):
        train.train(stage="ct", cfg=cfg, init=str(files["base"]), out=str(root / "bad"),
                    rows=fsutil.read_jsonl(files["bn"]), tokens=3000, lang="bn", log=quiet)


def test_interrupted_job_resumes_from_its_own_checkpoint(cfg, files):
    root = files["root"]
    cfg = tiny_config(continual_pretrain__checkpoint_every=1)

    class Killed(Exception):
        pass

    def kill_at_step_3(msg):
        if msg.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        _ct(cfg, files, root / "killed", 5000, log=kill_at_step_3)
    assert (root / "killed" / "checkpoint").is_dir()
    assert not (root / "killed" / "train_summary.json").exists()
    messages = []
    summary = _ct(cfg, files, root / "killed", 5000, log=messages.append)
    # killed while logging step 3, before its checkpoint: the last checkpoint is step 2
    assert any(m.startswith("resuming own checkpoint at step 2") for m in messages), messages
    assert summary["steps_this_run"] == summary["steps"] - 2
    reference = _ct(cfg, files, root / "reference", 5000)
    a, b = _weights(root / "killed"), _weights(root / "reference")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert summary["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-5)
    assert not (root / "killed" / "checkpoint").exists()  # removed once done


def test_sft_masks_the_prompt_when_asked(cfg, files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(files["base"])
    rows = [{"prompt": "how many ball ?", "response": "3"}]
    src = train.Source("sft", rows, tok, 8, 0, mask_prompt=True)
    src.ensure(1)
    n_prompt = len(tok("how many ball ?")["input_ids"])
    assert list(src.loss[:n_prompt]) == [0] * n_prompt and all(src.loss[n_prompt:])
    whole = train.Source("sft", rows, tok, 8, 0, mask_prompt=False)
    whole.ensure(1)
    assert all(whole.loss)


def test_sft_saves_in_the_configured_dtype(files, tmp_path):
    cfg = tiny_config(sft__save_dtype="float16", sft__loss_on="response")
    summary = train.train(stage="sft", cfg=cfg, init=str(files["base"]), out=str(tmp_path / "s"),
                          rows=fsutil.read_jsonl(files["flan"]), threads=1, log=quiet)
    assert summary["steps"] == 4 and summary["save_dtype"] == "float16"
    w = _weights(tmp_path / "s")
    assert {t.dtype for t in w.values()} == {torch.float16}
    assert (tmp_path / "s" / "tokenizer.json").exists()
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dtype"] == "float16"


def test_cli_ct_and_sft(files, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    assert cli(["train", "ct", "--config", str(cfg_path), "--lang", "bn", "--tokens", "3000",
                "--init", str(files["base"]), "--corpus", str(files["bn"]), "--english",
                str(files["en"]), "--out", str(tmp_path / "ct"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ct" / "train_summary.json").read_text())["tokens_seen"] == 3000
    assert cli(["train", "sft", "--config", str(cfg_path), "--init", str(tmp_path / "ct"),
                "--data", str(files["flan"]), "--out", str(tmp_path / "ctsft")]) == 0
    s = json.loads((tmp_path / "ctsft" / "train_summary.json").read_text())
    assert s["stage"] == "sft" and s["init"] == str(tmp_path / "ct")
    bad = tmp_path / "bad.jsonl"
    fsutil.write_jsonl(bad, [{"text": "no prompt"}])
    assert cli(["train", "sft", "--config", str(cfg_path), "--init", str(files["base"]),
                "--data", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "bad.jsonl: line 1 lacks prompt/response" in capsys.readouterr().err
    assert cli(["train", "ct", "--config", str(cfg_path), "--lang", "bn", "--tokens", "3000",
                "--init", str(files["base"]), "--corpus", str(tmp_path / "none.jsonl"),
                "--out", str(tmp_path / "y")]) == 2
    assert "--corpus" in capsys.readouterr().err


def test_deepspeed_is_optional_and_configured_from_the_section(files, tmp_path, monkeypatch):
    tc = {"batch_size": 512, "micro_batch_size": 4, "grad_clip": 1.0, "precision": "bf16",
          "deepspeed": {"zero_optimization": {"stage": 2, "overlap_comm": True}}}
    conf = train.deepspeed_config(tc, world_size=8)
    assert conf["gradient_accumulation_steps"] == 16
    assert conf["train_batch_size"] == 512 and conf["bf16"] == {"enabled": True}
    assert conf["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    with pytest.raises(ValueError, match="not a multiple"):
        train.deepspeed_config(dict(tc, batch_size=100), world_size=8)
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        train.deepspeed_config(dict(tc, deepspeed={"zero_stage": 3}), world_size=1)
    cfg = tiny_config(sft__deepspeed={"zero_stage": 2})
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"lrmerge\[gpu\]"):
            train.train(stage="sft", cfg=cfg, init=str(files["base"]), out=str(tmp_path / "d"),
                        rows=fsutil.read_jsonl(files["flan"]), log=quiet)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2"):
        train.train(stage="sft", cfg=tiny_config(), init=str(files["base"]),
                    out=str(tmp_path / "w"), rows=fsutil.read_jsonl(files["flan"]), log=quiet)
