"""`lrmerge plan` with extended vocabularies (issue 17): extend_tokenizer jobs and the variants'
models counted as `snakemake -n` counts them, an extended model's K more rows in its FLOPs and
bytes (by hand), and the same-characters figures from fixture manifests, a vocab_extension.json
record and config values; unknown stays unknown."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrmerge.cli import main as cli
from lrmerge.config import load_config
from lrmerge.plan import plan
from lrmerge.plan.vocab import UNKNOWN

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
H100 = 989e12 * 0.4  # the paper config's achieved FLOP/s per GPU
# Llama-2-7b (config.yaml's plan.model): matmul parameters, and FLOPs of a CT token at 2048
LLAMA_MM = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096 + 32000 * 4096
ATTENTION = 12 * 32 * 4096 * 2048
PLAN_RULES = ("extend_tokenizer", "prepare_corpus", "prepare_sft_data", "pretrain_base",
              "continual_pretrain", "finetune_sft", "ct_then_sft", "merge", "evaluate")


def _write(tmp_path: Path, preset: str, edit=None, name="c.yaml") -> Path:
    cfg = yaml.safe_load((REPO / "config" / preset).read_text())
    if edit:
        edit(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return path


def _te_variant(cfg, **extra):
    cfg["languages"]["te-v16k"] = {"based_on": "te", "name": "Telugu +16k",
                                   "tokenizer": {"extend": 16000}, **extra}


def _target(budget: int, seq: int = 2048) -> int:
    """Target tokens of a CT budget at 4:1, whole blocks (by hand)."""
    blocks = math.ceil(budget / seq)
    return (blocks - math.floor(blocks / 5)) * seq


def _dry_run_counts(config: Path, workdir: Path) -> dict[str, int]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([str(BIN / "snakemake"), "-n", "-s", str(REPO / "Snakefile"), "-d",
                             str(workdir), "--configfile", str(config), "--quiet", "rules"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = (result.stdout + result.stderr).split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for line in table.splitlines()
            if (m := re.match(r"^(\w+)\s+(\d+)$", line.strip()))}


@pytest.mark.parametrize("preset,edit", [("mini.yaml", None), ("config.yaml", _te_variant)],
                         ids=["mini-bo-v90", "paper-te-v16k"])
def test_job_counts_match_the_dry_run(tmp_path, preset, edit):
    """Every rule the plan costs has the jobs `snakemake -n` plans, extend_tokenizer and the
    variant's CT, CT-SFT, merges and evaluations included."""
    config = _write(tmp_path, preset, edit)
    counts = _dry_run_counts(config, tmp_path)
    rules = plan(load_config(config), results=tmp_path / "none")["rules"]
    assert counts["extend_tokenizer"] == 1
    assert {r: rules[r]["jobs"] for r in rules} == {r: counts[r] for r in PLAN_RULES
                                                     if r in counts}


@pytest.mark.parametrize("tied", [True, False])
def test_one_extended_job_of_each_kind_by_hand(tmp_path, tied):
    """bn and its variant bn-v10 (+10 tokens) on a local base of known sizes: the variant's CT
    and CT-SFT train K more output rows (6 x K x hidden FLOPs a token, tied or not), its models
    weigh K (tied) or 2K (untied) rows more, its merges read and write them, its evaluations
    multiply them; extend_tokenizer reads its sample at plan.extend_chars_per_s."""
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "vocab_size": 100, "tie_word_embeddings": tied}))
    mm = 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 100 * 64
    params = mm + (0 if tied else 100 * 64)
    k = 10
    mm_ext, params_ext = mm + k * 64, params + (1 if tied else 2) * k * 64

    def small(cfg):
        cfg["base_model"] = str(folder)
        cfg["languages"] = {"bn": cfg["languages"]["bn"] | {"budgets": [1000, 3000]},
                            "bn-v10": {"based_on": "bn", "name": "Bengali +10",
                                       "tokenizer": {"extend": k, "sample_chars": 5000},
                                       "budgets": [2000]}}
        cfg["merge"] = {"methods": {"ties": {"density": 0.5}}}
        cfg["continual_pretrain"]["seq_len"] = 32
        cfg["sft"]["seq_len"] = 32
        cfg["plan"].update(peak_tflops=1.0, mfu=0.5, merge_gb_per_s=1.0, extend_chars_per_s=100.0)

    rules = plan(load_config(_write(tmp_path, "mini.yaml", small)), results=tmp_path)["rules"]
    ext = rules["extend_tokenizer"]
    assert (ext["jobs"], ext["gpus_per_job"]) == (1, 0)
    assert ext["wall_hours"] * 3600 == pytest.approx(5000 / 100.0)
    attention = 12 * 2 * 64 * 32
    ct = rules["continual_pretrain"]
    assert (ct["jobs"], ct["tokens"]) == (3, 3000 + 2000)
    seconds = (3000 * (6 * mm + attention) + 2000 * (6 * mm_ext + attention)) / 0.5e12
    assert ct["wall_hours"] * 3600 == pytest.approx(seconds)
    assert ct["disk_gb"] * 1e9 == pytest.approx(4 * (2 * params + params_ext))  # float32
    # optimizer state between budgets: bn only (bn-v10 has one budget)
    assert ct["transient_gb"] * 1e9 == pytest.approx(12 * params)
    sft_tokens = 100 * 16 * 32
    ct_sft = rules["ct_then_sft"]
    assert ct_sft["jobs"] == 3
    seconds = sft_tokens * (2 * (6 * mm + attention) + (6 * mm_ext + attention)) / 0.5e12
    assert ct_sft["wall_hours"] * 3600 == pytest.approx(seconds)
    merge = rules["merge"]
    assert merge["jobs"] == 3  # one method x three CT models
    # ties reads CT, SFT-flan and the base, and writes one model (bf16)
    moved = 2 * (params + 2 * params + params) + (params_ext + 2 * params + params_ext)
    assert merge["wall_hours"] * 3600 == pytest.approx(2 * moved / 1e9)
    assert merge["disk_gb"] * 1e9 == pytest.approx(2 * (2 * params + params_ext))
    assert rules["evaluate"]["jobs"] == 2 + 3 + 3 + 3
    # tokens: the Bengali corpus, its variant's and English (2 bytes a token below 65,536)
    assert rules["prepare_corpus"]["jobs"] == 3
    assert rules["prepare_corpus"]["disk_gb"] * 1e9 == pytest.approx(
        2 * rules["prepare_corpus"]["tokens"], abs=8)


