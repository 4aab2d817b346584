"""`lrmerge sources`: every source the config names opened before the sweep, on local copies in the
hubs' own layouts (MC^2's one jsonl a language at the repository root, SlimPajama's
train/chunk<k>/ files whose rows hold meta.redpajama_set_name, RedPajama-Data-1T-Sample's
<subset>_sample.jsonl files, Muennighoff/flan's train/<task>_10templates_train.jsonl, SIB-200's
TSVs, MiLiC-Eval's data/<task>/<lang>/ JSON lists). Offline: hub ids cannot be reached."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import eval_fixtures as fx
import pytest
from stage_helpers import tiny_config, write_config

from lrmerge.cli import main as cli
from lrmerge.config import validate_config
from lrmerge.plan import preflight

TIBETAN = "བོད་ཀྱི་སྐད་ཡིག་ནི་བོད་མིའི་སྐད་ཡིག་ཡིན།"
BENGALI = "বাংলা ভাষা দক্ষিণ এশিয়ার একটি ভাষা।"
SETS = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaArXiv"]


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def mc2(root: Path) -> Path:
    """pkupie/mc2_corpus: bo-crawl-only-release-20231112.jsonl at the repository root, rows
    {title, text, url}."""
    _jsonl(root / "bo-crawl-only-release-20231112.jsonl",
           [{"title": f"ཁ་བྱང་{i}", "text": f"{TIBETAN} {i}", "url": f"tibet.cn/{i}.html"}
            for i in range(8)])
    return root


def slimpajama(root: Path, meta: bool = True) -> Path:
    """cerebras/SlimPajama-627B's layout: train/chunk1/example_train_<i>.jsonl.zst (zstd-compressed
    jsonl), rows {text, meta: {redpajama_set_name}}."""
    import zstandard

    for i in range(2):
        plain = _jsonl(root / f"example_train_{i}.jsonl",
                       [{"text": f"English document {i}-{k}.",
                         **({"meta": {"redpajama_set_name": SETS[(i + k) % 3]}} if meta else {})}
                        for k in range(6)])
        packed = root / "train" / "chunk1" / f"example_train_{i}.jsonl.zst"
        packed.parent.mkdir(parents=True, exist_ok=True)
        packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
        plain.unlink()
    return root


def redpajama_sample(root: Path) -> Path:
    """RedPajama-Data-1T-Sample's data files: <subset>_sample.jsonl at the repository root, rows
    {text, meta} whose meta keys differ per subset; no subset field in the rows."""
    _jsonl(root / "arxiv_sample.jsonl", [{"text": f"\\section{{A}} {i}", "meta": {
        "arxiv_id": f"2101.{i:05d}", "language": "en", "url": f"arxiv.org/{i}"}} for i in range(4)])
    _jsonl(root / "c4_sample.jsonl", [{"text": f"Web page {i}.", "meta": {
        "timestamp": "2019-04-25T12:57:54Z", "url": f"c4.example/{i}"}} for i in range(4)])
    return root


def flan(root: Path) -> Path:
    """Muennighoff/flan's layout: {train,validation}/<task>_10templates_<split>.jsonl, rows
    {inputs, targets, task}."""
    for split in ("train", "validation"):
        for task in ("aeslc", "ag_news_subset"):
            _jsonl(root / split / f"{task}_10templates_{split}.jsonl",
                   [{"inputs": f"{task} question {i}?", "targets": f"answer {i}", "task": task}
                    for i in range(5)])
    return root


def hub_config(root: Path) -> dict:
    """The tiny config with every source a local copy in its hub's layout, validated."""
    cfg = tiny_config()
    src = fx.sources(root)
    fx.milic(root / "milic")
    cfg["evaluate"].update(sources={**cfg["evaluate"]["sources"], **src},
                           milic_root=str(root / "milic"))
    cfg["languages"]["bo"]["tasks"] = [t for t in src if t.endswith("_bo")]
    cfg["languages"]["bn"]["tasks"] = [t for t in src if not t.endswith("_bo")]
    cfg["languages"]["bo"]["corpus"] = {
        "kind": "hf", "path": str(mc2(root / "mc2_corpus")),
        "data_files": "bo-crawl-only-release-20231112.jsonl", "split": "train",
        "text_field": "text", "streaming": True}
    bn = _jsonl(root / "bn.jsonl", [{"text": f"{BENGALI} {i}"} for i in range(6)])
    cfg["languages"]["bn"]["corpus"] = {"kind": "jsonl", "path": str(bn), "text_field": "text"}
    cfg["english"]["corpus"] = {"kind": "hf", "path": str(slimpajama(root / "slimpajama")),
                                "split": "train", "text_field": "text", "streaming": True}
    cfg["sft"]["data"] = {"kind": "hf", "path": str(flan(root / "flan")), "split": "train",
                          "prompt_field": "inputs", "response_field": "targets"}
    return validate_config(cfg, "sources test config")


