"""Merges across vocabularies against mergekit 0.1.5 (`tokenizer_source: union`), issue 17.

The inputs are what the workflow makes: a tiny Llama base and SFT fine-tune on a byte-fallback BPE
tokenizer (Llama-2 style), and a CT fine-tune whose tokenizer `lrmerge.data.vocab.extend_tokenizer`
extended by K tokens learned from a made-up language, its embedding (and untied head) grown by
`lrmerge.train.model.extend_embeddings` (new rows: the mean of their pieces) and its new rows then
moved (as CT training moves them). float32, untied and tied. The same mergekit YAML runs through
mergekit with `tokenizer_source: union` and through lrmerge without that key (lrmerge aligns rows
by token text whenever the inputs' row counts differ; the key itself is refused).

What holds (docs/merge-engine.md, "Merges across vocabularies"):
- every tensor but the embedding and the head: bit for bit, every method here;
- shared rows: bit for bit for linear and task_arithmetic; ties and breadcrumbs differ, because
  mergekit counts the density over the union's rows (its padded rows have task vector zero, so it
  keeps the top int(density * (N + K) * h) entries of the shared rows, lrmerge the top
  int(density * N * h), as without the extension); for ties, exactly at entries ranked between the
  two counts for some model;
- new rows: mergekit gives every model that lacks a token the row of the one model that has it
  (tokenizer/embed.py, assign_embedding_sources), the base included, so every task vector is zero
  there: task_arithmetic, ties and breadcrumbs give the CT model's row bit for bit, as lrmerge
  does; its linear takes the weighted mean of copies of that row, up to 1 ulp off it;
- tokenizer: the same tokens at the same shared ids, N + K rows on both sides; lrmerge writes the
  CT model's tokenizer (its new tokens in its own order, as BPE merges); mergekit, with a
  base_model, writes the base's with the new tokens as added tokens, in an order that varies from
  run to run (a hash map's), which segments the CT model's text differently (a document's
  leading "▁" dropped, "▁ᱩ" split); its linear (no base_model) starts from whichever model its
  set of models lists first;
- a token two CT models add: lrmerge, the weighted mean of their rows; mergekit gives the models
  without it the plain mean mu of the two and merges the task vectors r - mu (task_arithmetic:
  mu + lambda * sum w (r - mu)), 0.022 apart here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from merge_helpers import (
    llama_config,
    load_model,
    random_base,
    random_task_vector,
    run_engine,
    to_torch,
    write_model,
    write_yaml,
)
from test_vocab import made_up_language, write_byte_fallback_base

from lrmerge.merge.vocab import EMBED, HEAD

K = 40  # new tokens: single Ol Chiki letters and merges of them ("▁ᱲᱶᱧᱛᱢ")
DENSITY = 0.5
WEIGHTS = {"ct": 1.0, "sft": 0.6}
METHODS = {  # method -> (mergekit YAML `parameters`, has base_model)
    "linear": (None, False),
    "task_arithmetic": ({"lambda": 0.7}, True),
    "ties": (None, True),
    "breadcrumbs": ({"gamma": 0.02}, True),
}


@pytest.fixture(autouse=True, scope="module")
def _engine_imported_outside_capsys():
    import lrmerge.merge  # noqa: F401  (as in test_merge_mergekit.py)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(base tokenizer folder, extended folder, extend_tokenizer's record)."""
    from lrmerge.data import vocab

    root = tmp_path_factory.mktemp("vocab_mergekit_tok")
    base = write_byte_fallback_base(root / "base")
    record = vocab.extend_tokenizer(base, made_up_language(200), K, root / "extended")
    return base, root / "extended", record


