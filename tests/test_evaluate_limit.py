"""evaluate.limit: a seeded sample of each task's items, stratified by label for classification,
drawn when the task folder is built and recorded there and in each eval file; never the first N."""

from __future__ import annotations

import json
import random

import eval_fixtures as fx
import pytest
import xxhash
from stage_helpers import tiny_config
from test_evaluate import BELEBELE_ITEMS, bench_config

from lrmerge import fsutil
from lrmerge.config import rule_config, rule_keys, validate_config
from lrmerge.evaluate import limit, run, tasks

PER_LABEL = 6  # the grouped test file: 7 categories x 6 rows, one category after another


def grouped_config(root, **evaluate) -> dict:
    """bench_config with SIB-200's test file grouped by category, as the release's is."""
    return bench_config(root, sib={"sib_test": PER_LABEL * len(fx.SIB_LABELS),
                                   "sib_grouped": True}, **evaluate)


def build_bn(cfg: dict, out) -> tuple[list[dict], dict]:
    """Build bn's folder from the config slice build_tasks sees; (SIB-200's test rows, its
    manifest entry)."""
    tasks.build(rule_config(cfg, "build_tasks", "bn"), "bn", out)
    manifest = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    return fsutil.read_jsonl(out / "sib200_ben_Beng.test.jsonl"), manifest["tasks"]


def test_fixture_is_grouped(tmp_path):
    """Without a limit the file is taken whole, and its first rows are all one class: the case
    where lm-eval's first-N limit scored 0.000."""
    rows, _ = build_bn(grouped_config(tmp_path), tmp_path / "full")
    assert len(rows) == 42
    assert {r["answer"] for r in rows[:PER_LABEL]} == {fx.SIB_LABELS[0]}


@pytest.mark.parametrize("n", [7, 9, 14, 20])
def test_classification_sample_keeps_every_label(tmp_path, n):
    cfg = grouped_config(tmp_path, limit=n)
    rows, manifest = build_bn(cfg, tmp_path / "bn")
    full, _ = build_bn(grouped_config(tmp_path / "full"), tmp_path / "full" / "bn")
    assert len(rows) == n
    assert {r["answer"] for r in rows} == set(fx.SIB_LABELS)
    # proportional: the labels are equally frequent, so their shares differ by one at most
    counts = [sum(r["answer"] == lab for r in rows) for lab in fx.SIB_LABELS]
    assert max(counts) - min(counts) <= 1
    # the chosen rows are the full file's rows at the recorded indices, in the file's order
    entry = manifest["sib200_ben_Beng"]
    assert entry["sample_indices"] == sorted(entry["sample_indices"])
    assert rows == [full[i] for i in entry["sample_indices"]]
    # candidate labels are the full set's
    assert all(r["candidates"] == sorted(fx.SIB_LABELS) for r in rows)


def test_sample_is_recorded(tmp_path):
    cfg = grouped_config(tmp_path, limit=9)
    _, manifest = build_bn(cfg, tmp_path / "bn")
    sib = manifest["sib200_ben_Beng"]
    assert sib["limit"] == 9 and sib["limit_seed"] == cfg["seed"]
    assert sib["n_items_full"] == 42 and sib["n_items"] == 9
    indices = sib["sample_indices"]
    assert len(indices) == 9
    assert sib["sample_hash"] == xxhash.xxh3_128(
        ",".join(map(str, sorted(indices))).encode()).hexdigest()
    # Belebele's shots are held out first: the sample is of the items left
    bele = manifest["belebele_ben_Beng"]
    assert bele["n_items_full"] == BELEBELE_ITEMS - bele["held_out_for_shots"]
    assert bele["n_items"] == min(9, bele["n_items_full"])
    # MGSM (5 items) under a limit of 9: every item, recorded as such
    mgsm = manifest["mgsm_bn"]
    assert mgsm["sample_indices"] == [0, 1, 2, 3, 4] and mgsm["limit"] == 9


def test_same_seed_same_items_other_seed_other_items(tmp_path):
    first, m1 = build_bn(grouped_config(tmp_path, limit=9), tmp_path / "a")
    again, m2 = build_bn(grouped_config(tmp_path, limit=9), tmp_path / "b")
    assert first == again
    assert m1["sib200_ben_Beng"]["sample_hash"] == m2["sib200_ben_Beng"]["sample_hash"]
    other, m3 = build_bn(grouped_config(tmp_path, limit=9, limit_seed=7), tmp_path / "c")
    assert m3["sib200_ben_Beng"]["limit_seed"] == 7
    assert [r["id"] for r in other] != [r["id"] for r in first]
    assert m3["sib200_ben_Beng"]["sample_hash"] != m1["sib200_ben_Beng"]["sample_hash"]
    assert {r["answer"] for r in other} == set(fx.SIB_LABELS)
    # the top-level seed is the default seed
    cfg = grouped_config(tmp_path, limit=9)
    cfg["seed"] = 7
    _, m4 = build_bn(cfg, tmp_path / "d")
    assert m4["sib200_ben_Beng"]["sample_indices"] == m3["sib200_ben_Beng"]["sample_indices"]