def test_evaluation_counts_the_extended_rows(tmp_path):
    """The same sweep with and without a variant's extension: its evaluations cost its larger
    head, each of its models the same items as its base language's."""
    def grow(k):
        def edit(cfg):
            _te_variant(cfg)
            cfg["languages"]["te-v16k"]["tokenizer"]["extend"] = k
        return edit

    small = plan(load_config(_write(tmp_path, "config.yaml", grow(1), "a.yaml")), results=tmp_path)
    big = plan(load_config(_write(tmp_path, "config.yaml", grow(16001), "b.yaml")),
               results=tmp_path)
    assert small["rules"]["evaluate"]["items"] == big["rules"]["evaluate"]["items"]
    extra = big["rules"]["evaluate"]["gpu_hours"] - small["rules"]["evaluate"]["gpu_hours"]
    # te-v16k's models: 3 CT + 3 CT-SFT + 3 budgets x 5 merge variants, each on te's and en's
    # items x shot sets, each item 1,024 prompt tokens x 2 x 16,000 x 4096 more FLOPs
    from lrmerge.plan.cost import _eval_items

    items = _eval_items(load_config(tmp_path / "a.yaml"))
    per_model = (items["te"][0] + items["en"][0]) * 1024 * 2 * 16000 * 4096 / H100 / 3600
    assert extra == pytest.approx((3 + 3 + 3 * 5) * per_model, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# The same characters


def _manifest(results: Path, corpus: str, characters, tokens: int) -> None:
    folder = results / "data" / "tokens" / corpus
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": 1, "tokens": tokens, "dtype": "uint16", "documents": 10}
    if characters is not None:
        doc.update(characters=characters, bytes=characters * 2,
                   characters_per_token=round(characters / tokens, 6))
    (folder / "manifest.json").write_text(json.dumps(doc))


def _record(results: Path, lang: str, characters: int, base: int, extended: int) -> None:
    folder = results / "data" / "tokenizers" / lang
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab_extension.json").write_text(json.dumps({
        "added": 16000, "corpus": {"documents": 5, "characters": characters, "bytes": 3 * characters,
                                   "tokens_base": base, "tokens_extended": extended}}))


def _entry(doc: dict, lang: str) -> dict:
    return next(e for e in doc["vocabulary"] if e["lang"] == lang)


def _check_same_characters(entry: dict, base_cpt: float, ext_cpt: float) -> None:
    """Against a hand computation: te's budgets 1B, 2B, 4B; te-v16k's model 16,000 x 4096
    more output rows."""
    ext_fpt = 6 * (LLAMA_MM + 16000 * 4096) + ATTENTION
    base_fpt = 6 * LLAMA_MM + ATTENTION
    assert entry["ct_flops_per_token"] == ext_fpt
    assert [b["tokens"] for b in entry["reference_budgets"]] == [10**9, 2 * 10**9, 4 * 10**9]
    for b in entry["reference_budgets"]:
        assert b["characters"] == pytest.approx(_target(b["tokens"]) * base_cpt)
        assert b["device_hours"] == pytest.approx(b["tokens"] * base_fpt / H100 / 3600)
        same = b["tokens"] * base_cpt / ext_cpt
        assert b["same_characters"]["tokens"] == pytest.approx(same)
        assert b["same_characters"]["device_hours"] == pytest.approx(same * ext_fpt / H100 / 3600)
    for b in entry["budgets"]:
        assert b["characters"] == pytest.approx(_target(b["tokens"]) * ext_cpt)