def with_subsets(cfg: dict, subsets: dict) -> dict:
    """The English corpus with `subsets` (the data stage's mixing keys): set on the validated
    config, which preflight reads as it finds it."""
    cfg = copy.deepcopy(cfg)
    cfg["english"]["corpus"]["subsets"] = subsets
    return cfg


def by_key(checks) -> dict:
    return {c.key: c for c in checks}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return hub_config(root), root


# ----------------------------------------------------------------------------------------------


def test_every_source_in_its_hub_layout_passes(hub):
    cfg, _ = hub
    cfg = with_subsets(cfg, {"field": "meta.redpajama_set_name", "weights": "proportional"})
    cfg["sft"]["data"]["task_field"] = "task"
    checks = by_key(preflight.run_checks(cfg, rows=4))
    ok = {k for k, c in checks.items() if c.status == "ok"}
    assert ok == {"languages.bo.corpus", "languages.bn.corpus", "english.corpus", "sft.data",
                  *(f"evaluate.sources.{t}" for t in cfg["languages"]["bo"]["tasks"]
                    + cfg["languages"]["bn"]["tasks"])}
    # the rest: the mini's generated tasks, nothing to open; the bo-v90 variant reads bo's corpus
    assert {c.status for k, c in checks.items() if k not in ok} == {"skipped"}
    assert "languages.bo-v90.corpus" not in checks
    bo = checks["languages.bo.corpus"].detail
    assert "4 rows" in bo and "fields: title, text, url" in bo and TIBETAN[:10] in bo
    en = checks["english.corpus"].detail
    assert "meta.redpajama_set_name: RedPajamaArXiv, RedPajamaC4, RedPajamaCommonCrawl" in en
    assert "task: aeslc" in checks["sft.data"].detail
    assert "432" not in checks["evaluate.sources.milic_topic_bo"].detail  # read, not published
    assert "6 test items; shot sets 1: 3, 2: 3, 3: 3" in checks[
        "evaluate.sources.milic_topic_bo"].detail
    assert preflight.exit_status(list(checks.values())) == 0
    text = preflight.format_checks(list(checks.values()))
    assert text.splitlines()[-1].startswith(f"{len(checks)} sources: {len(ok)} ok, 0 failed")


def test_each_named_subset_is_its_own_source(hub, tmp_path):
    cfg, _ = hub
    sample = redpajama_sample(tmp_path / "RedPajama-Data-1T-Sample")
    cfg = with_subsets(cfg, {"field": None, "weights": {"arxiv": 2.3, "c4": 14.4}, "sources": {
        name: {"path": "json", "data_files": str(sample / f"{name}_sample.jsonl")}
        for name in ("arxiv", "c4")}})
    checks = by_key(preflight.run_checks(cfg, rows=3, only="corpora"))
    for name in ("arxiv", "c4"):
        check = checks[f"english.corpus.subsets.sources.{name}"]
        assert check.status == "ok", check.detail
        assert check.source.startswith("hf json data_files=") and "3 rows" in check.detail
    assert "english.corpus" not in checks
    assert "arxiv_id" not in checks["english.corpus.subsets.sources.c4"].detail


def test_a_subset_field_the_rows_lack_fails_naming_it(hub, tmp_path):
    cfg, _ = hub
    cfg = with_subsets(cfg, {"field": "meta.redpajama_set_name", "weights": "proportional"})
    cfg["english"]["corpus"]["path"] = str(slimpajama(tmp_path / "no_meta", meta=False))
    check = by_key(preflight.run_checks(cfg, only="corpora"))["english.corpus"]
    assert check.status == "failed"
    assert "no field 'meta.redpajama_set_name' (english.corpus.subsets.field)" in check.detail
    assert "fields present: text" in check.detail


