"""Merges of models whose vocabularies differ (a vocabulary-extended CT model), aligned by token
text: the shared rows merge exactly as without the extension, a new token's row comes from the
models that have it, the output carries the extended (or union) tokenizer, and bad inputs are
refused naming the model and the token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from merge_helpers import (
    llama_config,
    random_base,
    random_task_vector,
    run_engine,
    to_torch,
    write_model,
)

from lrmerge.merge import MergeError
from lrmerge.merge.vocab import EMBED, HEAD

VOCAB = 64


def _extend_tokenizer(folder: Path, words: list[str]) -> None:
    """Add `words` to a WordLevel tokenizer.json at ids VOCAB, VOCAB + 1, ..."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    for i, w in enumerate(words):
        data["model"]["vocab"][w] = VOCAB + i
    path.write_text(json.dumps(data))


class Models:
    def __init__(self, root: Path):
        self.cfg = llama_config(vocab=VOCAB)
        base = random_base(self.cfg, 0)
        self.base = to_torch(base, "float32")
        self.root = root
        write_model(root / "base", self.base, self.cfg)
        self.sft = to_torch({k: v + t for (k, v), t in
                             zip(base.items(), random_task_vector(base, 1).values(), strict=True)},
                            "float32")
        write_model(root / "sft", self.sft, self.cfg)
        self.ct = to_torch({k: v + t for (k, v), t in
                            zip(base.items(), random_task_vector(base, 2).values(), strict=True)},
                           "float32")
        write_model(root / "ct_cut", self.ct, self.cfg)  # the same CT model, not extended
        self.ext = {}

    def extended(self, name: str, words: list[str], seed: int, source=None) -> Path:
        """The CT model with len(words) new rows in its embedding and head, and its tokenizer."""
        tensors = dict(source or self.ct)
        g = torch.Generator().manual_seed(seed)
        for key in (EMBED, HEAD):
            extra = 0.02 * torch.randn(len(words), tensors[key].shape[1], generator=g)
            tensors[key] = torch.cat([tensors[key], extra])
        cfg = dict(self.cfg, vocab_size=VOCAB + len(words))
        folder = write_model(self.root / name, tensors, cfg, tokenizer=False)
        write_model(self.root / f".{name}_tok", self.base, self.cfg)  # a base tokenizer to extend
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / f).write_bytes((self.root / f".{name}_tok" / f).read_bytes())
        _extend_tokenizer(folder, words)
        self.ext[name] = tensors
        return folder


@pytest.fixture
def models(tmp_path):
    return Models(tmp_path)


def _config(models: Models, method: str, ct: str, **kw) -> dict:
    cfg = {"method": method, "models": [{"path": str(models.root / ct), "name": "ct"},
                                        {"path": str(models.root / "sft"), "name": "sft"}],
           "dtype": "float32"}
    if method not in ("average", "layer_swap"):
        cfg["base"] = str(models.root / "base")
    return cfg | kw


METHODS = [("ties", {"density": 0.3}), ("ties_sv", {"density": 0.3, "slack": 0.2, "protect": "sft"}),
           ("task_arithmetic", {"lambda": 0.7}), ("average", {}), ("chat_vector", {"ratio": 0.5}),
           ("dare_ties", {"density": 0.5}), ("breadcrumbs", {"density": 0.4})]


@pytest.mark.parametrize("method, params", METHODS)
def test_shared_rows_merge_as_without_the_extension(models, tmp_path, method, params):
    words = [f"new{i}" for i in range(5)]
    models.extended("ct_ext", words, seed=3)
    cut_stats, cut = run_engine(_config(models, method, "ct_cut", **params), tmp_path / "cut")
    stats, out = run_engine(_config(models, method, "ct_ext", **params), tmp_path / "ext")
    for name, t in cut.items():
        if name in (EMBED, HEAD):
            assert out[name].shape[0] == VOCAB + len(words)
            assert torch.equal(out[name][:VOCAB], t), name
            # a new token's row: the CT model's, the only model that has it
            assert torch.equal(out[name][VOCAB:], models.ext["ct_ext"][name][VOCAB:]), name
        else:
            assert torch.equal(out[name], t), name
    assert stats["totals"] == cut_stats["totals"]  # new rows are counted apart
    assert stats["vocabulary"] == {"shared_rows": VOCAB, "new_rows": 5, "size": VOCAB + 5,
                                   "tokenizer": "ct", "new_rows_from": {"ct": 5}}
    assert stats["new_rows"] == {EMBED: {"ct": 5, "sft": 0}, HEAD: {"ct": 5, "sft": 0}}


