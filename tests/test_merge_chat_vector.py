"""chat_vector (Huang et al., ACL 2024): theta_CT + r (theta_SFT - theta_base), as the task-arithmetic
kernel with weights (1, r); skip_embed keeps the CT model's embeddings and LM head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_helpers import native_config, run_engine, write_yaml


@pytest.fixture(autouse=True, scope="module")
def _engine_imported():
    import lrmerge.merge.engine  # noqa: F401


def chat_config(inputs, **kw) -> dict:
    cfg = native_config(inputs, "chat_vector", out_dtype="float32")
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chat_vector_is_task_arithmetic_with_weights_one_and_r(shared_merge_inputs, tmp_path,
                                                               ratio, dtype):
    inputs = shared_merge_inputs(n_models=2, dtype=dtype, seed=21)
    stats, out = run_engine(chat_config(inputs, ratio=ratio), tmp_path / "cv")
    ta = native_config(inputs, "task_arithmetic", out_dtype="float32",
                       model_overrides=[{"weight": 1.0}, {"weight": ratio}])
    _, ref = run_engine(ta, tmp_path / "ta")
    assert out.keys() == ref.keys()
    for name in out:
        assert torch.equal(out[name].view(torch.int32), ref[name].view(torch.int32)), name
    # nothing is discarded: every entry of both models is used
    numel = sum(t.numel() for t in inputs.base.values())
    assert [t["kept"] for t in stats["totals"]] == [numel, numel]
    assert stats["parameters"]["ratio"] == ratio and "weight" not in stats["parameters"]


def test_chat_vector_by_hand(shared_merge_inputs, tmp_path):
    """theta = CT + r (SFT - base), worked out in float64: the kernel rounds each step to float32."""
    inputs = shared_merge_inputs(n_models=2, dtype="float32", seed=22)
    ct, sft = (inputs.models[n] for n in inputs.names)
    _, out = run_engine(chat_config(inputs, ratio=0.5), tmp_path / "cv")
    for name, got in out.items():
        b = inputs.base[name].double()
        want = ct[name].double() + 0.5 * (sft[name].double() - b)
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=0, atol=2e-7,
                                   err_msg=name)


def test_skip_embed_keeps_the_ct_embeddings_and_head(shared_merge_inputs, tmp_path):
    inputs = shared_merge_inputs(n_models=2, dtype="bfloat16", seed=23)
    ct = inputs.models[inputs.names[0]]
    stats, out = run_engine(chat_config(inputs, skip_embed=True), tmp_path / "skip")
    _, plain = run_engine(chat_config(inputs), tmp_path / "plain")
    for name, got in out.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(got, ct[name].float()), name
            numel = got.numel()
            assert [e["kept"] for e in stats["tensors"][name]] == [numel, 0]
        else:
            assert torch.equal(got.view(torch.int32), plain[name].view(torch.int32)), name
    assert not torch.equal(plain["lm_head.weight"], ct["lm_head.weight"].float())


@pytest.mark.parametrize("change, culprit", [
    ({"weight": 2.0}, "key 'weight' has no meaning for chat_vector"),
    ({"lambda": 0.5}, "key 'lambda' has no meaning for chat_vector"),
    ({"skip_embed": "yes"}, "key 'skip_embed': expected true or false"),
    ({"ratio": "half"}, "key 'ratio': expected a number"),
    ({"base": None}, "key 'base': method chat_vector needs a base model"),
])
def test_chat_vector_config_errors(shared_merge_inputs, tmp_path, change, culprit):
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    inputs = shared_merge_inputs(n_models=2, dtype="float32", seed=21)
    cfg = chat_config(inputs, **change)
    if cfg.get("base") is None:
        cfg.pop("base")
    path = write_yaml(tmp_path / "cv.yaml", cfg)
    with pytest.raises(MergeError, match=culprit) as err:
        load_merge_config(path)
    assert str(path) in str(err.value)


def test_chat_vector_needs_two_models_and_ratio_belongs_to_it(shared_merge_inputs, tmp_path):
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    three = shared_merge_inputs(n_models=3, dtype="float32", seed=24)
    with pytest.raises(MergeError, match="chat_vector takes two models, the CT model first"):
        load_merge_config(chat_config(three))
    two = shared_merge_inputs(n_models=2, dtype="float32", seed=21)
    with pytest.raises(MergeError, match="key 'ratio' has no meaning for ties \\(it is for chat_vector\\)"):
        load_merge_config(native_config(two, "ties", density=0.5, ratio=1.0))
    with pytest.raises(MergeError, match="models\\[1\\]: chat_vector takes no per-model weight"):
        load_merge_config(native_config(two, "chat_vector",
                                        model_overrides=[{}, {"weight": 0.5}]))


@pytest.mark.parametrize("method", ["chat_vector", "layer_swap", "ties_sv"])
def test_mergekit_yaml_naming_our_methods_is_refused_with_the_way_out(tmp_path, method):
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    path = write_yaml(tmp_path / "mk.yaml", {"merge_method": method, "models": [{"model": "a"}]})
    with pytest.raises(MergeError, match=f"write a native lrmerge config \\(method: {method}\\)"):
        load_merge_config(path)
