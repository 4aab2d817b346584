"""`lrmerge plan --calibrate DIR --pilot-config F`: the paper sweep's cost from a pilot run's
measured figures, on a fake pilot tree written in the workflow's real file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lrmerge.cli import main as cli
from lrmerge.config import load_config
from lrmerge.plan import calibrated_plan, plan

REPO = Path(__file__).resolve().parents[1]
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# The pilot's model (config.json sizes) and what the summaries record for it.
PILOT_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 100,
               "tie_word_embeddings": False}
PILOT_MATMUL = 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 100 * 64
PILOT_PROMPT = 256  # the pilot config's plan.eval_prompt_tokens


@pytest.fixture(scope="module")
def sweep() -> Path:
    """The paper sweep's config: the plan being calibrated."""
    return REPO / "config" / "config.yaml"


@pytest.fixture(scope="module")
def assumed(sweep) -> dict:
    return plan(load_config(sweep))


def pilot_config(tmp_path: Path, run_name: str = "pilot") -> Path:
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    cfg["run_name"] = run_name
    cfg["plan"]["eval_prompt_tokens"] = PILOT_PROMPT
    path = tmp_path / "pilot.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def bench(run: Path, rel: str, *seconds: float) -> None:
    path = run / "benchmarks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{s:.4f}\t0:00:{int(s) % 60:02d}\t328.89\t549.87\t300.08\t308.48\t0.00\t0.01"
                   f"\t43.09\t10.47\n" for s in seconds)
    path.write_text(BENCH_HEADER + rows)


def summary(run: Path, rel: str, *, mfu: float, peak: float | None = 989.0, world: int = 1,
            train_s: float = 100.0, fpt: float = 1e9, device: str = "cuda:0") -> None:
    """A train_summary.json with the keys lrmerge.train.loop writes; tokens_per_s gives `mfu`."""
    folder = run / "models" / rel
    folder.mkdir(parents=True, exist_ok=True)
    tps = mfu * (peak or 0.157) * 1e12 * world / fpt
    doc = {"stage": rel.split("/")[0], "lang": None, "init": None, "resumed_from": None,
           "resumed_own_checkpoint_at_step": None, "attempts": [], "tokens_seen": 1000,
           "tokens_this_run": 1000, "steps": 10, "steps_this_run": 10,
           "target_tokens_this_job": 990, "tokens_per_step": 100, "seq_len": 128,
           "english_ratio": 0.2, "lr_schedule": {}, "final_loss": 3.0, "loss_history": [],
           "data": {}, "save_dtype": "bfloat16", "state_kept": False, "backend": "torch",
           "device": device, "world_size": world, "threads": 2, "wall_time_s": train_s + 5,
           "train_time_s": train_s, "tokens_per_s": round(tps, 1), "flops_per_token": fpt,
           "peak_tflops": peak, "mfu": round(mfu, 6) if peak else None, "peak_mem_gb": 1.0,
           "peak_mem_kind": "device", "config": {}, "disk_gb": 0.001}
    (folder / "train_summary.json").write_text(json.dumps(doc))
    (folder / "config.json").write_text(json.dumps(PILOT_SIZES))


def eval_result(run: Path, model: str, tasks: dict[str, tuple[int, list[str]]],
                device: str = "cuda") -> None:
    """eval/{model}.json as lrmerge.evaluate.run writes it: per task n items and shot sets."""
    entries = {t: {"family": "classification", "language": "bn", "kind": "generated",
                   "source": "generated", "protocol": "loglik", "n_shot": 1 if sets else 0,
                   "shot_sets": sets, "task": t, "metric": "acc", "score": 0.5, "stderr": 0.1,
                   "n": n, "per_set": {k: 0.5 for k in sets} or None, "per_set_stderr": None,
                   "macro_f1": None, "debris": None}
               for t, (n, sets) in tasks.items()}
    path = run / "eval" / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": f"results/pilot/models/{model}", "languages": ["bn"],
                                "tasks": entries, "lm_eval_version": "0.4.13",
                                "model_args": {"pretrained": "x", "dtype": "bfloat16",
                                               "device": device},
                                "config": {}, "wall_time_s": 1.0}))