def test_a_missing_text_field_fails_with_exit_1(hub, tmp_path, capsys):
    cfg, _ = hub
    cfg = copy.deepcopy(cfg)
    cfg["languages"]["bo"]["corpus"]["text_field"] = "body"
    path = write_config(tmp_path / "config.yaml", cfg)
    assert cli(["sources", "--config", str(path), "--only", "corpora"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "languages.bo.corpus" in x)
    assert line.startswith("FAILED")
    assert "no field 'body' (languages.bo.corpus.text_field)" in line
    assert "fields present: title, text, url" in line
    assert "1 failed" in out.splitlines()[-1]


def test_a_benchmark_field_the_records_lack_fails(hub):
    cfg, _ = hub
    cfg = copy.deepcopy(cfg)
    cfg["evaluate"]["sources"]["sib200_ben_Beng"]["fields"] = {"label": "topic"}
    check = by_key(preflight.run_checks(cfg, only="benchmarks"))["evaluate.sources.sib200_ben_Beng"]
    assert check.status == "failed"
    assert "has no field 'topic'" in check.detail and "category" in check.detail


def test_a_hub_id_offline_is_unreachable_not_a_failure(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, _ = hub
    cfg = copy.deepcopy(cfg)
    cfg["languages"]["bo"]["corpus"].update(path="pkupie/mc2_corpus")
    cfg["evaluate"]["sources"]["mgsm_bn"]["test"]["data_files"] = (
        "https://raw.githubusercontent.com/google-research/url-nlp/main/mgsm/mgsm_bn.tsv")
    path = write_config(tmp_path / "config.yaml", cfg)
    assert cli(["sources", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {x.split()[1]: x for x in out.splitlines()[:-1]}
    for key in ("languages.bo.corpus", "evaluate.sources.mgsm_bn"):
        assert lines[key].startswith("UNREACHABLE"), lines[key]
    assert "Couldn't reach 'pkupie/mc2_corpus'" in lines["languages.bo.corpus"]
    assert lines["languages.bn.corpus"].startswith("OK")
    summary = out.splitlines()[-1]
    assert "0 failed, 2 not reachable" in summary and summary.endswith(
        "(offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
    assert cli(["sources", "--config", str(path), "--require-online", "--only", "corpora"]) == 1


def test_a_loading_script_is_reported_as_such(hub, tmp_path):
    cfg, _ = hub
    repo = tmp_path / "RedPajama-Data-1T-Sample"
    _jsonl(repo / "c4_sample.jsonl", [{"text": "a page", "meta": {"url": "c4.example"}}])
    (repo / "RedPajama-Data-1T-Sample.py").write_text("import datasets\n", encoding="utf-8")
    cfg = copy.deepcopy(cfg)
    cfg["english"]["corpus"]["path"] = str(repo)
    check = by_key(preflight.run_checks(cfg, only="corpora"))["english.corpus"]
    assert check.status == "failed"
    assert "a loading script (RedPajama-Data-1T-Sample.py) that datasets >= 4 refuses" in (
        check.detail)
    # its data files through the json builder load: the way round the script
    cfg["english"]["corpus"].update(path="json", data_files=str(repo / "c4_sample.jsonl"))
    assert by_key(preflight.run_checks(cfg, only="corpora"))["english.corpus"].status == "ok"


def test_a_gated_repository_is_a_failure_with_the_way_in():
    from datasets.exceptions import DatasetNotFoundError

    gated = DatasetNotFoundError("Dataset 'pkupie/milic-eval' is a gated dataset on the Hub. "
                                 "You must be authenticated to access it.")
    try:
        raise RuntimeError("languages.bo.corpus: load_dataset(...) failed") from gated
    except RuntimeError as e:
        status, reason = preflight.outcome(e, {"path": "pkupie/milic-eval"})
    assert status == "failed"
    assert "is a gated dataset" in reason and "huggingface-cli login" in reason


def test_bad_arguments_are_refused(hub):
    cfg, _ = hub
    with pytest.raises(ValueError, match="--rows must be at least 1"):
        preflight.run_checks(cfg, rows=0)
    with pytest.raises(ValueError, match="--only 'models' is not one of corpora, sft, benchmarks"):
        preflight.run_checks(cfg, only="models")
