"""layer_swap (Bandarkar et al., ICLR 2025): the task model with its bottom and top layers replaced by
the language model's, linear transition zones between, embeddings and head from a chosen model."""

from __future__ import annotations

import json

import pytest
import torch
from merge_helpers import build_inputs, llama_config, load_model, run_engine, write_yaml
from safetensors.torch import save_file

LAYERS = 8


@pytest.fixture(autouse=True, scope="module")
def _engine_imported():
    import lrmerge.merge.engine  # noqa: F401


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory):
    """bfloat16 language model ('ct') and task model ('sft') of 8 layers (read-only)."""
    return build_inputs(tmp_path_factory.mktemp("eight_layers"), n_models=2, dtype="bfloat16",
                        seed=31, names=["ct", "sft"],
                        cfg=llama_config(layers=LAYERS, dtype="bfloat16"))


def swap_config(inputs, **kw) -> dict:
    cfg = {"method": "layer_swap",
           "models": [{"name": n, "path": str(p)} for n, p in zip(inputs.names, inputs.model_paths,
                                                                   strict=True)],
           "task_model": "sft", "out_dtype": "float32"}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("bottom, top, t, want", [
    (2, 1, 0, [1, 1, 0, 0, 0, 0, 0, 1]),
    (2, 1, 1, [1, 1, 1 / 2, 0, 0, 0, 1 / 2, 1]),
    (2, 1, 2, [1, 1, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 1]),
    (0, 3, 1, [0, 0, 0, 0, 1 / 2, 1, 1, 1]),  # no bottom swap: no bottom transition either
    (3, 0, 0, [1, 1, 1, 0, 0, 0, 0, 0]),
])
def test_language_weight_per_layer_by_hand(bottom, top, t, want):
    from lrmerge.merge.merge_config import MergeConfig, ModelSpec
    from lrmerge.merge.methods import swap_weights

    cfg = MergeConfig("layer_swap", [ModelSpec("a", "ct"), ModelSpec("b", "sft")],
                      task_model="sft", bottom=bottom, top=top, transition=t)
    assert swap_weights(cfg, LAYERS) == pytest.approx(want, abs=1e-15)


def test_too_many_swapped_layers_leave_no_task_layer():
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import MergeConfig, ModelSpec
    from lrmerge.merge.methods import swap_weights

    cfg = MergeConfig("layer_swap", [ModelSpec("a", "ct"), ModelSpec("b", "sft")],
                      task_model="sft", bottom=3, top=2, transition=2)
    with pytest.raises(MergeError, match="take 9 of the model's 8 layers"):
        swap_weights(cfg, LAYERS)


def test_swapped_layers_copied_blended_and_recorded(eight_layers, tmp_path):
    ct, sft = eight_layers.models["ct"], eight_layers.models["sft"]
    stats, out = run_engine(swap_config(eight_layers, bottom=2, top=1, transition=1,
                                        embed_from="sft"), tmp_path / "swap")
    lang = [1, 1, 0.5, 0, 0, 0, 0.5, 1]
    for name, got in out.items():
        if name.startswith("model.layers."):
            w = lang[int(name.split(".")[2])]
            if w in (0, 1):  # whole layers: exact copies
                assert torch.equal(got, (ct if w == 1 else sft)[name].float()), name
            else:  # transition: the convex blend, in float32
                want = (w * ct[name].float() + (1 - w) * sft[name].float())
                torch.testing.assert_close(got, want, rtol=0, atol=1e-7, msg=name)
        elif name == "model.embed_tokens.weight":
            assert torch.equal(got, sft[name].float())
        else:  # final norm and LM head: head_from defaults to the language model
            assert name in ("model.norm.weight", "lm_head.weight")
            assert torch.equal(got, ct[name].float()), name
    # the stats: which model each tensor came from, per tensor and per layer
    by_layer = stats["source_by_layer"]
    assert list(by_layer) == ["embed"] + [str(i) for i in range(LAYERS)] + ["norm", "lm_head"]
    assert by_layer["embed"] == {"ct": 0.0, "sft": 1.0}
    assert [by_layer[str(i)]["ct"] for i in range(LAYERS)] == lang
    assert all(v["ct"] + v["sft"] == 1 for v in by_layer.values())
    assert stats["source"]["model.layers.6.mlp.up_proj.weight"] == {"ct": 0.5, "sft": 0.5}
    numel = out["model.layers.3.mlp.up_proj.weight"].numel()
    assert stats["tensors"]["model.layers.3.mlp.up_proj.weight"] == [
        {"kept": 0, "discarded": 0, "discarded_fraction": 0.0, "reserved": 0},
        {"kept": numel, "discarded": 0, "discarded_fraction": 0.0, "reserved": 0}]
    assert stats["parameters"]["task_model"] == "sft" and stats["parameters"]["head_from"] == "ct"
    # the model card says where each layer came from, and gives no merge weights
    card = (tmp_path / "swap" / "README.md").read_text()
    assert "| layer | ct | sft |" in card and "| 2 | 0.5 | 0.5 |" in card
    assert "| embed | 0 | 1 |" in card and "weight:" not in card
    # the output is a loadable model of the same architecture
    from transformers import LlamaForCausalLM

    LlamaForCausalLM.from_pretrained(tmp_path / "swap")