def model_folder(folder: Path, nbytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"\0" * nbytes)


def merge_job(run: Path, recorded_root: Path, seconds: float, base: str | None = None) -> None:
    """A ties merge of ct/bn/100000 and sft over base (a folder of the run, or the hub id
    `base`), paths recorded under `recorded_root`."""
    out = run / "models" / "merge" / "ties" / "bn" / "100000"
    for rel in ("base", "sft", "ct/bn/100000"):
        if not (run / "models" / rel / "model.safetensors").exists():
            model_folder(run / "models" / rel, 1000)
    model_folder(out, 1000)
    models = recorded_root / "models"
    params = {"method": "ties", "base": base or str(models / "base"),
              "models": [{"name": "ct", "path": str(models / "ct" / "bn" / "100000"),
                          "weight": 1.0},
                         {"name": "sft", "path": str(models / "sft"), "weight": 1.0}]}
    (out / "merge_stats.json").write_text(json.dumps({"method": "ties", "parameters": params}))
    bench(run, "merge/ties/bn/100000.tsv", seconds)


def full_pilot(tmp_path: Path) -> Path:
    """CT (two jobs), SFT, CT-then-SFT, one evaluation, one merge, tokenizing."""
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.1, train_s=100.0)
    summary(run, "ct/bn/200000", mfu=0.3, train_s=100.0, world=2)
    summary(run, "sft", mfu=0.25)
    summary(run, "ct_sft/bn/100000", mfu=0.25)
    bench(run, "evaluate/ct/bn/100000.tsv", 50.0)
    eval_result(run, "ct/bn/100000", {"topic_bn": (100, ["0", "1", "2"]), "mrc_bn": (50, [])})
    merge_job(run, run, 10.0)
    bench(run, "prepare_corpus/bn.tsv", 2.0)
    (run / "data" / "tokens" / "bn").mkdir(parents=True)
    (run / "data" / "tokens" / "bn" / "manifest.json").write_text(json.dumps({"tokens": 1000}))
    return run


def test_measured_mfu_sets_the_training_gpu_hours(tmp_path, sweep, assumed):
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.2)  # half the assumed 0.4
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    ct, was = doc["rules"]["continual_pretrain"], assumed["rules"]["continual_pretrain"]
    assert ct["gpu_hours"] == pytest.approx(2 * was["gpu_hours"], rel=1e-5)
    assert ct["wall_hours"] == pytest.approx(2 * was["wall_hours"], rel=1e-5)
    assert doc["assumed"]["rules"]["continual_pretrain"] == was
    assert doc["total"]["gpu_hours"] == pytest.approx(
        assumed["total"]["gpu_hours"] + was["gpu_hours"], rel=1e-5)
    fig = doc["calibration"]["figures"]["continual_pretrain"]
    assert fig["origin"] == "measured" and fig["value"] == pytest.approx(0.2, rel=1e-5)
    assert fig["files"] == 1 and fig["instead_of"] == {"plan.mfu": 0.4}


def test_mfu_is_weighted_by_gpu_seconds_and_read_from_throughput(tmp_path, sweep, assumed):
    run = full_pilot(tmp_path)
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    # 100 GPU-s at 0.1 and 200 GPU-s (2 GPUs x 100 s) at 0.3
    mfu = (0.1 * 100 + 0.3 * 200) / 300
    fig = doc["calibration"]["figures"]["continual_pretrain"]
    assert fig["value"] == pytest.approx(mfu, rel=1e-5) and fig["files"] == 2
    assert doc["rules"]["continual_pretrain"]["gpu_hours"] == pytest.approx(
        assumed["rules"]["continual_pretrain"]["gpu_hours"] * 0.4 / mfu, rel=1e-5)
    for rule in ("finetune_sft", "ct_then_sft"):
        assert doc["rules"][rule]["gpu_hours"] == pytest.approx(
            assumed["rules"][rule]["gpu_hours"] * 0.4 / 0.25, rel=1e-5)


