"""The Snakemake workflow: dry runs of both presets, config errors at start, and (slow) a tiny
variant of the mini preset end to end."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lrmerge.config import expand_variants

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def snakemake(*args, cwd=REPO, timeout=120, env=None):
    return subprocess.run(
        [SNAKEMAKE, *map(str, args)],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The job-stats table of a dry run."""
    table = output.split("Job stats:")[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def expected_counts(config: dict, built_base: bool) -> dict[str, int]:
    langs = expand_variants(copy.deepcopy(config))["languages"]
    vocab_variants = [lg for lg, f in langs.items() if "based_on" in f]
    ct = sum(len(f["budgets"]) for f in langs.values())
    variants = sum(len(s.get("weights", [[1, 1]])) for s in config["merge"]["methods"].values())
    multi = 0
    for entry in config["merge"]["multi"]:
        common = set.intersection(*(set(langs[lg]["budgets"]) for lg in entry["languages"]))
        tokens = entry.get("tokens", "max")
        multi += 1 if tokens == "max" else len(common) if tokens == "all" else len(tokens)
    merges = variants * ct + multi
    counts = {
        "prepare_corpus": len(langs) + 1,
        "build_tasks": len(langs) - len(vocab_variants) + 1,  # a variant uses its base's tasks
        "prepare_sft_data": 1,
        "continual_pretrain": ct,
        "finetune_sft": 1,
        "ct_then_sft": ct,
        "merge": merges,
        "evaluate": 2 + 2 * ct + merges,
        "aggregate": 1,
        "plot": 1,
        "all": 1,
        "total": 0,
    }
    extended = sum(1 for f in langs.values() if "tokenizer" in f)
    if extended:
        counts["extend_tokenizer"] = extended
    if built_base:
        counts["pretrain_base"] = 1
        counts["train_tokenizer"] = 1
    counts["total"] = sum(counts.values())
    return counts


def write_config(tmp_path: Path, mutate=None, name="config.yaml") -> Path:
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    if mutate:
        mutate(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def test_paper_sweep_plans_on_slurm_profile():
    # how fast it plans is a measurement (README), not a test: this machine is shared and noisy
    result = snakemake("-n", "--profile", "profiles/slurm", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert job_counts(result.stdout + result.stderr) == expected_counts(config, built_base=False)


def _resources(dry_run: str, rule: str) -> set[str]:
    """The resources lines a dry run (-n -p) prints for the jobs of `rule`."""
    found = set()
    for block in dry_run.split("\n\n"):
        if re.search(rf"^(local)?rule {rule}:", block.strip(), re.M):
            found |= set(re.findall(r"resources: (.*)", block))
    return found


def test_a_labs_own_slurm_profile_works_as_it_is(tmp_path):
    """`snakemake --profile slurm` with the user's global profile (executor, account, partition,
    jobs only): the sweep plans with the workflow's own per-rule resources."""
    home = tmp_path / "config"
    (home / "snakemake" / "slurm").mkdir(parents=True)
    (home / "snakemake" / "slurm" / "config.yaml").write_text(
        "executor: slurm\njobs: 50\ndefault-resources:\n  slurm_account: lab\n"
        "  slurm_partition: gpu\n")
    result = snakemake("-n", "-p", "--profile", "slurm", env={"XDG_CONFIG_HOME": str(home)},
                       timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert job_counts(out) == expected_counts(config, built_base=False)
    (ct,) = _resources(out, "continual_pretrain")
    assert "gpu=8" in ct and "cpus_per_task=64" in ct and "slurm_extra=--signal=USR1@600" in ct
    assert "slurm_account=lab" in ct and "slurm_partition=gpu" in ct
    assert all("gpu=1" in r for r in _resources(out, "evaluate"))
    assert all("gpu=" not in r for r in _resources(out, "merge"))
    assert "python -m lrmerge.train.launch --nproc 8 ct" in out  # one process per GPU


def test_make_slurm_profile_fills_and_never_overwrites(tmp_path):
    home = tmp_path / "config"
    env = {**ENV, "XDG_CONFIG_HOME": str(home), "SLURM_ACCOUNT": "nlp-lab"}
    env.pop("SLURM_PARTITION", None)
    run = lambda: subprocess.run(["make", "-s", "slurm-profile"], cwd=REPO, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    result = run()
    assert result.returncode == 0, result.stderr
    profile = home / "snakemake" / "slurm" / "config.yaml"
    text = profile.read_text()
    assert "\n  slurm_account: nlp-lab\n" in text
    assert "\n  # slurm_partition: PARTITION\n" in text  # unset: a commented placeholder
    assert "set slurm_partition" in result.stdout
    assert yaml.safe_load(text)["executor"] == "slurm"
    profile.write_text(text + "# my edit\n")
    result = run()
    assert result.returncode == 0 and "left as it is" in result.stdout
    assert profile.read_text().endswith("# my edit\n")
    # the installed profile plans the sweep
    result = snakemake("-n", "--profile", "slurm", "--quiet", "rules",
                       env={"XDG_CONFIG_HOME": str(home)}, timeout=300)
    assert result.returncode == 0, result.stderr


def test_mini_preset_plans_every_stage(tmp_path):
    # A fresh working directory, so that an earlier `make demo` does not shorten the plan.
    result = snakemake(
        "-n",
        "-s",
        REPO / "Snakefile",
        "-d",
        tmp_path,
        "--configfile",
        REPO / "config" / "mini.yaml",
        "--quiet",
        "rules",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    assert job_counts(result.stdout + result.stderr) == expected_counts(config, built_base=True)


def test_mini_profile_parses():
    result = snakemake("-n", "--profile", "profiles/mini", "--quiet", "all")
    assert result.returncode == 0, result.stderr


def test_ct_chain_continues_from_previous_budget(tmp_path):
    config = write_config(tmp_path)
    result = snakemake(
        "-n", "-p", "-s", REPO / "Snakefile", "-d", tmp_path, "--configfile", config, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    inits = dict(
        re.findall(
            r"lrmerge train ct .*?--tokens (\d+) --init (\S+) .*?--out results/mini/models/ct/bn/",
            result.stdout,
        )
    )
    assert inits == {
        "100000": "results/mini/models/base",
        "200000": "results/mini/models/ct/bn/100000",
        "400000": "results/mini/models/ct/bn/200000",
    }
    merges = re.findall(r"lrmerge merge-config (.*?) --out (\S+)\.merge\.yaml", result.stdout)
    by_out = {out: args for args, out in merges}
    ties_sv = by_out["results/mini/models/merge/ties_sv/bo/200000"]
    assert "--model ct=results/mini/models/ct/bo/200000@1" in ties_sv
    assert "--model sft=results/mini/models/sft@1" in ties_sv
    assert "--protect sft" in ties_sv and "--slack 0.1" in ties_sv
    multi = by_out["results/mini/models/merge/ties/bn+bo/400000"]
    assert "--model ct_bn=results/mini/models/ct/bn/400000@1" in multi
    assert "--model ct_bo=results/mini/models/ct/bo/400000@1" in multi
    assert "--base" not in by_out["results/mini/models/merge/average/bn/100000"]
    evals = re.findall(r"lrmerge evaluate .*?--model (\S+) ((?:--lang \S+ )+)", result.stdout)
    langs = {model: args.split()[1::2] for model, args in evals}
    assert langs["results/mini/models/base"] == ["bn", "bo", "en"]
    assert langs["results/mini/models/ct_sft/bo/100000"] == ["bo", "en"]
    assert langs["results/mini/models/merge/ties/bn+bo/400000"] == ["bn", "bo", "en"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(colour="blue"), r"'colour' was unexpected"),
        (
            lambda c: c["languages"]["bn"].update(budgets=[200000, 100000]),
            r"languages\.bn\.budgets",
        ),
        (lambda c: c["languages"]["bo"].pop("corpus"), r"'corpus' is a required property"),
        (lambda c: c["merge"]["methods"].update(slerp={}), r"merge\.methods\.slerp"),
        (lambda c: c.update(seed="x"), r"'x' is not of type 'integer'"),
        (lambda c: c["languages"]["bo"].update(budgets=[0]), r"less than the minimum of 1"),
    ],
)
def test_bad_config_fails_at_start(tmp_path, mutate, message):
    config = write_config(tmp_path, mutate)
    result = snakemake(
        "-n", "-s", REPO / "Snakefile", "-d", tmp_path, "--configfile", config, cwd=tmp_path
    )
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_one_config_file_only(tmp_path):
    a, b = write_config(tmp_path, name="a.yaml"), write_config(tmp_path, name="b.yaml")
    result = snakemake("-n", "-s", REPO / "Snakefile", "-d", tmp_path, "--configfile", a, b)
    assert result.returncode != 0 and "pass one --configfile" in result.stdout + result.stderr
    result = snakemake(
        "-n", "-s", REPO / "Snakefile", "-d", tmp_path, "--config", "seed=3", "--configfile", a
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "--config overrides are not supported" in out


# ----------------------------------------------------------------------------------------------
# End to end


def tiny(cfg: dict) -> None:
    """The mini preset cut down to a few minutes: a two-budget chain in one language, one budget in
    the other (they share it for the two-language merge), a smaller model, fewer steps and
    examples. Languages, merge methods and tasks are the mini preset's."""
    cfg["run_name"] = "tiny"
    first, second = list(cfg["languages"])[:2]
    cfg["languages"][first]["budgets"] = [20000, 40000]
    cfg["languages"][second]["budgets"] = [40000]
    cfg["languages"]["bo-v90"].update(budgets=[40000])  # the vocabulary variant of bo
    cfg["languages"]["bo-v90"]["tokenizer"]["sample_chars"] = 100000
    cfg["mini"].update(tokenizer_docs=600, sft_examples=200, eval_examples=12, fewshot_examples=4)
    cfg["mini"]["model"] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    cfg["pretrain"].update(steps=40, warmup_steps=5, checkpoint_every=0)
    cfg["sft"].update(steps=15, checkpoint_every=0)
    cfg["continual_pretrain"].update(checkpoint_every=0)
    cfg["merge"]["methods"]["layer_swap"] = {"bottom": 1}  # of the tiny model's 2 layers


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    config = write_config(tmp_path, tiny)
    cfg = yaml.safe_load(config.read_text())
    result = snakemake(
        "-s",
        REPO / "Snakefile",
        "-d",
        tmp_path,
        "--configfile",
        config,
        "--cores",
        "2",
        "--set-threads",
        "pretrain_base=2",
        "continual_pretrain=2",
        "finetune_sft=2",
        "ct_then_sft=2",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    run = tmp_path / "results" / "tiny"
    models = run / "models"
    # results layout and CT chain
    for lang, facts in cfg["languages"].items():
        previous = None
        for tokens in facts["budgets"]:
            summary = json.loads(
                (models / "ct" / lang / str(tokens) / "train_summary.json").read_text()
            )
            assert summary["tokens_seen"] == tokens
            assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
            assert summary["data"]["target"]["passes"] <= 1  # fresh tokens, never repeated
            if previous is None:
                assert summary["resumed_from"] is None
            else:
                # paths in summaries are relative to the working directory
                assert (tmp_path / summary["resumed_from"]).resolve() == previous.resolve()
            previous = models / "ct" / lang / str(tokens)
            assert (models / "ct_sft" / lang / str(tokens) / "train_summary.json").is_file()
            for method in cfg["merge"]["methods"]:
                folder = models / "merge" / method / lang / str(tokens)
                assert (folder / "merge_stats.json").is_file()
                assert (folder / "merge.yaml").is_file()
                assert (folder / "config.json").is_file()
                assert (run / "eval" / "merge" / method / lang / f"{tokens}.json").is_file()
    assert (models / "base" / "train_summary.json").is_file()
    # every corpus tokenized once, sized for its largest budget; the jobs' benchmark files
    for corpus in [*cfg["languages"], "en"]:
        manifest = json.loads((run / "data" / "tokens" / corpus / "manifest.json").read_text())
        assert manifest["tokens"] >= manifest["need"] > 0
    bench = run / "benchmarks"
    assert {p.name for p in bench.iterdir()} >= {"train_tokenizer", "prepare_corpus",
                                                  "continual_pretrain", "merge", "evaluate"}
    assert "max_rss" in (bench / "pretrain_base" / "base.tsv").read_text()
    assert (models / "sft" / "train_summary.json").is_file()
    assert (models / "merge" / "ties" / "bn+bo" / "40000" / "merge_stats.json").is_file()
    assert not list(models.rglob("*.merge.yaml"))
    # tables
    scores = pd.read_csv(run / "tables" / "scores.csv")
    assert {"model", "method", "language", "tokens", "task", "family", "score", "stderr",
            "n"} <= set(scores.columns)
    assert set(scores["family"]) == {"classification", "reading_comprehension",
                                     "response_selection", "math"}
    assert set(scores["method"]) == {"base", "sft", "ct", "ct_sft", *cfg["merge"]["methods"]}
    assert scores["score"].between(0, 1).all()
    # slack: auto, target first_budget: the second Bengali budget aims, tensor by tensor, at
    # SFT-flan's discarded fraction in the first budget's merge (which reserved nothing: TIES)
    first, second = (models / "merge" / "ties_auto" / "bn" / str(t) for t in (20000, 40000))
    spec = yaml.safe_load((second / "merge.yaml").read_text())
    assert spec["slack"] == "auto"
    assert Path(spec["target_discarded"]).resolve() == (first / "merge_stats.json").resolve()
    assert yaml.safe_load((first / "merge.yaml").read_text())["target_discarded"] == 1.0
    aims = json.loads((first / "merge_stats.json").read_text())
    auto = json.loads((second / "merge_stats.json").read_text())
    assert aims["totals"][1]["reserved"] == 0 and auto["totals"][1]["reserved"] > 0
    for name, entries in auto["tensors"].items():
        target = aims["tensors"][name][1]["discarded_fraction"]
        assert entries[1]["discarded"] <= target * entries[1]["kept"] + 1e-6, name
    # layer swapping: the tiny model's bottom layer, embeddings and head from CT-X
    swap = json.loads((models / "merge" / "layer_swap" / "bo" / "40000" / "merge_stats.json")
                      .read_text())
    assert swap["source_by_layer"] == {"embed": {"ct": 1.0, "sft": 0.0},
                                       "0": {"ct": 1.0, "sft": 0.0}, "1": {"ct": 0.0, "sft": 1.0},
                                       "norm": {"ct": 1.0, "sft": 0.0},
                                       "lm_head": {"ct": 1.0, "sft": 0.0}}
    # the vocabulary variant: its tokenizer learned from bo's text, CT grown to it, merges over
    # the union of vocabularies (its 90 rows from CT-X), bo's tasks read with its own tokenizer
    ext = json.loads((run / "data" / "tokenizers" / "bo-v90" / "vocab_extension.json")
                     .read_text())
    c = ext["corpus"]
    assert ext["added"] == 90 and c["characters"] / c["tokens_extended"] > 3 * (
        c["characters"] / c["tokens_base"])
    ct = json.loads((models / "ct" / "bo-v90" / "40000" / "train_summary.json").read_text())
    assert ct["vocab_extension"]["added"] == 90
    assert ct["vocab_extension"]["initialised"] == "mean_of_pieces"
    vocab = json.loads((models / "merge" / "ties" / "bo-v90" / "40000" / "merge_stats.json")
                       .read_text())["vocabulary"]
    assert (vocab["new_rows"], vocab["new_rows_from"]) == (90, {"ct": 90})
    tokens_bo = json.loads((run / "data" / "tokens" / "bo" / "manifest.json").read_text())
    tokens_v = json.loads((run / "data" / "tokens" / "bo-v90" / "manifest.json").read_text())
    assert tokens_v["characters_per_token"] > 3 * tokens_bo["characters_per_token"]
    scored = json.loads((run / "eval" / "ct" / "bo-v90" / "40000.json").read_text())["tasks"]
    assert set(scored) >= set(cfg["languages"]["bo"]["tasks"])
    cells = pd.read_csv(run / "tables" / "discarded_map.csv")
    assert set(cells["layer"]) == {0, 1} and set(cells["variant"]) == {"ties", "ties_sv",
                                                                       "ties_auto"}
    discarded = pd.read_csv(run / "tables" / "discarded.csv")
    sft = discarded[(discarded["input"] == "sft") & (discarded["method"] == "ties")]
    assert set(sft["language"]) == {"bn", "bo", "bo-v90", "bn+bo"}
    assert (sft["discarded_fraction"] > 0).all() and (sft["discarded_fraction"] < 1).all()
    # ties_sv reserves some of SFT-flan's entries that ties discards
    sv = discarded[(discarded["input"] == "sft") & (discarded["method"] == "ties_sv")]
    assert (sv["reserved"] > 0).all()
    # figures
    families = ("classification", "reading_comprehension", "response_selection", "math")
    for name in ("saturation", "discarded", *(f"saturation_{f}" for f in families)):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
        assert (run / "figures" / f"{name}.pdf").stat().st_size > 1000
    # redrawing the figures re-runs nothing upstream
    redo = snakemake(
        "-n",
        "-s",
        REPO / "Snakefile",
        "-d",
        tmp_path,
        "--configfile",
        config,
        "-R",
        "plot",
        "--allowed-rules",
        "plot",
        "--quiet",
        "rules",
        cwd=tmp_path,
    )
    assert redo.returncode == 0, redo.stderr
    assert job_counts(redo.stdout + redo.stderr) == {"plot": 1, "all": 1, "total": 2}
    check_reruns(tmp_path, config)
    check_html_report(tmp_path, config)


def check_html_report(tmp_path: Path, config: Path) -> Path:
    """`snakemake --report` of the completed run: every figure and table, with its caption,
    category and labels."""
    html = tmp_path / "report.html"
    result = snakemake("-s", REPO / "Snakefile", "-d", tmp_path, "--configfile", config,
                       "--report", html, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = html.read_text(encoding="utf-8", errors="replace")
    families = ("classification", "reading_comprehension", "response_selection", "math")
    for name in ("saturation.png", "discarded.png", "discarded_map.png", "discarded_modules.png",
                 "scores.csv", "discarded.csv", "discarded_map.csv",
                 *(f"saturation_{f}.png" for f in families)):
        assert name in text, name
    for category in ("Data", "Train", "Merge", "Evaluate", "Report", "Figures", "Tables"):
        assert f'"{category}"' in text, category
    # captions, and labels per language and method
    assert "task families averaged" in text and "sign election discards" in text
    assert "Where SFT-flan's task skills are lost" in text
    assert '"ties_sv"' in text and '"bn+bo"' in text and '"layer_swap"' in text
    return html


def _counts(**jobs) -> dict[str, int]:
    jobs = {k: v for k, v in jobs.items() if v}
    return {**jobs, "all": 1, "total": sum(jobs.values()) + 1}


def check_reruns(tmp_path: Path, config: Path) -> None:
    """On a completed run, one config key edited in place at a time: `snakemake -n` plans exactly
    the jobs that read it and those downstream (rule params are exactly what commands read)."""
    from lrmerge.config import load_config, plan_merges, plan_models

    original = config.read_text()
    cfg = load_config(config)
    models, merges = plan_models(cfg), plan_merges(cfg)

    def plan_after(edit) -> dict[str, int]:
        edited = yaml.safe_load(original)
        edit(edited)
        config.write_text(yaml.safe_dump(edited, sort_keys=False, allow_unicode=True))
        try:
            result = snakemake("-n", "-s", REPO / "Snakefile", "-d", tmp_path, "--configfile",
                               config, "--quiet", "rules", cwd=tmp_path)
        finally:
            config.write_text(original)
        assert result.returncode == 0, result.stderr
        out = result.stdout + result.stderr
        return job_counts(out) if "Job stats:" in out else {}

    # a merge density: only those merges, their evaluations and the report
    ties = [m for m in merges if m.variant == "ties"]
    assert plan_after(lambda c: c["merge"]["methods"]["ties"].update(density=0.3)) == _counts(
        merge=len(ties), evaluate=len(ties), aggregate=1, plot=1)
    # a slack: auto merge's density: every budget of it (later budgets aim at the first's stats)
    auto = [m for m in merges if m.variant == "ties_auto"]
    assert plan_after(lambda c: c["merge"]["methods"]["ties_auto"].update(density=0.3)) == (
        _counts(merge=len(auto), evaluate=len(auto), aggregate=1, plot=1))
    # an evaluation source: that language's tasks, the evaluations that use them, the report
    bn_models = [m for m in models if "bn" in m.eval_languages]
    assert plan_after(lambda c: c["evaluate"]["sources"]["topic_bn"].update(
        protocol="generate")) == _counts(build_tasks=1, evaluate=len(bn_models), aggregate=1,
                                         plot=1)
    # a language's display name: only the figures
    assert plan_after(lambda c: c["languages"]["bn"].update(name="Bangla")) == _counts(plot=1)
    # the CT learning rate: every CT chain and everything downstream of it
    ct = sum(len(f["budgets"]) for f in cfg["languages"].values())
    assert plan_after(lambda c: c["continual_pretrain"].update(lr=1e-3)) == _counts(
        continual_pretrain=ct, ct_then_sft=ct, merge=len(merges),
        evaluate=len(models) - 2, aggregate=1, plot=1)  # all but base and SFT-flan
    # the run is up to date again with the original config
    assert plan_after(lambda c: None) == {}


# ----------------------------------------------------------------------------------------------
# On a real SLURM cluster (`make test-slurm`, which starts one with tests/slurm/cluster.sh)


REQUEUE_TOKENS = 240000  # ~10 s of training here: room to requeue the job mid-run


def _slurm_jobs() -> list[dict]:
    """Every job slurmctld still knows (MinJobAge keeps finished ones), as field dicts."""
    records = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True,
                             text=True).stdout.splitlines()
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in records]


def _requeue_mid_run(log: Path, prefix: str, watch: tuple[str, ...], at_step: int,
                     stop: threading.Event, seen: dict) -> None:
    """Once the training job writing `log` has logged step `at_step`, requeue it as an admin or
    SLURM's preemption would (`scontrol requeue`): SLURM sends SIGTERM, waits, and starts the
    same job id again."""
    while not stop.wait(0.1):
        if not (log.exists() and re.search(rf"^step {at_step}/", log.read_text(errors="replace"),
                                           re.M)):
            continue
        for job in _slurm_jobs():
            if (job.get("JobName", "").startswith(prefix) and job.get("JobState") == "RUNNING"
                    and job.get("Comment", "").startswith("rule_continual_pretrain_")
                    and all(w in job["Comment"] for w in watch)):
                seen["job"] = job["JobId"]
                seen["requeue"] = subprocess.run(["scontrol", "requeue", job["JobId"]],
                                                 capture_output=True, text=True)
                return


@pytest.mark.slurm
def test_tiny_preset_on_a_slurm_cluster(tmp_path):
    """The tiny preset through Snakemake's SLURM executor: every job an sbatch job on a real
    single-node cluster, tracked with squeue (no accounting there), the evaluation jobs asking for
    a GPU of the cluster's (fake) gres and falling back to the CPU inside the job. One CT job is
    requeued mid-run (`scontrol requeue`): it resumes from the checkpoint it saved on SIGTERM and
    ends with the weights of an uninterrupted run."""
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode:
        pytest.fail("no SLURM cluster answers: start one with tests/slurm/cluster.sh (as root)")

    def budgets(cfg):
        tiny(cfg)
        first, second = list(cfg["languages"])[:2]
        cfg["languages"][first]["budgets"] = [20000, REQUEUE_TOKENS]
        cfg["languages"][second]["budgets"] = [REQUEUE_TOKENS]

    config = write_config(tmp_path, budgets)
    cfg = yaml.safe_load(config.read_text())
    second = list(cfg["languages"])[1]
    prefix = f"lrmtest{os.getpid()}"
    stop, requeued = threading.Event(), {}
    ct_log = tmp_path / "logs" / "tiny" / "continual_pretrain" / second / f"{REQUEUE_TOKENS}.log"
    watcher = threading.Thread(target=_requeue_mid_run, args=(ct_log, prefix, (second, str(REQUEUE_TOKENS)), 30, stop, requeued))
    watcher.start()
    try:
        result = snakemake(
            "-s", REPO / "Snakefile", "-d", tmp_path, "--configfile", config,
            "--executor", "slurm", "--jobs", "2", "--latency-wait", "10", "--slurm-requeue",
            "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-jobname-prefix",
            prefix, "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "2",
            "--default-resources", "mem_mb=2000", "runtime=30", "cpus_per_task=1",
            "--set-threads", "pretrain_base=2", "continual_pretrain=2", "finetune_sft=2",
            "ct_then_sft=2",
            "--set-resources", "evaluate:gpu=1", "pretrain_base:cpus_per_task=2",
            "continual_pretrain:cpus_per_task=2", "finetune_sft:cpus_per_task=2",
            "ct_then_sft:cpus_per_task=2",
            cwd=tmp_path, timeout=1800,
        )
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr[-5000:]
    run = tmp_path / "results" / "tiny"
    # the requeued CT job: SLURM ran it twice under one id, and the second run resumed from the
    # checkpoint the first saved on SIGTERM, not from the start
    assert "job" in requeued, f"the CT job never logged step 30 while running: {ct_log}"
    assert requeued["requeue"].returncode == 0, requeued["requeue"].stderr
    job = next(j for j in _slurm_jobs() if j["JobId"] == requeued["job"])
    assert job["Restarts"] == "1" and job["JobState"] == "COMPLETED", job
    ct = run / "models" / "ct" / second / str(REQUEUE_TOKENS)
    summary = json.loads((ct / "train_summary.json").read_text())
    assert 30 <= summary["resumed_own_checkpoint_at_step"] < summary["steps"], summary
    assert summary["tokens_seen"] == REQUEUE_TOKENS and not (ct / "checkpoint").exists()
    # the job's record of its attempts: started, stopped by SLURM's SIGTERM, resumed there, all
    # under the one SLURM job id
    step = summary["resumed_own_checkpoint_at_step"]
    assert [(a["event"], a["step"], a.get("signal"), a.get("slurm_job"))
            for a in summary["attempts"]] == [
        ("start", 0, None, requeued["job"]), ("stop", step, "SIGTERM", None),
        ("start", step, None, requeued["job"])]
    # ... and ended with the weights of the same job run straight through
    import torch
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    subprocess.run(
        ["lrmerge", "train", "ct", "--config", config, "--threads", "2", "--lang", second,
         "--tokens", str(REQUEUE_TOKENS), "--init", run / "models" / "base",
         "--data", run / "data" / "tokens" / second, "--english", run / "data" / "tokens" / "en",
         "--out", straight], env=ENV, check=True, capture_output=True, timeout=600)
    requeued_weights = load_file(str(ct / "model.safetensors"))
    straight_weights = load_file(str(straight / "model.safetensors"))
    assert requeued_weights.keys() == straight_weights.keys()
    assert all(torch.equal(requeued_weights[k], straight_weights[k]) for k in requeued_weights)
    # every job of every stage but the report ran as a SLURM job, and completed
    jobs = [j for j in _slurm_jobs() if j.get("JobName", "").startswith(prefix)]
    rule_of = [re.sub(r"^rule_|_wildcards_.*$", "", j.get("Comment", "")) for j in jobs]
    assert set(rule_of) == {"train_tokenizer", "extend_tokenizer", "prepare_corpus",
                            "prepare_sft_data", "build_tasks",
                            "pretrain_base", "continual_pretrain", "finetune_sft", "ct_then_sft",
                            "merge", "evaluate"}, rule_of  # aggregate and plot: local rules
    assert all(j["JobState"] == "COMPLETED" for j in jobs)
    n_merges = len(list((run / "models" / "merge").rglob("merge_stats.json")))
    assert rule_of.count("merge") == n_merges
    assert rule_of.count("evaluate") == len(list((run / "eval").rglob("*.json")))
    # the evaluation jobs, and only they, were given one of the node's GPUs
    for rule, job in zip(rule_of, jobs, strict=True):
        assert (job.get("TresPerJob") == "gres:gpu:1") == (rule == "evaluate"), (rule, job)
    # training jobs had the two cores they asked for
    assert all(j["NumCPUs"] == "2" for r, j in zip(rule_of, jobs, strict=True) if r == "pretrain_base")
    # the outputs the figures are drawn from
    scores = pd.read_csv(run / "tables" / "scores.csv")
    assert set(scores["method"]) == {"base", "sft", "ct", "ct_sft", *cfg["merge"]["methods"]}
    assert len(scores) > 0 and scores["score"].between(0, 1).all()
    for lang in cfg["languages"]:
        assert (run / "eval" / "merge" / "ties_sv" / lang).is_dir()
    # the HTML report of the run, opened in headless Chromium: its figures render
    from report_browser import check_figures_render

    check_figures_render(check_html_report(tmp_path, config), tmp_path)
    for name in ("saturation", "discarded"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
