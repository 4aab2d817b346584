"""`lrmerge plan`: the sweep's cost from the config alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lrmerge.cli import main as cli
from lrmerge.config import load_config
from lrmerge.plan import plan

REPO = Path(__file__).resolve().parents[1]
TRAINING = ("continual_pretrain", "finetune_sft", "ct_then_sft")


def _config(tmp_path, edit=None) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if edit:
        edit(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _training_hours(doc):
    return sum(doc["rules"][r]["gpu_hours"] for r in TRAINING)


def test_paper_sweep_costs_what_the_arithmetic_says(tmp_path, capsys):
    assert cli(["plan", "--config", str(_config(tmp_path)), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = doc["model"]
    assert m["params"] == 6_738_415_616  # Llama-2-7b
    assert m["ct_flops_per_token"] == pytest.approx(42.9e9, rel=1e-3)
    rules = doc["rules"]
    # CT: each language's chain to its largest budget, each budget only its increment
    cfg = load_config(_config(tmp_path))
    ct_tokens = sum(max(f["budgets"]) for f in cfg["languages"].values())
    assert rules["continual_pretrain"]["tokens"] == ct_tokens == 25_000_000_000
    assert rules["continual_pretrain"]["jobs"] == 22 and rules["ct_then_sft"]["jobs"] == 22
    sft_tokens = 884 * 128 * 2048
    assert rules["ct_then_sft"]["tokens"] == 22 * sft_tokens
    assert doc["total"]["train_tokens"] == pytest.approx(30.3e9, rel=0.01)
    # tokens x FLOPs / (989 TFLOPS x 0.40), in GPU-hours: ~910 H100-hours of training
    expected = doc["total"]["train_tokens"] * m["ct_flops_per_token"] / (989e12 * 0.4) / 3600
    assert _training_hours(doc) == pytest.approx(expected, rel=1e-6)
    assert 900 < _training_hours(doc) < 1000
    # an 8-GPU job's wall time is its GPU-hours over 8
    ct = rules["continual_pretrain"]
    assert ct["gpus_per_job"] == 8 and ct["wall_hours"] == pytest.approx(ct["gpu_hours"] / 8)
    assert rules["merge"]["jobs"] == 111 and rules["evaluate"]["jobs"] == 157
    assert doc["total"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in rules.values()))


def test_the_gpu_and_mfu_change_the_plan(tmp_path):
    base = plan(load_config(_config(tmp_path)))

    def a100(cfg):
        cfg["plan"].update(gpu="A100", peak_tflops=312, mfu=0.2)

    slow = plan(load_config(_config(tmp_path, a100)))
    assert _training_hours(slow) == pytest.approx(_training_hours(base) * (989 / 312) * 2)
    assert slow["rules"]["merge"] == base["rules"]["merge"]  # CPU jobs do not change


def test_a_local_base_model_is_sized_from_its_config_json(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "vocab_size": 100, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(sizes))

    def local(cfg):
        cfg["base_model"] = str(folder)
        cfg["plan"]["model"] = None

    doc = plan(load_config(_config(tmp_path, local)))
    assert doc["model"]["source"] == str(folder / "config.json")
    per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert doc["model"]["matmul_params"] == 2 * per_layer + 64 + 100 * 64
    assert doc["model"]["params"] == doc["model"]["matmul_params"]  # tied: one embedding matrix


def test_a_hub_base_without_sizes_is_named(tmp_path, capsys):
    def no_sizes(cfg):
        cfg["plan"]["model"] = None

    assert cli(["plan", "--config", str(_config(tmp_path, no_sizes))]) == 2
    assert "plan.model" in capsys.readouterr().err


def test_mini_plan_table(capsys):
    assert cli(["plan", "--config", str(REPO / "config" / "mini.yaml")]) == 0
    out = capsys.readouterr().out
    assert "pretrain_base" in out and "CPU (2 cores)" in out
    assert out.splitlines()[1].split() == ["RULE", "JOBS", "GPUS/JOB", "GPU-HOURS", "WALL/JOB",
                                           "DISK", "GB"]