def test_a_pilot_on_another_gpu_carries_its_mfu_over(tmp_path, sweep, assumed):
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.2, peak=312.0)  # an A100
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    assert doc["rules"]["continual_pretrain"]["gpu_hours"] == pytest.approx(
        2 * assumed["rules"]["continual_pretrain"]["gpu_hours"], rel=1e-5)
    notes = " ".join(doc["calibration"]["notes"])
    assert "312 TFLOPS" in notes and "H100 at 989" in notes


def test_evaluation_time_is_scaled_to_the_sweep(tmp_path, sweep, assumed):
    run = full_pilot(tmp_path)
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    fig = doc["calibration"]["figures"]["evaluate"]
    per_item = 50.0 / (100 * 3 + 50)  # three shot sets of 100 items, a zero-shot task of 50
    assert fig["pilot_value"] == pytest.approx(per_item)
    sweep_mm = doc["model"]["matmul_params"]
    scaled = per_item * (sweep_mm / PILOT_MATMUL) * (1024 / PILOT_PROMPT) * (989 / 989)
    assert fig["value"] == pytest.approx(scaled, rel=1e-9)
    ev = doc["rules"]["evaluate"]
    assert ev["items"] == assumed["rules"]["evaluate"]["items"]
    assert ev["gpu_hours"] == pytest.approx(ev["items"] * scaled / 3600, rel=1e-9)
    assert "matmul parameters" in fig["scaling"] and "plan.eval_prompt_tokens" in fig["scaling"]
    # lm-eval's own 1 s of the job's 50: the rest is start-up, scaled with it, and said
    assert any("ran 2% of the jobs' benchmark time" in n for n in doc["calibration"]["notes"])


def test_merge_and_tokenizing_rates_are_measured(tmp_path, sweep, assumed):
    run = full_pilot(tmp_path)
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    figs = doc["calibration"]["figures"]
    assert figs["merge"]["value"] == pytest.approx(4000 / 10.0)  # base, ct, sft and the result
    assert doc["rules"]["merge"]["wall_hours"] == pytest.approx(
        assumed["rules"]["merge"]["wall_hours"] * 1e9 / 400, rel=1e-9)
    assert figs["prepare_corpus"]["value"] == pytest.approx(500.0)
    assert doc["rules"]["prepare_corpus"]["wall_hours"] == pytest.approx(
        assumed["rules"]["prepare_corpus"]["wall_hours"] * 1e6 / 500, rel=1e-9)
    assert figs["prepare_sft_data"]["origin"] == "assumed"


def test_a_pilot_copied_from_elsewhere_still_finds_its_merge_inputs(tmp_path, sweep):
    run = tmp_path / "results" / "pilot"
    merge_job(run, Path("/cluster/scratch/work/results/pilot"), 4.0)
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    assert doc["calibration"]["figures"]["merge"]["value"] == pytest.approx(1000.0)