def test_same_characters_from_the_manifests(tmp_path, capsys):
    results = tmp_path / "results" / "paper"
    _manifest(results, "te", 4_000_000, 10_000_000)  # 0.4 a token
    _manifest(results, "te-v16k", 3_000_000, 2_500_000)  # 1.2 a token
    _record(results, "te-v16k", 1000, 900, 100)  # the manifests come first
    config = _write(tmp_path, "config.yaml", lambda c: (_te_variant(c), c["plan"].update(
        characters_per_token={"te": 0.3, "te-v16k": 2.0})))
    doc = plan(load_config(config), results=results)
    entry = _entry(doc, "te-v16k")
    _check_same_characters(entry, 0.4, 1.2)
    assert entry["reference"] == "te"
    assert entry["characters_per_token"]["base"]["source"] == (
        f"measured: {results / 'data/tokens/te/manifest.json'}")
    # 1B te tokens = 0.32B characters: 1/3 of the tokens under te-v16k
    assert entry["reference_budgets"][0]["same_characters"]["tokens"] == pytest.approx(1e9 / 3)
    assert cli(["plan", "--config", str(config), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "characters per token: base tokenizer 0.400 (measured: " in out
    assert re.search(r"te\s+1B tokens\s+320M characters\s+30\.1 h  -> te-v16k for the same "
                     r"characters: 333M tokens, 10\.1 h", out), out


def test_same_characters_from_the_extension_record(tmp_path):
    """No manifests (or one without characters, prepared before they were counted): the
    extended tokenizer's record of the sample it learned from, both figures from it."""
    results = tmp_path / "r"
    _manifest(results, "te", None, 10_000_000)
    _record(results, "te-v16k", 1_000_000, 2_500_000, 1_000_000)  # 0.4 -> 1.0
    doc = plan(load_config(_write(tmp_path, "config.yaml", _te_variant)), results=results)
    entry = _entry(doc, "te-v16k")
    _check_same_characters(entry, 0.4, 1.0)
    assert all("vocab_extension.json" in c["source"]
               for c in entry["characters_per_token"].values())


def test_same_characters_from_config_values(tmp_path, capsys):
    """Nothing prepared yet: plan.characters_per_token, te under the base tokenizer (Llama-2's
    0.40) and te-v16k under its own."""
    def edit(cfg):
        _te_variant(cfg)
        cfg["plan"]["characters_per_token"] = {"te": 0.40, "te-v16k": 1.6, "bn": 0.77}

    config = _write(tmp_path, "config.yaml", edit)
    doc = plan(load_config(config), results=tmp_path / "none")
    entry = _entry(doc, "te-v16k")
    _check_same_characters(entry, 0.40, 1.6)
    assert entry["characters_per_token"]["extended"]["source"] == (
        "plan.characters_per_token.te-v16k")
    assert [e["lang"] for e in doc["vocabulary"]] == ["te-v16k"]  # bn extends nothing


def test_unknown_stays_unknown(tmp_path, capsys):
    """Only the base figure known: the characters te's budgets buy are given, the extended
    side and the same-characters tokens are not, and nothing stands in for them."""
    def edit(cfg):
        _te_variant(cfg)
        cfg["plan"]["characters_per_token"] = {"te": 0.40}

    config = _write(tmp_path, "config.yaml", edit)
    assert cli(["plan", "--config", str(config), "--results", str(tmp_path / "none"),
                "--format", "json"]) == 0
    entry = _entry(json.loads(capsys.readouterr().out), "te-v16k")
    assert entry["characters_per_token"]["extended"] == {"value": None, "source": UNKNOWN}
    assert entry["ratio"] is None
    assert all(b["characters"] is None for b in entry["budgets"])
    assert all(b["same_characters"] == {"tokens": None, "device_hours": None}
               for b in entry["reference_budgets"])
    assert entry["reference_budgets"][0]["characters"] == pytest.approx(_target(10**9) * 0.4)
    assert cli(["plan", "--config", str(config), "--results", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert f"te-v16k ? ({UNKNOWN})" in out and "same characters: ?" in out


def test_an_extended_language_without_an_original(tmp_path):
    """te itself extended (no variant): its own budgets under the base tokenizer are the
    reference; plan.characters_per_token.te is the base tokenizer's figure, so the extended one
    stays unknown until the record is there."""
    def edit(cfg):
        cfg["languages"]["te"]["tokenizer"] = {"extend": 16000}
        cfg["plan"]["characters_per_token"] = {"te": 0.40}

    cfg = load_config(_write(tmp_path, "config.yaml", edit))
    entry = _entry(plan(cfg, results=tmp_path / "none"), "te")
    assert entry["reference"] == "te (base tokenizer)"
    assert entry["characters_per_token"]["base"]["value"] == 0.40
    assert entry["ratio"] is None
    results = tmp_path / "r"
    _manifest(results, "te", 2_000_000, 2_000_000)  # te's own (extended) corpus: not the base's
    _record(results, "te", 1_000_000, 2_500_000, 1_000_000)
    entry = _entry(plan(cfg, results=results), "te")
    _check_same_characters(entry, 0.4, 1.0)
