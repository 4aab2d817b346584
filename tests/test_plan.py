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
    # 30.3B tokens x 42.9 GFLOP / (989 TFLOPS x 0.40): ~910 H100-hours of training
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


def test_one_job_of_each_kind_by_hand(tmp_path):
    """A one-language mini on a local base of known sizes, on CPU: each rule's jobs counted by
    hand. A merge reads its CT model, SFT-flan and, where the method takes task vectors against
    it, the base (layer_swap reads none), and writes one model."""
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "vocab_size": 100, "tie_word_embeddings": True}))
    params = 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 100 * 64  # tied: one matrix

    def small(cfg):
        cfg["base_model"] = str(folder)
        cfg["languages"] = {"bn": cfg["languages"]["bn"] | {"budgets": [1000, 3000]}}
        cfg["merge"] = {"methods": {"layer_swap": {"bottom": 1}, "ties": {"density": 0.5}}}
        cfg["continual_pretrain"]["seq_len"] = 32
        cfg["plan"].update(peak_tflops=1.0, mfu=0.5, merge_gb_per_s=1.0)

    path = tmp_path / "mini.yaml"
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    small(cfg)
    path.write_text(yaml.safe_dump(cfg))
    rules = plan(load_config(path))["rules"]
    assert "pretrain_base" not in rules  # the base is given
    ct = rules["continual_pretrain"]
    assert (ct["jobs"], ct["tokens"], ct["gpus_per_job"]) == (2, 3000, 0)  # 1000, then 2000 more
    flops_per_token = 6 * params + 12 * 2 * 64 * 32  # matmuls, and attention at seq_len 32
    assert ct["wall_hours"] * 3600 == pytest.approx(3000 * flops_per_token / 0.5e12)
    merge = rules["merge"]
    assert merge["jobs"] == 4  # two methods x two budgets
    moved = 2 * ((2 + 1) + (3 + 1)) * 2 * params  # layer_swap: ct, sft; ties: and the base
    assert merge["wall_hours"] * 3600 == pytest.approx(moved / 1e9)
    assert merge["disk_gb"] * 1e9 == pytest.approx(4 * 2 * params)
    assert rules["evaluate"]["jobs"] == 2 + 2 + 2 + 4  # base, sft, ct, ct_sft, merges
    assert rules["ct_then_sft"]["jobs"] == 2 and rules["prepare_corpus"]["jobs"] == 2


# ----------------------------------------------------------------------------------------------
# What each corpus must hold