def test_two_runs_byte_identical(eight_layers, tmp_path):
    cfg = swap_config(eight_layers, bottom=1, top=2, transition=2)
    run_engine(cfg, tmp_path / "a")
    run_engine(cfg, tmp_path / "b")
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


@pytest.mark.parametrize("change, culprit", [
    ({"task_model": "chat"}, "key 'task_model': expected the name of the model"),
    ({"bottom": 0, "top": 0}, "keys 'bottom' and 'top' are both 0"),
    ({"bottom": -1}, "key 'bottom': expected a layer count >= 0"),
    ({"transition": 1.5}, "key 'transition': expected a layer count"),
    ({"embed_from": "base"}, "key 'embed_from': 'base' names no model"),
    ({"density": 0.2}, "key 'density' has no meaning for layer_swap"),
    ({"base": "/x"}, "key 'base' has no meaning for layer_swap"),
])
def test_layer_swap_config_errors(eight_layers, tmp_path, change, culprit):
    from lrmerge.merge.errors import MergeError
    from lrmerge.merge.merge_config import load_merge_config

    path = write_yaml(tmp_path / "swap.yaml",
                      swap_config(eight_layers, **({"bottom": 2, "top": 1} | change)))
    with pytest.raises(MergeError, match=culprit) as err:
        load_merge_config(path)
    assert str(path) in str(err.value)


def test_a_tensor_name_that_does_not_parse_is_refused_before_anything_is_written(tmp_path):
    inputs = build_inputs(tmp_path / "in", n_models=2, dtype="float32", seed=32,
                          names=["ct", "sft"], cfg=llama_config(layers=4), tokenizer=False)
    for name in inputs.names:  # a tensor outside the Llama layout, in both models
        folder = tmp_path / "in" / name
        tensors = load_model(folder)
        tensors["model.vision_tower.proj.weight"] = torch.zeros(4, 4)
        save_file(tensors, str(folder / "model.safetensors"))
    from lrmerge.merge.engine import run_merge
    from lrmerge.merge.errors import MergeError

    with pytest.raises(MergeError, match="tensor model.vision_tower.proj.weight is not a "
                                         "Llama-architecture name"):
        run_merge(swap_config(inputs, bottom=1, top=1), tmp_path / "out")
    assert not any(p.name.startswith(".out") or p.name == "out" for p in tmp_path.iterdir())


def test_declared_depth_must_match_the_tensors(tmp_path):
    inputs = build_inputs(tmp_path / "in", n_models=2, dtype="float32", seed=33,
                          names=["ct", "sft"], cfg=llama_config(layers=4), tokenizer=False)
    for name in inputs.names:
        conf = tmp_path / "in" / name / "config.json"
        conf.write_text(json.dumps(json.loads(conf.read_text()) | {"num_hidden_layers": 5}))
    from lrmerge.merge.engine import run_merge
    from lrmerge.merge.errors import MergeError

    with pytest.raises(MergeError, match="num_hidden_layers is 5 but the tensors name 4 layers"):
        run_merge(swap_config(inputs, bottom=1, top=1), tmp_path / "out")


def test_merge_config_writes_what_merge_reads(eight_layers, tmp_path, capsys):
    """`lrmerge merge-config` (what the workflow's merge rule runs) with the new keys."""
    import yaml
    from merge_helpers import run_cli_inprocess

    from lrmerge.merge.merge_config import load_merge_config

    ct, sft = eight_layers.model_paths
    out = tmp_path / "swap.yaml"
    code, _, err = run_cli_inprocess(
        ["merge-config", "--method", "layer_swap", "--model", f"ct={ct}", "--model", f"sft={sft}",
         "--task-model", "sft", "--bottom", "2", "--top", "1", "--transition", "1",
         "--head-from", "sft", "--out", out], capsys)
    assert code == 0, err
    assert yaml.safe_load(out.read_text()) == {
        "method": "layer_swap", "models": [{"name": "ct", "path": str(ct)},
                                           {"name": "sft", "path": str(sft)}],
        "task_model": "sft", "bottom": 2, "top": 1, "transition": 1, "head_from": "sft"}
    cfg = load_merge_config(out)
    assert (cfg.bottom, cfg.top, cfg.transition, cfg.embed_from, cfg.head_from) == (
        2, 1, 1, "ct", "sft")
    # what merge would refuse, merge-config refuses, and writes nothing
    code, _, err = run_cli_inprocess(
        ["merge-config", "--method", "layer_swap", "--model", f"ct={ct}", "--model", f"sft={sft}",
         "--task-model", "sft", "--out", tmp_path / "bad.yaml"], capsys)
    assert code == 2 and "keys 'bottom' and 'top' are both 0" in err
    assert not (tmp_path / "bad.yaml").exists()
    # slack: auto with a stats file of per-tensor targets
    stats = tmp_path / "first.json"
    stats.write_text("{}")
    code, _, err = run_cli_inprocess(
        ["merge-config", "--method", "ties_sv", "--base", ct, "--model", f"ct={ct}",
         "--model", f"sft={sft}", "--density", "0.2", "--slack", "auto", "--target-discarded",
         stats, "--protect", "sft", "--out", tmp_path / "auto.yaml"], capsys)
    assert code == 0, err
    auto = load_merge_config(tmp_path / "auto.yaml")
    assert auto.slack_auto and auto.target_discarded == str(stats.resolve())
