"""The evaluate stage: lm-eval on the generated task files, one JSON per model."""

from __future__ import annotations

import json

import pytest
import torch
from stage_helpers import prepare_data, pretrain_base, tiny_config, write_config

from lrmerge import evaluate, fsutil
from lrmerge.cli import main as cli
from lrmerge.data.evalsets import build_eval

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("evaluate")
    pretrain_base(cfg, prepare_data(cfg, root, langs=("en",), sft=False), root / "model")
    for lang in ("bn", "en"):
        build_eval(cfg, lang, root / "eval" / lang)
    return cfg, root


def _own_accuracy(model_dir, rows):
    """Accuracy by summed log-likelihood of " " + choice after the query, computed here the way
    lm-eval splits context and continuation (encode the whole, cut at the context's length)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    for r in rows:
        scores = []
        for choice in r["choices"]:
            ctx = tok(r["query"], add_special_tokens=False)["input_ids"]
            whole = tok(r["query"] + " " + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits.log_softmax(-1)[0]
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        right += max(range(len(scores)), key=scores.__getitem__) == r["gold"]
    return right / len(rows)


def test_one_json_per_model_with_every_task(setup, tmp_path):
    cfg, root = setup
    out = tmp_path / "eval" / "ct" / "bn" / "100.json"
    doc = evaluate.evaluate(cfg, str(root / "model"), ["bn", "en"], str(root / "eval"), str(out),
                            threads=1)
    assert json.loads(out.read_text()) == doc
    assert list(doc["tasks"]) == cfg["languages"]["bn"]["tasks"] + cfg["english"]["tasks"]
    for task, m in doc["tasks"].items():
        assert m["metric"] == "acc" and 0.0 <= m["score"] <= 1.0
        assert doc["n_samples"][task] == cfg["mini"]["eval_examples"]
    assert doc["lm_eval_version"] and doc["model_args"]["pretrained"] == str(root / "model")
    # the task files are scored as intended: lm-eval agrees with a direct computation
    for task in ("topic_bn", "math_en"):
        rows = fsutil.read_jsonl(root / "eval" / task.rsplit("_", 1)[1] / f"{task}.test.jsonl")
        assert doc["tasks"][task]["score"] == pytest.approx(_own_accuracy(root / "model", rows))


def test_generated_math_runs_as_generation(setup, tmp_path):
    cfg = tiny_config(evaluate__math_format="generate", evaluate__max_gen_toks=4)
    cfg["english"]["tasks"] = ["math_en"]
    _, root = setup
    build_eval(cfg, "en", tmp_path / "tasks" / "en")
    doc = evaluate.evaluate(cfg, str(root / "model"), ["en"], str(tmp_path / "tasks"),
                            str(tmp_path / "m.json"), limit=3)
    assert doc["tasks"]["math_en"]["metric"] == "exact_match"
    assert doc["n_samples"]["math_en"] == 3


def test_unknown_task_names_the_fix(setup, tmp_path):
    cfg = tiny_config()
    cfg["english"]["tasks"] = ["belebele_eng_Latn"]
    _, root = setup
    with pytest.raises(ValueError, match="include_defaults: true"):
        evaluate.evaluate(cfg, str(root / "model"), ["en"], str(root / "eval"),
                          str(tmp_path / "x.json"))
    with pytest.raises(KeyError, match="'xx' is not in config key 'languages'"):
        evaluate.tasks_for(cfg, ["xx"])
    assert not (tmp_path / "x.json").exists()


def test_metric_parsing():
    res = {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.4,
           "acc_norm_stderr,none": "N/A"}
    m = evaluate._metrics(res)
    assert m == {"acc": 0.5, "acc_norm": 0.4, "score": 0.5, "metric": "acc", "stderr": 0.1}
    m = evaluate._metrics({"exact_match,first_number": 0.25, "exact_match_stderr,first_number": 0.1})
    assert m["metric"] == "exact_match" and m["score"] == 0.25


def test_cli(setup, tmp_path):
    cfg, root = setup
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    out = tmp_path / "r.json"
    assert cli(["evaluate", "--config", str(cfg_path), "--model", str(root / "model"),
                "--lang", "en", "--tasks-dir", str(root / "eval"), "--out", str(out),
                "--limit", "4"]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["tasks"]) == set(cfg["english"]["tasks"]) and doc["languages"] == ["en"]
