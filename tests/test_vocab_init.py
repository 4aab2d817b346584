"""CT with an extended vocabulary (issue 17): the base model's embeddings and output layer grow
by the K tokens lrmerge.data.vocab added, each new row the mean of its pieces' rows; the optional
embedding warm-up trains only those two first.

Fixtures: the mini's byte-level BPE tokenizer (without its own extension words), extended by 12
tokens learned from the generated Bengali corpus with lrmerge.data.vocab; the Bengali and English
token folders tokenized with the extended tokenizer; a tiny untied and a tiny tied base
pre-trained on English with the base tokenizer."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import pretrain_base, quiet, tiny_config

from lrmerge.data import synthetic, tokenize, vocab
from lrmerge.data.shards import TokenShards
from lrmerge.train.loop import CHECKPOINT_DIR, _save_hf, train
from lrmerge.train.model import extend_embeddings, load_model, read_extension

K = 12
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _config(tied: bool = False, **overrides) -> dict:
    cfg = tiny_config(mini__vocab_extension=False, **overrides)
    cfg["mini"]["model"]["tie_word_embeddings"] = tied
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_init")
    cfg = _config()
    torch.set_num_threads(1)
    paths = {"root": root, "tokenizer": root / "tokenizer", "ext": root / "extended"}
    tokenize.train_tokenizer(cfg, paths["tokenizer"], log=quiet)
    paths["en"] = root / "tokens" / "en_base"
    tokenize.prepare_corpus(cfg, "en", str(paths["tokenizer"]), paths["en"], log=quiet)
    docs = list(itertools.islice(synthetic.documents(cfg, "bn", "ct"), 200))
    vocab.extend_tokenizer(paths["tokenizer"], docs, K, paths["ext"])
    for lang in ("bn", "en"):
        paths[f"{lang}_ext"] = root / "tokens" / f"{lang}_ext"
        tokenize.prepare_corpus(cfg, lang, str(paths["ext"]), paths[f"{lang}_ext"], log=quiet)
    paths["base"], paths["tied"] = root / "base", root / "tied"
    pretrain_base(cfg, paths, paths["base"])
    pretrain_base(_config(tied=True), paths, paths["tied"])
    return paths


def _ct(cfg, files, out, tokens, init=None, log=quiet, tokenizer_dir="ext"):
    return train(stage="ct", cfg=cfg, init=str(init or files["base"]), out=str(out),
                 data=str(files["bn_ext"]), english=str(files["en_ext"]), tokens=tokens,
                 lang="bn", tokenizer_dir=tokenizer_dir and str(files[tokenizer_dir]),
                 threads=1, log=log)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _extension(files) -> dict:
    return json.loads((files["ext"] / "vocab_extension.json").read_text())


def _copy_extended_tokenizer(files, dest):
    shutil.copytree(files["ext"], dest)
    return dest / "vocab_extension.json"


# --------------------------------------------------------------------------------------------
# the new rows
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["base", "tied"])
def test_new_rows_are_the_mean_of_their_pieces(files, base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ext = read_extension(files["ext"])
    n = ext["base_vocab_size"]
    model = load_model(str(files[base]), "sdpa")
    tied = base == "tied"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert model.config.vocab_size == n
    old_in = model.model.embed_tokens.weight.detach().clone()
    old_out = model.lm_head.weight.detach().clone()
    others = {k: v.clone() for k, v in model.state_dict().items() if k not in (EMBED, HEAD)}
    rng = torch.get_rng_state()
    record = extend_embeddings(model, ext)

    assert torch.equal(torch.get_rng_state(), rng)  # training's random state not moved
    assert record["added"] == K and record["vocab_size"] == n + K and record["tied"] == tied
    assert record["mean_pieces"] == pytest.approx(np.mean([len(t["pieces"])
                                                           for t in ext["tokens"]]), abs=1e-3)
    new_in, new_out = model.model.embed_tokens.weight, model.lm_head.weight
    assert new_in.shape == new_out.shape == (n + K, model.config.hidden_size)
    assert model.config.vocab_size == n + K
    assert (new_out is new_in) == tied
    assert torch.equal(new_in[:n], old_in) and torch.equal(new_out[:n], old_out)  # bit for bit
    for tok in ext["tokens"]:
        pieces = tok["pieces"]
        assert torch.equal(new_in[tok["id"]], old_in[pieces].double().mean(0).float())
        assert torch.equal(new_out[tok["id"]], old_out[pieces].double().mean(0).float())
    if not tied:  # the head's rows come from the head, not from the input matrix
        assert not torch.equal(new_out[n:], new_in[n:])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())

    # saved as training saves it: loads with the extended tokenizer, the base's tensor names
    tokenizer = AutoTokenizer.from_pretrained(files["ext"])
    _save_hf(model, tokenizer, tmp_path / "out", "float32")
    assert set(_weights(tmp_path / "out")) == set(_weights(files[base]))
    assert (HEAD in _weights(tmp_path / "out")) == (not tied)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert again.config.vocab_size == n + K == len(AutoTokenizer.from_pretrained(tmp_path / "out"))
    assert torch.equal(again.lm_head.weight, new_out.detach())
    assert (again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()) == tied


# --------------------------------------------------------------------------------------------
# CT with the extended vocabulary
# --------------------------------------------------------------------------------------------
def test_ct_with_an_extended_vocabulary_learns(files, tmp_path):
    """The loss falls over the run, and not at a learning rate of 0 (with the same new rows).
    At weight decay 0 an input row moves only if its token is in the data: most new tokens are
    (their rows move); some base tokens are not, nor are new tokens that are only a step on the
    way to longer merges (the extended BPE always merges them further): their rows stay bit for
    bit. Every output row moves (the softmax's gradient reaches all of them)."""
    ext = _extension(files)
    n = ext["base_vocab_size"]
    cfg = _config(continual_pretrain__weight_decay=0.0)
    s = _ct(cfg, files, tmp_path / "ct", 5000)
    frozen = _config(continual_pretrain__weight_decay=0.0)
    frozen["continual_pretrain"].update(lr=0.0, min_lr=0.0)
    s0 = _ct(frozen, files, tmp_path / "lr0", 5000)

    losses = [h["loss"] for h in s["loss_history"]]
    losses0 = [h["loss"] for h in s0["loss_history"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert abs(np.mean(losses0[-5:]) - np.mean(losses0[:5])) < 0.3, losses0
    assert s["vocab_extension"]["added"] == K
    assert s["vocab_extension"]["initialised"] == "mean_of_pieces"
    assert s["vocab_extension"]["embedding_warmup_steps"] == s["embedding_warmup_steps"] == 0

    start, trained = _weights(tmp_path / "lr0"), _weights(tmp_path / "ct")
    assert start[EMBED].shape[0] == n + K
    for tok in ext["tokens"]:  # at lr 0 the rows are still their init
        assert torch.equal(start[EMBED][tok["id"]],
                           start[EMBED][tok["pieces"]].double().mean(0).float())
    in_data = set()
    for folder in ("bn_ext", "en_ext"):
        shards = TokenShards(str(files[folder]))
        in_data |= set(np.unique(shards.slice(0, shards.tokens)).tolist())
    new_in_data = set(range(n, n + K)) & in_data
    assert len(new_in_data) >= K // 2, in_data
    absent = set(range(n + K)) - in_data
    assert set(range(n)) - in_data, "every base token is in the data: nothing to contrast with"
    moved = {i for i in range(n + K) if not torch.equal(start[EMBED][i], trained[EMBED][i])}
    assert new_in_data <= moved and not absent & moved
    assert all(not torch.equal(start[HEAD][i], trained[HEAD][i]) for i in range(n + K))
    # the saved folder describes its rows
    assert read_extension(tmp_path / "ct") == ext


def test_the_next_budget_does_not_extend_again(files, tmp_path):
    cfg = _config()
    first = _ct(cfg, files, tmp_path / "ct3000", 3000)
    assert first["vocab_extension"]["initialised"] == "mean_of_pieces"
    # the tokenizer from the previous budget's folder (it carries vocab_extension.json) ...
    second = _ct(cfg, files, tmp_path / "ct5000", 5000, init=tmp_path / "ct3000",
                 tokenizer_dir=None)
    assert second["resumed_from"] == str(tmp_path / "ct3000")
    assert second["vocab_extension"]["initialised"].startswith("before:")
    assert _weights(tmp_path / "ct5000")[EMBED].shape[0] == first_rows(files)
    # ... and the same chain is the straight run
    straight = _ct(cfg, files, tmp_path / "straight", 5000)
    assert all(torch.equal(v, _weights(tmp_path / "straight")[k])
               for k, v in _weights(tmp_path / "ct5000").items())
    assert straight["final_loss"] == second["final_loss"]


def first_rows(files) -> int:
    return _extension(files)["base_vocab_size"] + K


# --------------------------------------------------------------------------------------------
# embedding warm-up
# --------------------------------------------------------------------------------------------
def test_embedding_warmup_trains_only_embeddings_and_resumes_across_its_end(files, tmp_path):
    """embedding_warmup_steps 3: the checkpoint at step 2 differs from the extended base only in
    the input embeddings and the output layer; the job killed there resumes inside the warm-up
    and ends bit for bit as the run that was never stopped, where all tensors have moved."""
    cfg = _config(continual_pretrain__checkpoint_every=1)
    cfg["continual_pretrain"]["embedding_warmup_steps"] = 3  # the schema lacks it so far

    class Killed(Exception):
        pass

    def kill_at_step_3(msg):
        if msg.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        _ct(cfg, files, tmp_path / "killed", 3000, log=kill_at_step_3)
    base = load_model(str(files["base"]), "sdpa")
    extend_embeddings(base, read_extension(files["ext"]))
    start = base.state_dict()
    ckpt = load_file(str(tmp_path / "killed" / CHECKPOINT_DIR / "rank00000-of-00001.safetensors"))
    assert json.loads((tmp_path / "killed" / CHECKPOINT_DIR / "meta.json").read_text())["step"] == 2
    moved = {k for k in start if not torch.equal(ckpt[f"param.{k}"], start[k])}
    assert moved == {EMBED, HEAD}
    assert not any(k.startswith("exp_avg.model.layers") for k in ckpt)  # no moments yet

    messages = []
    resumed = _ct(cfg, files, tmp_path / "killed", 3000, log=messages.append)
    assert any(m.startswith("resuming own checkpoint at step 2") for m in messages), messages
    assert any("training only the embeddings" in m for m in messages), messages
    assert any(m.startswith("step 3: embedding warm-up over") for m in messages), messages
    reference = _ct(cfg, files, tmp_path / "reference", 3000)
    final, ref = _weights(tmp_path / "killed"), _weights(tmp_path / "reference")
    assert all(torch.equal(final[k], ref[k]) for k in ref) and final.keys() == ref.keys()
    assert resumed["final_loss"] == reference["final_loss"]
    assert resumed["embedding_warmup_steps"] == 3
    assert all(not torch.equal(final[k], start[k]) for k in start if "layers.0." in k)


def test_embedding_warmup_is_refused_with_deepspeed(files, tmp_path):
    cfg = _config()
    cfg["continual_pretrain"].update(embedding_warmup_steps=2, deepspeed={"zero_stage": 2})
    with pytest.raises(ValueError, match="embedding_warmup_steps .*deepspeed"):
        _ct(cfg, files, tmp_path / "x", 3000)


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------
def test_a_token_without_pieces_is_refused(files, tmp_path):
    path = _copy_extended_tokenizer(files, tmp_path / "tok")
    ext = json.loads(path.read_text())
    bad = ext["tokens"][4]
    bad["pieces"] = []
    path.write_text(json.dumps(ext))
    with pytest.raises(ValueError, match=rf"{path}: token {bad['id']} .* has no pieces"):
        read_extension(path.parent)
    bad["pieces"] = [0, ext["base_vocab_size"] + 1]
    path.write_text(json.dumps(ext))
    with pytest.raises(ValueError, match=rf"token {bad['id']} .* are not base ids"):
        read_extension(path.parent)
    bad["pieces"], bad["id"] = [0], bad["id"] + 1
    path.write_text(json.dumps(ext))
    with pytest.raises(ValueError, match=rf"token {bad['id']} .* should be {bad['id'] - 1}"):
        read_extension(path.parent)


def test_a_vocabulary_size_mismatch_is_refused(files, tmp_path):
    ext = read_extension(files["ext"])
    model = load_model(str(files["base"]), "sdpa")
    extend_embeddings(model, ext)
    with pytest.raises(ValueError, match="vocab_extension.json: extends a vocabulary of 400 "
                                         f"tokens, but the model has {400 + K}.*already extended"):
        extend_embeddings(model, ext)
    # CT from a base of another vocabulary size, named by the tokenizer folder's file
    path = _copy_extended_tokenizer(files, tmp_path / "tok")
    record = json.loads(path.read_text())
    record["base_vocab_size"] -= 1
    for t in record["tokens"]:
        t["id"] -= 1
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{path}: extends a vocabulary of 399 tokens, but the "
                                         "model has 400 embedding rows"):
        train(stage="ct", cfg=_config(), init=str(files["base"]), out=str(tmp_path / "x"),
              data=str(files["bn_ext"]), english=str(files["en_ext"]), tokens=3000, lang="bn",
              tokenizer_dir=str(path.parent), threads=1, log=quiet)
