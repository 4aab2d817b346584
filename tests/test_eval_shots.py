"""Shots as MiLiC-Eval runs them: its `script/run_eval.sh` (github luciusssss/MiLiC-Eval, commit
cb59367) passes `--num_exemplar 5` for reading comprehension, response selection and math and
`--num_exemplar_per_label 1` for classification, once per shot file train_1..3.json. Every
benchmark kind takes these counts unless its source says otherwise; three shot sets each."""

from __future__ import annotations

import json

import eval_fixtures as fx
import pytest
import yaml
from stage_helpers import tiny_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import load_config, validate_config
from lrmerge.evaluate import tasks

REPO = fx.Path(__file__).resolve().parents[1]
# The counts of run_eval.sh, written out here rather than read from the schema, so that a
# changed default fails this test.
RUN_EVAL_SH = {"classification": "per_label", "reading_comprehension": 5,
               "response_selection": 5, "math": 5}
MILIC_POOL = 8  # records per train_k.json here: more than a shot set takes
BELEBELE_ITEMS = 30
MGSM_POOL = 9


def _milic_with_bigger_shot_files(root):
    """fx.milic's copy, each train_k.json grown to MILIC_POOL records (new ids), so that a count
    of 5 is a cut of the file and not the whole of it."""
    fx.milic(root)
    for path in sorted((root / "data").glob("*/bo/train_*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))
        more = [dict(r, id=f"{r['id']}-again") for r in rows][: MILIC_POOL - len(rows)]
        path.write_text(json.dumps(rows + more, ensure_ascii=False), encoding="utf-8")
    return root


def shots_config(root, seeds=(1, 2, 3), sources: dict | None = None, **evaluate) -> dict:
    """The tiny config evaluating bo on MiLiC-Eval and bn on SIB-200, Belebele and MGSM, every
    pool bigger than its shot count; no source sets shots of its own."""
    cfg = tiny_config()
    src = fx.sources(root / "bench")
    src["belebele_ben_Beng"]["test"]["data_files"] = str(fx.belebele(root, n=BELEBELE_ITEMS))
    mgsm = src["mgsm_bn"]
    del mgsm["shots"]  # the fixture's source is zero-shot
    (root / "pool").mkdir(parents=True, exist_ok=True)
    mgsm["fewshot"] = dict(mgsm["test"], data_files=str(fx.mgsm(root / "pool", n=MGSM_POOL)))
    for name, spec in (sources or {}).items():
        src[name].update(spec)
    _milic_with_bigger_shot_files(root / "milic")
    cfg["evaluate"].update(sources={**cfg["evaluate"]["sources"], **src},
                           milic_root=str(root / "milic"), protocol="generate",
                           shot_seeds=list(seeds), **evaluate)
    cfg["languages"]["bo"]["tasks"] = [t for t in src if t.endswith("_bo")]
    cfg["languages"]["bn"]["tasks"] = [t for t in src if not t.endswith("_bo")]
    return validate_config(cfg, "shots test config")


def _build(cfg, root, langs=("bo", "bn")) -> dict:
    out = {}
    for lang in langs:
        out.update(tasks.build(cfg, lang, root / lang)["tasks"])
    return out


def _shots(root, lang, task, k) -> list[dict]:
    path = root / lang / f"{task}.shots{k}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_count(meta: dict, labels: int) -> int:
    want = RUN_EVAL_SH[meta["family"]]
    return labels if want == "per_label" else want


def test_the_paper_config_takes_run_eval_sh_counts_for_every_kind():
    cfg = load_config(REPO / "config" / "config.yaml")
    kinds = set()
    for task in cfg["evaluate"]["sources"]:
        spec = tasks.task_spec(cfg, task)
        assert spec["shots"] == RUN_EVAL_SH[spec["family"]], task
        kinds.add(spec["kind"])
    assert kinds == {"milic", "sib200", "belebele", "mgsm"}
    assert len(cfg["evaluate"]["shot_seeds"]) == 3


def test_the_mini_generated_tasks_stay_zero_shot():
    cfg = load_config(REPO / "config" / "mini.yaml")
    for task in cfg["evaluate"]["sources"]:
        assert tasks.task_spec(cfg, task)["shots"] == 0, task


def test_tasks_table_shows_five_shots_and_one_per_label_in_three_sets(capsys):
    assert cli(["tasks", "--config", str(REPO / "config" / "config.yaml")]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]
            if not line.startswith("#")]
    shown = {(r[0], r[1]): r[5] for r in rows if len(r) == 7}
    assert shown[("bo", "classification")] == shown[("ta", "classification")] == "1/labelx3"
    for cell in (("bo", "reading_comprehension"), ("bo", "response_selection"), ("bo", "math"),
                 ("te", "reading_comprehension"), ("te", "math")):
        assert shown[cell] == "5x3", cell


def test_every_kind_builds_three_sets_of_the_run_eval_sh_counts(tmp_path):
    cfg = shots_config(tmp_path)
    built = _build(cfg, tmp_path / "tasks")
    assert {m["kind"] for m in built.values()} == {"milic", "sib200", "belebele", "mgsm"}
    for task, meta in built.items():
        lang = meta["language"]
        labels = len({r["answer"] for r in fsutil.read_jsonl(tmp_path / "tasks" / lang
                                                          / f"{task}.test.jsonl")})
        n = _expected_count(meta, labels)
        assert meta["shots"] == RUN_EVAL_SH[meta["family"]] and meta["n_shot"] == n, task
        assert meta["shot_sets"] == ["1", "2", "3"], task
        for k, name in meta["lm_eval_tasks"].items():
            shots = _shots(tmp_path / "tasks", lang, task, k)
            assert len(shots) == n, (task, k)
            y = yaml.safe_load((tmp_path / "tasks" / lang / f"{name}.yaml").read_text()
                               .replace("!function", ""))
            assert y["num_fewshot"] == n, name
            if meta["family"] == "classification":
                assert sorted(r["answer"] for r in shots) == sorted(shots[0]["candidates"])
    # MiLiC-Eval: the first five records of train_k.json, in the file's order
    for task in ("milic_mrc_bo", "milic_response_bo", "milic_math_bo"):
        folder = fx.Path(cfg["evaluate"]["milic_root"]) / "data" / tasks._milic_folder(
            tasks.task_spec(cfg, task)) / "bo"
        for k in ("1", "2", "3"):
            records = json.loads((folder / f"train_{k}.json").read_text(encoding="utf-8"))
            assert [r["id"] for r in _shots(tmp_path / "tasks", "bo", task, k)] == [
                r["id"] for r in records[:5]]
    # Belebele draws its shots from its test items and holds out every one of them
    bele = built["belebele_ben_Beng"]
    assert 5 <= bele["held_out_for_shots"] <= 15
    assert bele["n_items"] + bele["held_out_for_shots"] == BELEBELE_ITEMS


def test_drawn_shot_sets_follow_the_shot_seeds(tmp_path):
    """Benchmarks without shot files draw one set per seed of evaluate.shot_seeds: the same seed
    draws the same set in another run, another seed another set."""
    first = _build(shots_config(tmp_path / "a", seeds=(1, 2, 3)), tmp_path / "a" / "tasks",
                   langs=("bn",))
    second = _build(shots_config(tmp_path / "b", seeds=(3, 7, 9)), tmp_path / "b" / "tasks",
                    langs=("bn",))
    for task in ("belebele_ben_Beng", "mgsm_bn", "sib200_ben_Beng"):
        assert first[task]["shot_sets"] == ["1", "2", "3"]
        assert second[task]["shot_sets"] == ["3", "7", "9"]
        assert list(second[task]["lm_eval_tasks"].values()) == [
            f"{task}_shots{k}" for k in (3, 7, 9)]

        def rows(run, k, task=task):
            return [json.dumps(r, sort_keys=True, ensure_ascii=False)
                    for r in _shots(tmp_path / run / "tasks", "bn", task, k)]

        assert rows("a", 3) == rows("b", 3), task
        assert len({tuple(rows("b", k)) for k in (3, 7, 9)}) == 3, task
        assert tuple(rows("b", 7)) not in {tuple(rows("a", k)) for k in (1, 2, 3)}, task


@pytest.mark.parametrize("where", ["source", "evaluate"])
def test_a_source_or_the_evaluate_section_overrides_the_count(tmp_path, where):
    if where == "source":
        cfg = shots_config(tmp_path, sources={"milic_mrc_bo": {"shots": 2},
                                              "belebele_ben_Beng": {"shots": 3}})
    else:
        cfg = shots_config(tmp_path, shots={"reading_comprehension": 2})
    built = _build(cfg, tmp_path / "tasks")
    assert built["milic_mrc_bo"]["n_shot"] == 2
    assert len(_shots(tmp_path / "tasks", "bo", "milic_mrc_bo", "1")) == 2
    assert built["belebele_ben_Beng"]["n_shot"] == (3 if where == "source" else 2)
    assert built["milic_math_bo"]["n_shot"] == 5  # the others keep run_eval.sh's counts


def test_per_label_for_a_family_without_labels_is_refused_naming_the_key(tmp_path):
    cfg = tiny_config()
    cfg["evaluate"]["shots"] = {"math": "per_label"}
    with pytest.raises(Exception, match=r"evaluate\.shots\.math|shots.*math"):
        validate_config(cfg, "shots test config")