def test_other_families_are_a_plain_seeded_sample(tmp_path):
    cfg = bench_config(tmp_path, limit=3)
    tasks.build(rule_config(cfg, "build_tasks", "bn"), "bn", tmp_path / "bn")
    full = bench_config(tmp_path / "full")
    tasks.build(full, "bn", tmp_path / "full" / "bn")
    rows = fsutil.read_jsonl(tmp_path / "bn" / "mgsm_bn.test.jsonl")
    every = fsutil.read_jsonl(tmp_path / "full" / "bn" / "mgsm_bn.test.jsonl")
    indices = json.loads((tmp_path / "bn" / "tasks.json").read_text())["tasks"]["mgsm_bn"][
        "sample_indices"]
    assert len(rows) == 3 and rows == [every[i] for i in indices]
    assert indices == limit.sample_indices(None, 5, 3, f"{cfg['seed']}:mgsm_bn")


def test_eval_file_copies_the_record(tmp_path):
    cfg = grouped_config(tmp_path, limit=9)
    _, manifest = build_bn(cfg, tmp_path / "tasks" / "bn")
    doc = run.evaluate(cfg, "scripted", ["bn"], str(tmp_path / "tasks"), str(tmp_path / "m.json"),
                       lm=fx.ScriptedLM())
    for task, e in doc["tasks"].items():
        for key in run.SAMPLE_KEYS:
            assert e[key] == manifest[task][key], (task, key)
        assert e["n"] == manifest[task]["n_items"]
    assert doc["tasks"]["sib200_ben_Beng"]["n"] == 9


def test_allocation():
    # proportional with the largest remainders; ties to the label first in sorted order
    assert limit.allocate({"a": 10, "b": 10, "c": 10}, 4) == {"a": 2, "b": 1, "c": 1}
    assert limit.allocate({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    # a rare label keeps an item, taken from the largest share
    assert limit.allocate({"a": 97, "b": 2, "c": 1}, 3) == {"a": 1, "b": 1, "c": 1}
    # fewer items than labels: proportional only
    assert limit.allocate({"a": 97, "b": 2, "c": 1}, 2) == {"a": 2, "b": 0, "c": 0}
    rng = random.Random(0)
    for _ in range(500):
        counts = {f"l{i}": rng.randint(1, 40) for i in range(rng.randint(1, 9))}
        n = rng.randint(1, 120)
        share = limit.allocate(counts, n)
        assert sum(share.values()) == min(n, sum(counts.values()))
        assert all(0 <= share[lab] <= counts[lab] for lab in counts)
        if n >= len(counts):
            assert all(share[lab] >= 1 for lab in counts)


def test_limit_is_read_by_build_tasks_not_evaluate():
    cfg = tiny_config()
    assert "evaluate.limit" not in rule_keys(cfg, "evaluate", "bn")
    keys = rule_keys(cfg, "build_tasks", "bn")
    assert {"evaluate.limit", "evaluate.limit_seed"} <= set(keys)
    cfg = sib_only_config(limit=5)
    assert "seed" in rule_keys(cfg, "build_tasks", "bn")  # the sample's default seed
    cfg["evaluate"]["limit_seed"] = 3
    assert "seed" not in rule_keys(cfg, "build_tasks", "bn")


def sib_only_config(**evaluate) -> dict:
    """bn evaluated on one SIB-200 source (nothing generated, which reads the seed anyway)."""
    cfg = tiny_config()
    cfg["evaluate"]["sources"]["sib_bn"] = {
        "kind": "sib200", "family": "classification", "test": {"path": "csv", "data_files": "x"},
        "fewshot": {"path": "csv", "data_files": "y"}}
    cfg["evaluate"].update(evaluate)
    cfg["languages"]["bn"]["tasks"] = ["sib_bn"]
    return validate_config(cfg, "limit test config")


def test_builtin_task_refuses_a_limit(tmp_path):
    cfg = tiny_config()
    cfg["english"]["tasks"] = ["belebele_eng_Latn"]
    cfg["evaluate"]["sources"]["belebele_eng_Latn"] = {"kind": "builtin",
                                                       "family": "reading_comprehension"}
    cfg["evaluate"]["limit"] = 10
    cfg = validate_config(cfg, "t")
    with pytest.raises(ValueError, match=r"task belebele_eng_Latn .*evaluate\.limit \(10\) "
                       r"cannot sample a built-in lm-eval task"):
        tasks.build(cfg, "en", tmp_path / "en")
    assert not (tmp_path / "en").exists()
