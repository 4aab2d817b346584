"""SFT-flan as a task mixture (issue 23): the task of each row from its file name (Muennighoff/
flan stores one file per FLAN task, alphabetically) or a field; a seeded sample of at most
max_per_task examples a task, times its weight; one seeded stratified shuffle, so the first 10%
of the packed sequences SFT reads hold every task in its final share. Fixtures are folders in the
hub's layout, written by the tests."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from stage_helpers import quiet, tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import validate_config
from lrmerge.data import mixture, sft, synthetic, tokenize
from lrmerge.data.shards import TokenShards
from lrmerge.train.stream import Packed, data_pad_id

# Muennighoff/flan's layout: train/<task>_10templates_train.jsonl, alphabetical, very unequal
SIZES = {"aeslc": 5000, "ag_news_subset": 20, "anli_r1": 600, "cola": 1500, "wsc": 60}
CAP, WEIGHTS = 1000, {"wsc": 2.0}
# taken per task: min(size, cap) x weight
TARGET = {"aeslc": 1000, "ag_news_subset": 20, "anli_r1": 600, "cola": 1000, "wsc": 120}
WORDS = "the ball is fast red how many big small cat dog runs".split()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tokenize.train_tokenizer(tiny_config(), root / "tokenizer", log=quiet)
    return root / "tokenizer"


def _row(task: str, i: int) -> dict:
    """An example of about the same length in every task; `i` is readable back from it."""
    words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6))
    return {"inputs": f"{task} question {i} : {words} ?", "targets": f"answer {i % 7}",
            "task": f"{task}_10templates"}


@pytest.fixture(scope="module")
def flan_root(tmp_path_factory):
    """A FLAN-layout folder: train/, validation/ (which the train split must not read)."""
    root = tmp_path_factory.mktemp("flan")
    for task, n in SIZES.items():
        fsutil.write_jsonl(root / "train" / f"{task}_10templates_train.jsonl",
                           (_row(task, i) for i in range(n)))
        fsutil.write_jsonl(root / "validation" / f"{task}_10templates_validation.jsonl",
                           (_row("held_out", i) for i in range(5)))
    return root


def _cfg(data: dict, **sft_keys) -> dict:
    return tiny_config(sft__data=data, **{f"sft__{k}": v for k, v in sft_keys.items()})


def _jsonl_spec(root, **keys) -> dict:
    return {"kind": "jsonl", "path": str(root / "train" / "*.jsonl"), "max_per_task": CAP,
            "task_weights": WEIGHTS, **keys}


def _index(prompt: str) -> int:
    return int(re.search(r"question (\d+)", prompt).group(1))


# --------------------------------------------------------------------------------------------
# Shares: in the whole and in the first 10% of the packed sequences, through the CLI
# --------------------------------------------------------------------------------------------
def test_every_prefix_of_the_run_holds_the_tasks_in_their_final_shares(tmp_path, tok_dir,
                                                                        flan_root):
    cfg = _cfg(_jsonl_spec(flan_root))
    path = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "sft"
    assert cli(["data", "sft", "--config", str(path), "--tokenizer", str(tok_dir),
                "--out", str(out)]) == 0
    shards = TokenShards(out)
    m = shards.manifest
    names = sorted(SIZES)
    assert shards.group_names == names and m["groups"]["kind"] == "task"
    # the whole: exactly the cap and weights
    assert m["groups"]["documents"] == TARGET
    tasks = m["mixture"]["tasks"]
    assert {t: v["available"] for t, v in tasks.items()} == SIZES
    assert {t: v["taken"] for t, v in tasks.items()} == TARGET
    assert tasks["wsc"]["weight"] == 2.0 and m["mixture"]["max_per_task"] == CAP
    assert tasks["cola"]["files"] == [str(flan_root / "train" / "cola_10templates_train.jsonl")]
    total = sum(TARGET.values())
    share = np.array([TARGET[t] / total for t in names])
    # the first 10% of the sequences the SFT run reads (Packed packs the folder in order)
    packed = Packed(shards, cfg["sft"]["seq_len"], "response", data_pad_id(shards), 0, False)
    tenth = (len(packed.seqs) - 1) // 10
    docs = int(packed.seqs[tenth])
    counts = np.bincount(np.asarray(shards.groups[:docs]), minlength=len(names))
    # stratified: every task within 1 + K x share examples of its share of any prefix
    assert np.all(np.abs(counts - docs * share) <= 1 + len(names) * share), (counts, docs)
    assert counts[names.index("ag_news_subset")] >= 1  # the 0.7% task is there from the start
    # in tokens (examples of about the same length): within 2 percentage points
    stop = int(shards.doc_ends[docs - 1])
    first = shards.group_tokens(stop)
    whole = m["groups"]["tokens"]
    for t in names:
        assert abs(first[t] / stop - whole[t] / m["tokens"]) < 0.02, t
    # a run on these tasks in file order would start with 1,000 examples of aeslc
    assert counts[names.index("aeslc")] < 0.5 * docs


def test_stratified_order_holds_shares_at_every_prefix():
    rng = np.random.default_rng(3)
    counts = np.array([1500, 7, 300, 1, 0, 2200])
    task, j = mixture.stratified_order(counts, rng)
    assert np.bincount(task, minlength=len(counts)).tolist() == counts.tolist()
    # each task's j are 0..n-1, in increasing order along the order
    for t, n in enumerate(counts):
        assert j[task == t].tolist() == list(range(n))
    share = counts / counts.sum()
    seen = np.cumsum(np.eye(len(counts), dtype=np.int64)[task], axis=0)
    m = np.arange(1, len(task) + 1)[:, None]
    assert np.all(np.abs(seen - m * share) <= 1 + len(counts) * share)
    # the order of tasks is random, not a fixed rotation
    again, _ = mixture.stratified_order(counts, np.random.default_rng(4))
    assert (again != task).any()


# --------------------------------------------------------------------------------------------
# Which examples: a sample of each task's file, repeats only by weight, max_examples a sample
# --------------------------------------------------------------------------------------------
def test_the_cap_samples_across_each_task_file(flan_root):
    rows = sft.sft_rows(_cfg(_jsonl_spec(flan_root)))
    got = [_index(r["prompt"]) for r in rows if r["task"] == "aeslc"]
    assert len(got) == len(set(got)) == CAP
    # 1,000 of 5,000 rows: about 200 in each fifth of the file (hypergeometric sd ~11)
    per_fifth = np.bincount(np.array(got) // 1000, minlength=5)
    assert per_fifth.min() > 140 and per_fifth.max() < 260, per_fifth
    assert sorted(got) != list(range(CAP))
    # prompt and response stay paired; the validation split is never read
    assert all(r["response"] == f"answer {_index(r['prompt']) % 7}" for r in rows)
    assert not any(r["prompt"].startswith("held_out") for r in rows)


def test_a_weight_above_one_repeats_whole_passes(flan_root):
    rows = sft.sft_rows(_cfg(_jsonl_spec(flan_root)))
    wsc = [r["prompt"] for r in rows if r["task"] == "wsc"]
    assert set(collections.Counter(wsc).values()) == {2} and len(set(wsc)) == SIZES["wsc"]
    # whole passes: every wsc example once before any comes twice
    assert len(set(wsc[:SIZES["wsc"]])) == SIZES["wsc"]


def test_max_examples_is_a_sample_of_the_mixture_in_its_shares(flan_root):
    rows = sft.sft_rows(_cfg(_jsonl_spec(flan_root, max_examples=500)))
    assert len(rows) == 500
    counts = collections.Counter(r["task"] for r in rows)
    total = sum(TARGET.values())
    for t, n in TARGET.items():
        assert abs(counts[t] - 500 * n / total) <= 1 + len(TARGET) * n / total, (t, counts)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_order(tmp_path, tok_dir,
                                                                          flan_root):
    def build(name: str, seed: int) -> tuple[bytes, bytes, dict]:
        cfg = _cfg(_jsonl_spec(flan_root))
        cfg["seed"] = seed
        m = sft.prepare_sft(cfg, str(tok_dir), tmp_path / name, log=quiet)
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        raw = b"".join((tmp_path / name / f).read_bytes() for f in files if f != "manifest.json")
        return raw, (tmp_path / name / "document_groups.bin").read_bytes(), m

    a, groups_a, ma = build("a", 0)
    b, groups_b, mb = build("b", 0)
    c, groups_c, mc = build("c", 1)
    assert a == b and groups_a == groups_b
    assert [s["xxh3_128"] for s in ma["shards"]] == [s["xxh3_128"] for s in mb["shards"]]
    assert a != c and groups_a != groups_c
    assert ma["groups"]["documents"] == mc["groups"]["documents"] == TARGET  # same mixture
    assert mc["mixture"]["seed"] == 1
    # no temporary folder is left beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------
# The hub: per-task files listed from the repository (or a local folder of its layout)
# --------------------------------------------------------------------------------------------
def test_hub_dataset_of_per_task_files(tmp_path, flan_root, monkeypatch):
    import huggingface_hub

    local = sft.sft_rows(_cfg(_jsonl_spec(flan_root)))
    # kind hf on a local folder in the hub's layout: the train split's files
    spec = {"kind": "hf", "path": str(flan_root), "split": "train", "max_per_task": CAP,
            "task_weights": WEIGHTS}
    assert sft.sft_rows(_cfg(spec)) == local
    # the hub: the repository's file list, each file downloaded (here: served from the folder)
    files = sorted(p.relative_to(flan_root).as_posix() for p in flan_root.rglob("*.jsonl"))
    calls = []

    def list_repo_files(repo_id, repo_type=None, revision=None):
        assert (repo_id, repo_type) == ("Muennighoff/flan", "dataset")
        return files + ["README.md"]

    def hf_hub_download(repo_id, filename, repo_type=None, revision=None):
        calls.append(filename)
        return str(flan_root / filename)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    hub = sft.sft_rows(_cfg(dict(spec, path="Muennighoff/flan")))
    assert hub == local
    assert sorted(set(calls)) == [f for f in files if f.startswith("train/")]
    assert len(calls) == len(set(calls))  # each file fetched once, read twice


def test_task_from_a_row_field(tmp_path, flan_root):
    """One file of all tasks in blocks (as a concatenated collection): the task field."""
    rows = [_row(t, i) for t in sorted(SIZES) for i in range(SIZES[t])]
    fsutil.write_jsonl(tmp_path / "all.jsonl", rows)
    for spec in ({"kind": "jsonl", "path": str(tmp_path / "all.jsonl")},
                 {"kind": "hf", "path": "json", "data_files": str(tmp_path / "all.jsonl")}):
        got = sft.sft_rows(_cfg({**spec, "task_field": "task", "max_per_task": 50}))
        counts = collections.Counter(r["task"] for r in got)
        assert counts == {f"{t}_10templates": min(n, 50) for t, n in SIZES.items()}
    # without task_field, the whole file is one task named after it
    one = sft.sft_rows(_cfg({"kind": "jsonl", "path": str(tmp_path / "all.jsonl"),
                             "max_per_task": 50}))
    assert {r["task"] for r in one} == {"all"} and len(one) == 50


def test_the_mini_flan_is_a_mixture_of_its_families():
    rows = sft.sft_rows(tiny_config())
    counts = collections.Counter(r["task"] for r in rows)
    assert counts == {f: 20 for f in synthetic.FAMILIES}  # mini.sft_examples 80 in tiny_config
    # shuffled, not the families in turn
    turn = [synthetic.FAMILIES[i % 4] for i in range(80)]
    assert [r["task"] for r in rows] != turn


def test_the_sft_loss_is_on_the_response_by_default():
    cfg = tiny_config()
    del cfg["sft"]["loss_on"]
    assert validate_config(cfg)["sft"]["loss_on"] == "response"


# --------------------------------------------------------------------------------------------
# Bad input names the key
# --------------------------------------------------------------------------------------------
def test_errors_name_the_key(tmp_path, tok_dir, flan_root):
    with pytest.raises(ValueError, match=r"sft\.data\.max_per_task: 0 is less than the minimum"):
        _cfg(_jsonl_spec(flan_root, max_per_task=0))
    zero = {t: 0 for t in SIZES}
    with pytest.raises(ValueError, match=r"sft\.data\.task_weights: weights must be >= 0 and sum "
                                         r"to a positive number"):
        sft.sft_rows(_cfg(_jsonl_spec(flan_root, task_weights=zero)))
    with pytest.raises(ValueError, match=r"sft\.data\.task_weights: 'boolq' is not a task of the "
                                         r"data \(its 5 tasks: aeslc, ag_news_subset"):
        sft.sft_rows(_cfg(_jsonl_spec(flan_root, task_weights={"boolq": 1.0})))
    # a row without the task field: the file, the line and the key
    rows = [_row("cola", i) for i in range(10)]
    del rows[6]["task"]
    fsutil.write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(ValueError, match=r"mixed\.jsonl: line 7 has no key 'task' .*task_field"):
        sft.sft_rows(_cfg({"kind": "jsonl", "path": str(tmp_path / "mixed.jsonl"),
                           "task_field": "task"}))
    fsutil.write_jsonl(tmp_path / "hf.jsonl", rows)
    # (the json builder fills a missing field with None)
    with pytest.raises(ValueError, match=r"row 6 of json: task field 'task' is None, not a task "
                                         r"name \(sft\.data\.task_field\)"):
        sft.sft_rows(_cfg({"kind": "hf", "path": "json", "data_files": str(tmp_path / "hf.jsonl"),
                           "task_field": "task"}))
    # a file whose name the pattern does not read; a pattern without its one group
    fsutil.write_jsonl(tmp_path / "odd" / "notes.json", rows)
    with pytest.raises(ValueError, match=r"sft\.data\.task_pattern: file .*notes\.json does not "
                                         r"match"):
        sft.sft_rows(_cfg({"kind": "jsonl", "path": str(tmp_path / "odd" / "*")}))
    with pytest.raises(ValueError, match=r"sft\.data\.task_pattern: .* has 0 groups"):
        sft.sft_rows(_cfg(_jsonl_spec(flan_root, task_pattern=r".*\.jsonl")))
    # nothing is left behind by a failed run
    with pytest.raises(ValueError, match=r"'boolq' is not a task"):
        sft.prepare_sft(_cfg(_jsonl_spec(flan_root, task_weights={"boolq": 1.0})), str(tok_dir),
                        tmp_path / "out", log=quiet)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]