class Inputs:
    """base, sft (base vocabulary) and ct (extended) model folders, and their tensors."""

    def __init__(self, root: Path, tokenizers, tied: bool):
        from transformers import LlamaConfig, LlamaForCausalLM

        from lrmerge.train.model import extend_embeddings, read_extension

        base_tok, ext_tok, record = tokenizers
        self.root, self.tied = root, tied
        self.n = record["base_vocab_size"]
        self.new_tokens = [t["token"] for t in record["tokens"]]
        cfg = dict(llama_config(vocab=self.n), tie_word_embeddings=tied)
        b64 = random_base(cfg, 0)
        if tied:
            del b64[HEAD]
        self.base = to_torch(b64, "float32")
        self.sft = to_torch({k: v + t for (k, v), t in
                             zip(b64.items(), random_task_vector(b64, 1).values(), strict=True)},
                            "float32")
        ct = to_torch({k: v + t for (k, v), t in
                       zip(b64.items(), random_task_vector(b64, 2).values(), strict=True)},
                      "float32")
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items()
                                                if k not in ("architectures", "torch_dtype")}))
        model.load_state_dict(ct, strict=not tied)
        extend_embeddings(model, read_extension(ext_tok))
        self.ct = {k: v.detach().clone() for k, v in model.state_dict().items() if k in ct}
        g = torch.Generator().manual_seed(5)
        for name in self.vocab_tensors:
            self.ct[name][self.n:] += 0.01 * torch.randn(K, cfg["hidden_size"], generator=g)
            assert torch.equal(self.ct[name][:self.n], ct[name])  # the extension kept base rows
        for name, tensors, c, tok in (
                ("base", self.base, cfg, base_tok), ("sft", self.sft, cfg, base_tok),
                ("ct", self.ct, dict(cfg, vocab_size=self.n + K), ext_tok)):
            folder = write_model(root / name, tensors, c, tokenizer=False)
            for f in tok.iterdir():
                shutil.copyfile(f, folder / f.name)
        self._merged: dict = {}

    @property
    def vocab_tensors(self) -> tuple[str, ...]:
        return (EMBED,) if self.tied else (EMBED, HEAD)

    def yaml(self, method: str) -> dict:
        params, with_base = METHODS[method]
        models = []
        for name in ("ct", "sft"):  # the CT model first, as lrmerge configs list it
            p = {"weight": WEIGHTS[name]}
            if method in ("ties", "breadcrumbs"):
                p["density"] = DENSITY
            models.append({"model": str(self.root / name), "parameters": p})
        cfg: dict = {"merge_method": method}
        if with_base:
            cfg["base_model"] = str(self.root / "base")
        cfg["models"] = models
        if params:
            cfg["parameters"] = params
        cfg["dtype"] = "float32"
        return cfg

    def merged(self, method: str) -> dict:
        """Both merges of `method`, once per module: ours, theirs (rows re-ordered to our ids by
        token text), theirs as written, and both output folders and token -> id maps."""
        if method not in self._merged:
            from mergekit.config import MergeConfiguration
            from mergekit.merge import run_merge
            from mergekit.options import MergeOptions

            cfg = self.yaml(method)
            out = self.root / "out" / method
            out.mkdir(parents=True)
            mk_cfg = MergeConfiguration.model_validate(dict(cfg, tokenizer_source="union"))
            write_yaml(out / "mergekit.yaml", dict(cfg, tokenizer_source="union"))
            run_merge(mk_cfg, str(out / "mergekit"),
                      MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
            theirs = load_model(out / "mergekit")
            stats, ours = run_engine(cfg, out / "lrmerge")
            ids_ours, ids_theirs = token_ids(out / "lrmerge"), token_ids(out / "mergekit")
            assert set(ids_ours) == set(ids_theirs)
            perm = torch.empty(len(ids_ours), dtype=torch.long)
            for token, i in ids_ours.items():
                perm[i] = ids_theirs[token]
            aligned = {k: (v[perm] if k in self.vocab_tensors else v) for k, v in theirs.items()}
            self._merged[method] = {"ours": ours, "theirs": aligned, "raw": theirs,
                                    "stats": stats, "out": out, "ids_ours": ids_ours,
                                    "ids_theirs": ids_theirs}
        return self._merged[method]


def token_ids(folder: Path) -> dict[str, int]:
    """token -> id of a tokenizer.json (model vocabulary and added tokens)."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return dict(data["model"]["vocab"]) | {t["content"]: t["id"] for t in data["added_tokens"]}


@pytest.fixture(scope="module", params=["untied", "tied"])
def inputs(request, tokenizers, tmp_path_factory):
    return Inputs(tmp_path_factory.mktemp(f"vocab_mergekit_{request.param}"), tokenizers,
                  request.param == "tied")


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int32).numpy()


def trim_window(inputs: Inputs, name: str) -> np.ndarray:
    """Shared-row entries that some model ranks between int(d * N * h) (lrmerge's count of
    entries kept by the trim) and int(d * (N + K) * h) (mergekit's, over the union's rows)."""
    b = inputs.base[name]
    n, h = b.shape
    mask = np.zeros((n, h), dtype=bool)
    for model in (inputs.ct, inputs.sft):
        tau = (model[name][:n] - b).abs().numpy()
        desc = np.sort(tau.ravel())[::-1]
        k_ours, k_theirs = int(DENSITY * n * h), int(DENSITY * (n + K) * h)
        mask |= (tau <= desc[k_ours]) & (tau >= desc[k_theirs - 1])
    return mask


# ---------------------------------------------------------------------------------------------
# every tensor, shared rows


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_elementwise_methods_agree_bit_for_bit_but_new_rows(inputs, method):
    m = inputs.merged(method)
    ours, theirs = m["ours"], m["theirs"]
    assert set(ours) == set(theirs) == set(inputs.base)  # tied: no lm_head on either side
    for name, o in ours.items():
        t = theirs[name]
        assert o.dtype == t.dtype == torch.float32 and o.shape == t.shape, name
        rows = inputs.n if name in inputs.vocab_tensors else o.shape[0]
        assert np.array_equal(_bits(o[:rows]), _bits(t[:rows])), name


@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_trimming_methods_differ_on_shared_rows_only(inputs, method):
    m = inputs.merged(method)
    ours, theirs = m["ours"], m["theirs"]
    assert set(ours) == set(theirs) == set(inputs.base)
    for name, o in ours.items():
        t = theirs[name]
        if name not in inputs.vocab_tensors:
            assert np.array_equal(_bits(o), _bits(t)), name
            continue
        n = inputs.n
        differ = _bits(o[:n]) != _bits(t[:n])
        # mergekit keeps more entries of the shared rows (its k counts the new rows' zeros)
        assert differ.sum() > 0, name
        if method == "ties":
            window = trim_window(inputs, name)
            assert not (differ & ~window).any(), (
                f"{name}: {int((differ & ~window).sum())} entries differ outside the ranks "
                "between lrmerge's and mergekit's trim counts")
        # lrmerge's shared rows are the merge without the extension: the mergekit (= lrmerge,
        # tests/test_merge_mergekit.py) merge of the base-vocabulary models
        assert np.array_equal(_bits(o[:n]), _bits(_without_extension(inputs, method)[name]))


def _without_extension(inputs: Inputs, method: str) -> dict:
    """mergekit's merge of base, sft and the CT model cut to the base vocabulary (no union)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cut = inputs.root / "ct_cut"
    if not cut.exists():
        write_model(cut, {k: v[:inputs.n] if k in inputs.vocab_tensors else v
                          for k, v in inputs.ct.items()},
                    json.loads((inputs.root / "base" / "config.json").read_text()))
    cfg = inputs.yaml(method)
    cfg["models"][0]["model"] = str(cut)
    out = inputs.root / "out" / f"{method}_cut"
    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    return load_model(out)


# ---------------------------------------------------------------------------------------------
# new rows


@pytest.mark.parametrize("method", list(METHODS))
def test_new_rows(inputs, method):
    m = inputs.merged(method)
    n = inputs.n
    for name in inputs.vocab_tensors:
        ct_rows = inputs.ct[name][n:]
        ours, theirs = m["ours"][name][n:], m["theirs"][name][n:]
        assert ours.shape == theirs.shape == (K, ct_rows.shape[1])
        # lrmerge: the CT model's row as it is, every method (the only model with the token)
        assert np.array_equal(_bits(ours), _bits(ct_rows)), name
        if method == "linear":
            # mergekit: (1.0 * row + 0.6 * row) / 1.6, the SFT model's missing row being a copy
            # of the CT model's: within 1 float32 ulp of it, not equal throughout
            ulps = (theirs - ct_rows).abs() / torch.from_numpy(np.spacing(ct_rows.abs().numpy()))
            assert float(ulps.max()) <= 1.0, name
            assert not torch.equal(theirs, ct_rows), name
        else:
            # mergekit filled the base's and the SFT model's rows with the CT model's (a zero row
            # would give lambda * 1.0 * row = 0.7 * row under task_arithmetic, a mean another row
            # again): every task vector is zero there, the base row comes out as it is
            assert np.array_equal(_bits(theirs), _bits(ct_rows)), name


# ---------------------------------------------------------------------------------------------
# tokenizer


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_output_tokenizers(inputs, tokenizers, method):
    from transformers import AutoTokenizer

    m = inputs.merged(method)
    n = inputs.n
    ext = tokenizers[1]
    ours, theirs = m["ids_ours"], m["ids_theirs"]
    # lrmerge: the CT model's tokenizer, byte for byte; its new tokens at N .. N + K - 1 in order
    assert (m["out"] / "lrmerge" / "tokenizer.json").read_bytes() == \
        (ext / "tokenizer.json").read_bytes()
    assert [ours[t] for t in inputs.new_tokens] == list(range(n, n + K))
    # both: the union vocabulary, shared tokens at their base ids, the new ones after them
    assert {t: i for t, i in theirs.items() if i < n} == {t: i for t, i in ours.items() if i < n}
    assert sorted(theirs[t] for t in inputs.new_tokens) == list(range(n, n + K))
    for side in ("lrmerge", "mergekit"):
        assert json.loads((m["out"] / side / "config.json").read_text())["vocab_size"] == n + K
    data = json.loads((m["out"] / "mergekit" / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t for t in data["added_tokens"]}
    # mergekit starts the union from the base's tokenizer (without a base_model, linear: the
    # first of its referenced models, a Python set: the CT model's or the SFT model's, by the
    # paths' hashes) and appends the tokens it lacks as added tokens (matched before the BPE model
    # runs, normalized, not special) in the order of a hash map (Rust's, in `tokenizers`): their
    # ids are a permutation of ours that changes from run to run
    if set(added) & set(inputs.new_tokens):
        start = tokenizers[0]
        assert set(added) >= set(inputs.new_tokens)
        for t in inputs.new_tokens:
            assert added[t]["normalized"] and not added[t]["special"], t
    else:  # started from the CT model's tokenizer: its own ids
        assert method == "linear"
        start = ext
        assert theirs == ours
    assert data["model"]["vocab"] == json.loads((start / "tokenizer.json").read_text(
        encoding="utf-8"))["model"]["vocab"]
    if method == "linear":
        return
    # the CT model's text: lrmerge's tokenizer segments it as the CT model was trained, mergekit's
    # not (46 of 50 documents, 4749 tokens against 4787, with tokenizers 0.23.3)
    docs = made_up_language(50, seed=1)
    ct_tok, lr_tok, mk_tok = (AutoTokenizer.from_pretrained(p) for p in
                              (ext, m["out"] / "lrmerge", m["out"] / "mergekit"))

    def pieces(tok, doc):
        return tok.convert_ids_to_tokens(tok(doc, add_special_tokens=False).input_ids)

    assert all(pieces(lr_tok, d) == pieces(ct_tok, d) for d in docs)
    differ = sum(pieces(mk_tok, d) != pieces(ct_tok, d) for d in docs)
    assert differ > 0


# ---------------------------------------------------------------------------------------------
# a token two CT models add


@pytest.fixture(scope="module")
def second_extension(tokenizers, tmp_path_factory):
    """The base tokenizer extended by 30 tokens learned from another made-up lexicon: some of them
    (single letters) the first extension has too."""
    from lrmerge.data import vocab

    out = tmp_path_factory.mktemp("vocab_mergekit_tok2") / "extended"
    return out, vocab.extend_tokenizer(tokenizers[0], made_up_language(200, seed=3), 30, out)


def test_token_two_models_add(inputs, second_extension):
    """task_arithmetic (lambda 0.7) of two CT models (weights 1 and 3) and the SFT model: a token
    both CT models add is, in lrmerge, the weighted mean of their rows; mergekit gives the base and
    the SFT model the two rows' plain mean mu and merges the task vectors r - mu:
    mu + 0.7 * (1 * (r_a - mu) + 3 * (r_b - mu)), which is no mean of them."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import LlamaConfig, LlamaForCausalLM

    from lrmerge.train.model import extend_embeddings, read_extension

    tok2, record2 = second_extension
    n, root = inputs.n, inputs.root
    cfg = json.loads((root / "base" / "config.json").read_text())
    g = torch.Generator().manual_seed(9)
    b_sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in inputs.base.items()}
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items()
                                            if k not in ("architectures", "torch_dtype")}))
    model.load_state_dict(b_sd, strict=not inputs.tied)
    extend_embeddings(model, read_extension(tok2))
    ct_b = {k: v.detach().clone() for k, v in model.state_dict().items() if k in b_sd}
    for name in inputs.vocab_tensors:
        ct_b[name][n:] += 0.01 * torch.randn(30, ct_b[name].shape[1], generator=g)
    folder = write_model(root / "ct_b", ct_b, dict(cfg, vocab_size=n + 30), tokenizer=False)
    for f in tok2.iterdir():
        shutil.copyfile(f, folder / f.name)
    weights = {"ct": 1.0, "ct_b": 3.0, "sft": 0.6}
    cfg = {"merge_method": "task_arithmetic", "base_model": str(root / "base"),
           "models": [{"model": str(root / m), "parameters": {"weight": w}}
                      for m, w in weights.items()],
           "parameters": {"lambda": 0.7}, "dtype": "float32"}
    out = root / "out" / "two_ct"
    run_merge(MergeConfiguration.model_validate(dict(cfg, tokenizer_source="union")),
              str(out / "mergekit"),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    theirs = load_model(out / "mergekit")
    stats, ours = run_engine(cfg, out / "lrmerge")
    ids_ours, ids_theirs = token_ids(out / "lrmerge"), token_ids(out / "mergekit")
    assert set(ids_ours) == set(ids_theirs)
    first = set(inputs.new_tokens)
    second = {t["token"] for t in record2["tokens"]}
    both = first & second
    assert stats["vocabulary"]["size"] == n + len(first | second) and len(both) > 0
    rows_a = {t: inputs.ct[EMBED][n + i] for i, t in enumerate(inputs.new_tokens)}
    rows_b = {t["token"]: ct_b[EMBED][t["id"]] for t in record2["tokens"]}
    for name in ours:
        if name not in inputs.vocab_tensors:
            assert np.array_equal(_bits(ours[name]), _bits(theirs[name])), name
    assert np.array_equal(_bits(ours[EMBED][:n]), _bits(theirs[EMBED][:n]))
    gap = 0.0
    for token in first | second:
        o, t = ours[EMBED][ids_ours[token]], theirs[EMBED][ids_theirs[token]]
        if token not in both:  # one model has it: that row, on both sides
            own = rows_a.get(token, rows_b.get(token))
            assert torch.equal(o, own) and torch.equal(t, own), token
            continue
        a, b = rows_a[token], rows_b[token]
        torch.testing.assert_close(o, (1.0 * a + 3.0 * b) / 4.0, rtol=1e-6, atol=1e-8)
        mu = (a + b) / 2
        torch.testing.assert_close(t, mu + 0.7 * (1.0 * (a - mu) + 3.0 * (b - mu)),
                                   rtol=1e-6, atol=1e-8)
        gap = max(gap, float((o - t).abs().max()))
    assert gap > 1e-3  # 0.022 on these models (rows of scale 0.02)