def test_output_carries_the_extended_tokenizer_and_generates(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models.extended("ct_ext", ["alpha", "beta"], seed=4)
    run_engine(_config(models, "ties", "ct_ext", density=0.3), tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_bytes() == (models.root / "ct_ext" / "tokenizer.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB + 2
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("w3 alpha beta", return_tensors="pt").input_ids
    assert ids[0].tolist()[-2:] == [VOCAB, VOCAB + 1]
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3 and int(gen.max()) < VOCAB + 2
    assert "## Vocabulary" in (out / "README.md").read_text()


def test_union_of_two_differently_extended_models(models, tmp_path):
    a = models.extended("ct_a", ["x0", "x1", "both"], seed=5)
    g = np.random.default_rng(9)
    other = {k: v + torch.from_numpy(0.01 * g.standard_normal(tuple(v.shape)).astype(np.float32))
             for k, v in models.ct.items()}
    b = models.extended("ct_b", ["both", "y0"], seed=6, source=other)
    cfg = {"method": "ties", "base": str(models.root / "base"), "density": 0.3,
           "models": [{"path": str(a), "name": "ct_a", "weight": 1.0},
                      {"path": str(b), "name": "ct_b", "weight": 3.0},
                      {"path": str(models.root / "sft"), "name": "sft"}]}
    stats, out = run_engine(cfg, tmp_path / "out")
    ea, eb = models.ext["ct_a"], models.ext["ct_b"]
    for name in (EMBED, HEAD):
        got = out[name]
        assert got.shape[0] == VOCAB + 4  # x0, x1, both, y0
        assert torch.equal(got[VOCAB], ea[name][VOCAB])
        assert torch.equal(got[VOCAB + 1], ea[name][VOCAB + 1])
        # "both": the weighted mean of the two models' rows (weights 1 and 3)
        want = (ea[name][VOCAB + 2] * 1.0 + eb[name][VOCAB] * 3.0) / 4.0
        torch.testing.assert_close(got[VOCAB + 2], want, rtol=1e-6, atol=1e-8)
        assert torch.equal(got[VOCAB + 3], eb[name][VOCAB + 1])
    vocab = json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]
    assert [vocab[w] for w in ("x0", "x1", "both", "y0")] == list(range(VOCAB, VOCAB + 4))
    assert stats["vocabulary"]["tokenizer"] == "union"


def test_layer_swap_takes_embeddings_from_the_extended_model(models, tmp_path):
    models.extended("ct_ext", ["alpha", "beta"], seed=7)
    params = {"task_model": "sft", "bottom": 1, "top": 0}
    _, out = run_engine(_config(models, "layer_swap", "ct_ext", **params), tmp_path / "ok")
    for name in (EMBED, HEAD):
        assert torch.equal(out[name], models.ext["ct_ext"][name])
    with pytest.raises(MergeError, match="embed_from 'sft' has 64 embedding rows but the merged "
                                         "vocabulary has 66"):
        run_engine(_config(models, "layer_swap", "ct_ext", embed_from="sft", **params),
                   tmp_path / "bad")


def test_refusals_name_the_model_and_the_token(models, tmp_path):
    ext = models.extended("ct_ext", ["alpha"], seed=8)
    data = json.loads((ext / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["renamed"] = vocab.pop("w2")  # id 5 is another token there
    (ext / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(MergeError, match="model 'ct': token 5 is 'renamed' there but 'w2' in"):
        run_engine(_config(models, "ties", "ct_ext", density=0.3), tmp_path / "a")
    (ext / "tokenizer.json").unlink()
    with pytest.raises(MergeError, match="model 'ct': .* has no tokenizer.json"):
        run_engine(_config(models, "ties", "ct_ext", density=0.3), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_same_vocabulary_needs_no_tokenizer(models, tmp_path):
    # today's path: equal embedding rows, no alignment, no tokenizer read
    (models.root / "ct_cut" / "tokenizer.json").unlink()
    stats, _ = run_engine(_config(models, "ties", "ct_cut", density=0.3), tmp_path / "out")
    assert "vocabulary" not in stats and "new_rows" not in stats