def test_a_hub_base_is_read_from_the_local_cache_only(tmp_path, sweep, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--base" / "snapshots" / "abc123"
    model_folder(snapshot, 3000)
    (cache / "models--org--base" / "refs").mkdir()
    (cache / "models--org--base" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    run = tmp_path / "results" / "pilot"
    merge_job(run, run, 6.0, base="org/base")
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    assert doc["calibration"]["figures"]["merge"]["value"] == pytest.approx(6000 / 6.0)
    # not cached here: the merge is left out, named, and the rule stays assumed
    merge_job(run, run, 6.0, base="org/uncached")
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    assert doc["calibration"]["figures"]["merge"]["origin"] == "assumed"
    assert "org/uncached" in doc["calibration"]["figures"]["merge"]["why"]


def test_a_partial_pilot_says_which_rules_stay_assumed(tmp_path, sweep, assumed, capsys):
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.2)
    assert cli(["plan", "--config", str(sweep), "--calibrate", str(run),
                "--pilot-config", str(pilot_config(tmp_path)), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    figs = doc["calibration"]["figures"]
    assert {r for r, f in figs.items() if f["origin"] == "measured"} == {"continual_pretrain"}
    assert figs["finetune_sft"] == {"origin": "assumed", "keys": {"plan.mfu": 0.4},
                                    "why": "no models/sft/train_summary.json"}
    assert figs["merge"]["keys"] == {"plan.merge_gb_per_s": 1.0}
    assert figs["evaluate"]["why"] == "no benchmarks/evaluate/**/*.tsv"
    for rule in ("finetune_sft", "ct_then_sft", "merge", "evaluate"):
        assert doc["rules"][rule] == doc["assumed"]["rules"][rule] == {
            **assumed["rules"][rule], "basis": "assumed"}
    assert doc["rules"]["continual_pretrain"]["basis"] == "measured"


def test_the_table_labels_each_rule_and_figure(tmp_path, sweep, capsys):
    run = full_pilot(tmp_path)
    assert cli(["plan", "--config", str(sweep), "--calibrate", str(run),
                "--pilot-config", str(pilot_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    table, footer = out.split("figures:\n")
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.split()}
    assert rows["RULE"][-1] == "BASIS"
    assert rows["continual_pretrain"][-1] == "measured"
    assert rows["prepare_sft_data"][-1] == "assumed"
    figures = footer.splitlines()
    ct = next(line for line in figures if line.split()[0] == "continual_pretrain")
    assert "measured from 2 files" in ct and "models/ct/*/*/train_summary.json" in ct
    assert "instead of plan.mfu 0.4" in ct
    sft_data = next(line for line in figures if line.split()[0] == "prepare_sft_data")
    assert "assumed from plan.tokenize_tokens_per_s" in sft_data
    assert "evaluate scaling:" in out


def test_summaries_without_a_peak_keep_the_assumption(tmp_path, sweep):
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.2, peak=None, device="cpu")
    bench(run, "evaluate/ct/bn/100000.tsv", 5.0)
    eval_result(run, "ct/bn/100000", {"topic_bn": (10, [])}, device="cpu")
    doc = calibrated_plan(load_config(sweep), run, pilot_config(tmp_path))
    figs = doc["calibration"]["figures"]
    assert figs["continual_pretrain"]["origin"] == "assumed"
    assert "peak_tflops" in figs["continual_pretrain"]["why"]
    # the evaluation was measured, but nothing says how fast the pilot's device is
    assert figs["evaluate"]["origin"] == "assumed"
    assert "0.5 s an item" in figs["evaluate"]["why"]


def test_an_empty_pilot_is_an_error_naming_what_was_looked_for(tmp_path, sweep, capsys):
    run = tmp_path / "results" / "pilot"
    run.mkdir(parents=True)
    assert cli(["plan", "--config", str(sweep), "--calibrate", str(run),
                "--pilot-config", str(pilot_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "no pilot measurements" in err
    assert "models/ct/*/*/train_summary.json" in err and "benchmarks/merge/**/*.tsv" in err


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("other_run", "run_name 'other'"),
    ("no_pilot_config", "go together"),
    ("bad_benchmark", "evaluate/ct/bn/100000.tsv: not a Snakemake benchmark file"),
    ("bad_summary", "train_summary.json: no key 'tokens_per_s'"),
])
def test_bad_input_is_named(tmp_path, sweep, capsys, case, message):
    run = tmp_path / "results" / "pilot"
    summary(run, "ct/bn/100000", mfu=0.2)
    config = pilot_config(tmp_path, "other" if case == "other_run" else "pilot")
    args = ["plan", "--config", str(sweep), "--calibrate", str(run)]
    if case == "missing":
        args[-1] = str(tmp_path / "results" / "nowhere")
    if case == "bad_benchmark":
        eval_result(run, "ct/bn/100000", {"topic_bn": (10, [])})
        path = run / "benchmarks" / "evaluate" / "ct" / "bn" / "100000.tsv"
        path.parent.mkdir(parents=True)
        path.write_text("seconds\n12\n")
    if case == "bad_summary":
        path = run / "models" / "ct" / "bn" / "100000" / "train_summary.json"
        doc = json.loads(path.read_text())
        del doc["tokens_per_s"]
        path.write_text(json.dumps(doc))
    if case != "no_pilot_config":
        args += ["--pilot-config", str(config)]
    assert cli(args) == 2
    assert message in capsys.readouterr().err