def test_each_budget_reads_whole_blocks_of_target_and_english(tmp_path, capsys):
    """The paper config: a budget B reads ceil(B / 2048) blocks, a fifth of them English (4:1),
    counted from the start of the chain; the need is the largest budget's target tokens, what
    the data stage prepares the need x 1.05 rounded up; English the most any replay reads."""
    assert cli(["plan", "--config", str(_config(tmp_path)), "--format", "json"]) == 0
    ct_data = json.loads(capsys.readouterr().out)["ct_data"]
    assert ct_data["budget_unit"] == "CT tokens (target + English)"
    assert ct_data["data_margin"] == 1.05
    corpora = {e["corpus"]: e for e in ct_data["corpora"]}
    assert set(corpora) == {"bo", "ug", "mn", "ta", "te", "or", "bn", "en"}
    assert list(corpora)[-1] == "en"
    # by hand: 1B = 488,281.25 blocks -> 488,282, of which floor(488,282 / 5) = 97,656 English
    assert corpora["bo"]["budgets"][0] == {"budget": 1_000_000_000,
                                           "target_tokens": 390_626 * 2048,
                                           "english_tokens": 97_656 * 2048}
    # 8B = 3,906,250 blocks exactly: 781,250 English
    assert corpora["ta"]["budgets"][-1] == {"budget": 8_000_000_000,
                                            "target_tokens": 3_125_000 * 2048,
                                            "english_tokens": 781_250 * 2048}
    cfg = load_config(_config(tmp_path))
    for lang, facts in cfg["languages"].items():
        entry = corpora[lang]
        assert [b["budget"] for b in entry["budgets"]] == facts["budgets"]  # every budget
        for b in entry["budgets"]:
            read = b["target_tokens"] + b["english_tokens"]
            assert read % 2048 == 0 and b["budget"] <= read < b["budget"] + 2048
            assert b["english_tokens"] == (read // 2048) // 5 * 2048
        assert entry["need"] == entry["budgets"][-1]["target_tokens"]
        assert entry["prepared"] == -(-entry["need"] * 105 // 100)
    assert corpora["bo"]["prepared"] == 1_680_002_151  # 1,600,002,048 x 1.05, rounded up
    en = corpora["en"]
    assert en["need"] == 1_600_000_000 == corpora["ta"]["budgets"][-1]["english_tokens"]
    assert en["readers"]["continual_pretrain.ug"] == corpora["ug"]["budgets"][-1][
        "english_tokens"]
    assert en["prepared"] == 1_680_000_000
    # the data stage's tokenizing is costed at what it prepares
    prepare = plan(cfg)["rules"]["prepare_corpus"]
    assert prepare["tokens"] == sum(e["prepared"] for e in corpora.values())


def test_the_plan_table_prints_the_corpora(capsys):
    assert cli(["plan", "--config", str(REPO / "config" / "config.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CT data:"))
    assert "budgets in CT tokens (target + English)" in lines[start]
    assert lines[start + 1].split() == ["CORPUS", "BUDGET", "TARGET", "ENGLISH"]
    assert lines[start + 2].split() == ["bo", "1,000,000,000", "800,002,048", "199,999,488"]
    assert lines[start + 3].split() == ["2,000,000,000", "1,600,002,048", "399,998,976"]
    need = next(i for i, line in enumerate(lines) if line.startswith("CORPUS") and "NEED" in line)
    assert "data_margin 1.05" in lines[need]
    rows = {line.split()[0]: line.split() for line in lines[need + 1:need + 9]}
    assert rows["bo"][1:3] == ["1,600,002,048", "1,680,002,151"]
    assert rows["te"][1:3] == ["3,200,000,000", "3,360,000,000"]
    assert rows["en"][1:3] == ["1,600,000,000", "1,680,000,000"]
    assert lines[need + 8].endswith("(continual_pretrain.ta, continual_pretrain.bn)")


def test_a_small_chain_and_a_capped_corpus_by_hand(tmp_path, capsys):
    """seq_len 32, English 1 in 4: 1,000 tokens = 32 blocks (8 English), 3,000 = 94 (23); a
    corpus capped below its need is named, since the data stage would fail on it."""
    def small(cfg):
        cfg["languages"] = {"bn": cfg["languages"]["bn"] | {"budgets": [1000, 3000]},
                            "bo": cfg["languages"]["bo"] | {"budgets": [2000]}}
        cfg["languages"]["bo"]["corpus"] = dict(cfg["languages"]["bo"]["corpus"], max_tokens=1000)
        cfg["merge"]["multi"] = []
        cfg["continual_pretrain"].update(seq_len=32, english_ratio=0.25, data_margin=1.1)

    path = tmp_path / "mini.yaml"
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    small(cfg)
    path.write_text(yaml.safe_dump(cfg))
    corpora = {e["corpus"]: e for e in plan(load_config(path))["ct_data"]["corpora"]}
    assert corpora["bn"]["budgets"] == [
        {"budget": 1000, "target_tokens": 24 * 32, "english_tokens": 8 * 32},
        {"budget": 3000, "target_tokens": 71 * 32, "english_tokens": 23 * 32}]
    assert corpora["bn"]["need"] == 2272 and corpora["bn"]["prepared"] == 2500  # 2,499.2 up
    # bo: 2,000 = 63 blocks (15 English): 1,536 target tokens, capped at 1,000
    assert corpora["bo"]["need"] == 48 * 32 and corpora["bo"]["prepared"] == 1000
    # the mini's English: its pre-training reads more than either replay
    en = corpora["en"]
    pt = cfg["pretrain"]
    assert en["readers"]["pretrain"] == pt["steps"] * pt["batch_size"] * pt["seq_len"]
    assert en["readers"]["continual_pretrain.bn"] == 23 * 32
    assert en["need"] == max(en["readers"].values())
    assert cli(["plan", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "max_tokens 1,000 is below the need: the data stage fails unless allow_repeat" in out
    assert "English replay: the most any reader takes (pretrain)" in out
