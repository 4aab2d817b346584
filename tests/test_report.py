"""The report stage on small synthetic evaluation results and merge statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lrmerge.cli import main
from lrmerge.config import (
    Layout,
    extends_vocabulary,
    load_config,
    plan_merges,
    plan_models,
    tasks_of,
)
from lrmerge.config.layout import ct_id
from lrmerge.data.shards import ShardWriter

REPO = Path(__file__).resolve().parents[1]
MODULES = ["embed", "q_proj", "down_proj", "norm"]
# A classification task's answers over three shot sets of 100 items, no label dominating.
SPREAD = {"politics": 110, "sports": 100, "economy": 85, "<unparsed>": 5}


def write_study(cfg: dict, tmp_path: Path):
    """An eval file per model (task entries as lrmerge evaluate writes them, family from the
    config's sources) and a stats file per merge, for the config `cfg`."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    config = load_config(config_path)
    results = Layout.of(cfg)
    run = tmp_path / results.root
    results = Layout(str(run))
    expected = {}
    sources = config["evaluate"]["sources"]
    for k, model in enumerate(plan_models(config)):
        tasks = {}
        for lang in model.eval_languages:
            for j, task in enumerate(tasks_of(config, lang)):
                sets = {str(s): round(0.25 + 0.01 * k + 0.001 * j + 0.0001 * s, 6)
                        for s in (1, 2, 3)}
                score = sum(sets.values()) / 3
                family = sources[task]["family"]
                tasks[task] = {"task": task, "family": family,
                               "language": lang, "metric": "acc", "score": score,
                               "stderr": 0.02, "n": 100, "per_set": sets, "macro_f1": None,
                               "debris": 0, "predictions": SPREAD if family == "classification"
                               else None}
                expected[(model.id, task)] = score
        path = Path(results.eval(model.id))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": model.id, "tasks": tasks}))
    for m in plan_merges(config):
        names = [f"ct_{lg}" for lg in m.languages] if len(m.languages) > 1 else ["ct"]
        names.append("sft")
        # The SFT share discarded grows with CT tokens, as in the paper.
        frac = {name: 0.05 + m.tokens / 1e5 if name == "sft" else 0.02 for name in names}

        def entries(scale, frac=frac, names=names):
            return [
                {
                    "kept": 1000 * scale,
                    "discarded": round(1000 * scale * frac[n]),
                    "discarded_fraction": round(1000 * scale * frac[n]) / (1000 * scale),
                    "reserved": 0,
                }
                for n in names
            ]

        # per tensor: SFT-flan loses more in the upper layer and in down_proj
        tensors = {"model.embed_tokens.weight": entries(1)}
        for layer in (0, 1):
            for module, tensor in (("q_proj", "self_attn.q_proj"), ("down_proj", "mlp.down_proj")):
                share = {n: f * (1 + layer) * (2 if module == "down_proj" else 1)
                         for n, f in frac.items()}
                tensors[f"model.layers.{layer}.{tensor}.weight"] = entries(1, share)
        stats = {
            "method": m.method,  # the engine method, as lrmerge merge writes it
            "models": names,
            "totals": entries(len(MODULES)),
            "tensors": tensors,
            "by_layer": {"0": entries(len(MODULES))},
            "by_module": {mod: entries(1) for mod in MODULES},
        }
        path = Path(results.summary(m.id))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stats))
    write_text_records(config, results)
    return config_path, config, run, expected


def chars_per_token(config: dict, lang: str) -> float:
    """The fixture's characters per token of a language's token folder: a vocabulary variant
    reads more characters per token than its base."""
    i = list(config["languages"]).index(lang)
    return round(0.5 + 0.25 * i + (1.0 if extends_vocabulary(config, lang) else 0.0), 6)


def write_token_folder(folder: str, tokens: int, characters: int, vocab: int, name: str,
                       prompts: bool = False) -> None:
    """A token folder as lrmerge data corpus (or sft) writes it: 40 documents of zeros whose
    text is `characters` characters (3 bytes each)."""
    lengths = np.full(40, tokens // 40, dtype=np.int64)
    lengths[-1] += tokens - lengths.sum()
    chars = np.full(40, characters // 40, dtype=np.int64)
    chars[-1] += characters - chars.sum()
    writer = ShardWriter(folder, vocab, 10**9, with_prompts=prompts)
    writer.add(np.zeros(tokens, dtype=np.int64), lengths, np.full(40, 3) if prompts else None,
               np.stack([chars, 3 * chars], axis=1))
    writer.finish({"tokenizer": {"name": name, "vocab_size": vocab, "xxh3_128": "0" * 32}})


def write_text_records(config: dict, results: Layout) -> None:
    """What the report reads of the text behind the tokens: a token manifest per language (as
    lrmerge data corpus writes it), a train summary per CT model (target_characters, ...) and a
    vocab_extension.json per extended tokenizer; the English and SFT token folders."""
    write_token_folder(results.tokens("en"), 60000, 240000, 1000, "en")
    write_token_folder(results.tokens("sft"), 30000, 120000, 1000, "sft", prompts=True)
    for lang in config["languages"]:
        cpt = chars_per_token(config, lang)
        tokens = 50000 + 1000 * len(lang)
        characters = round(tokens * cpt)
        vocab = 1000 + (90 if extends_vocabulary(config, lang) else 0)
        write_token_folder(results.tokens(lang), tokens, characters, vocab, lang)
        for n in config["languages"][lang]["budgets"]:
            target = int(n * 0.8)
            chars = int(target * cpt) + 7  # not the estimate: training counts exactly
            path = Path(results.summary(ct_id(lang, n)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({
                "stage": "ct", "lang": lang, "tokens_seen": n, "seq_len": 64,
                "target_tokens_seen": target, "target_characters": chars,
                "target_bytes": 3 * chars,
                "data": {"target": {"blocks": 10**6, "blocks_read": -(-target // 64)}}}))
        if extends_vocabulary(config, lang):
            k = config["languages"][lang]["tokenizer"]["extend"]
            path = Path(results.language_tokenizer(lang)) / "vocab_extension.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({
                "base_vocab_size": 1000, "added": k, "family": "byte_level",
                "corpus": {"documents": 12, "characters": 40000, "bytes": 120000,
                           "tokens_base": 86000, "tokens_extended": 24000}}))
            (path.parent / "tokenizer.json").write_text("{}")


@pytest.fixture
def study(tmp_path):
    """A two-language config (the mini's), an eval file per model and a stats file per merge."""
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    cfg["run_name"] = "synthetic"
    for facts in cfg["languages"].values():
        facts["budgets"] = [1000, 2000, 4000]
    cfg["merge"]["methods"]["average"] = {"weights": [[1.0, 1.0], [1.0, 2.0]]}
    return write_study(cfg, tmp_path)


def _aggregate(config_path, run):
    return main(
        [
            "report",
            "aggregate",
            "--config",
            str(config_path),
            "--results",
            str(run),
            "--scores",
            str(run / "tables" / "scores.csv"),
            "--discarded",
            str(run / "tables" / "discarded.csv"),
            "--discarded-map",
            str(run / "tables" / "discarded_map.csv"),
        ]
    )


def _plot(config_path, run):
    return main(
        [
            "report",
            "plot",
            "--config",
            str(config_path),
            "--scores",
            str(run / "tables" / "scores.csv"),
            "--discarded",
            str(run / "tables" / "discarded.csv"),
            "--discarded-map",
            str(run / "tables" / "discarded_map.csv"),
            "--out-dir",
            str(run / "figures"),
        ]
    )


def test_scores_table_has_one_row_per_model_and_task(study):
    config_path, config, run, expected = study
    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")
    for column in ("model", "method", "language", "tokens", "task", "score"):
        assert column in scores.columns
    assert len(scores) == len(expected)
    got = {(r.model, r.task): r.score for r in scores.itertuples()}
    assert got == pytest.approx(expected)
    assert set(scores["method"]) == {"base", "sft", "ct", "ct_sft", "average", "ties", "ties_sv",
                                     "ties_auto", "chat_vector", "layer_swap"}
    # the averaging grid gives two variants of one method
    assert set(scores.loc[scores["method"] == "average", "variant"]) == {
        "average_w1-1",
        "average_w1-2",
    }
    base = scores[scores["model"] == "base"]
    assert base["tokens"].isna().all() and set(base["task_language"]) == {"bn", "bo", "en"}
    ct = scores[scores["model"] == "ct/bn/2000"]
    assert set(ct["task_language"]) == {"bn", "en"} and (ct["tokens"] == 2000).all()
    multi = scores[scores["language"] == "bn+bo"]
    assert set(multi["task_language"]) == {"bn", "bo", "en"} and set(multi["tokens"]) == {4000}
    assert set(scores.loc[scores["task"] == "topic_bn", "family"]) == {"classification"}
    # the standard error, item count and each shot set's score travel with the score
    row = scores[(scores["model"] == "sft") & (scores["task"] == "math_bo")].iloc[0]
    assert row["stderr"] == 0.02 and row["n"] == 100
    assert row[["score.set1", "score.set2", "score.set3"]].mean() == pytest.approx(row["score"])


def test_report_takes_every_paper_task_family_from_the_eval_metadata(tmp_path):
    """The paper's task names say nothing reliable about their family; the report copies the
    family each eval entry carries (the config's), never a guess from the name."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config_path, config, run, _ = write_study(cfg, tmp_path)
    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")
    families = dict(zip(scores["task"], scores["family"], strict=False))
    sources = config["evaluate"]["sources"]
    configured = {t for facts in config["languages"].values() for t in facts["tasks"]}
    configured |= set(config["english"]["tasks"])
    assert set(families) == configured
    assert families == {t: sources[t]["family"] for t in configured}
    assert families["milic_topic_bo"] == "classification"
    assert families["sib200_tam_Taml"] == "classification"
    assert families["mgsm_te"] == "math"
    assert families["milic_response_mn"] == "response_selection"


def test_discarded_table_lists_each_input_with_modules(study):
    config_path, config, run, _ = study
    _aggregate(config_path, run)
    table = pd.read_csv(run / "tables" / "discarded.csv")
    # average, chat vector and layer swap elect no sign and discard nothing: not in the table
    assert set(table["method"]) == {"ties", "ties_sv", "ties_auto"}
    sft = table[(table["input"] == "sft") & (table["variant"] == "ties")]
    bn = sft[sft["language"] == "bn"].sort_values("tokens")
    assert list(bn["tokens"]) == [1000, 2000, 4000]
    assert list(bn["discarded_fraction"]) == pytest.approx([0.06, 0.07, 0.09])
    for module in MODULES:
        assert f"discarded_fraction.{module}" in table.columns
    # modules in model order, not alphabetical
    cols = [c for c in table.columns if c.startswith("discarded_fraction.")]
    assert cols == [f"discarded_fraction.{m}" for m in MODULES]
    multi = table[table["language"] == "bn+bo"]
    assert set(multi["input"]) == {"ct_bn", "ct_bo", "sft"}


def test_discarded_map_has_each_layer_and_module(study):
    config_path, config, run, _ = study
    _aggregate(config_path, run)
    cells = pd.read_csv(run / "tables" / "discarded_map.csv")
    # the per-tensor counts summed per (layer, module); embeddings belong to no layer
    assert set(zip(cells["layer"], cells["module"], strict=True)) == {
        (0, "q_proj"), (0, "down_proj"), (1, "q_proj"), (1, "down_proj")}
    sft = cells[(cells["variant"] == "ties") & (cells["language"] == "bn")
                & (cells["tokens"] == 2000) & (cells["input"] == "sft")]
    got = {(r.layer, r.module): r.discarded_fraction for r in sft.itertuples()}
    assert got == pytest.approx({(0, "q_proj"): 0.07, (0, "down_proj"): 0.14,
                                 (1, "q_proj"): 0.14, (1, "down_proj"): 0.28})
    assert list(sft["module"]) == ["q_proj", "down_proj", "q_proj", "down_proj"]  # model order
    assert set(cells["variant"]) == {"ties", "ties_sv", "ties_auto"}


def test_map_figures_show_the_ties_merge(study):
    from lrmerge.report import map_variant

    config_path, config, run, _ = study
    _aggregate(config_path, run)
    cells = pd.read_csv(run / "tables" / "discarded_map.csv")
    assert map_variant(cells) == "ties"
    # without a TIES merge: the first sign-electing merge of the config
    methods = config["merge"]["methods"]
    first = next(n for n, spec in methods.items() if n != "ties"
                 and spec.get("method", n) in ("ties_sv", "dare_ties"))
    assert map_variant(cells[cells["variant"] != "ties"]) == first


def test_plot_writes_figures_from_tables_only(study, tmp_path):
    config_path, config, run, _ = study
    _aggregate(config_path, run)
    # Figures come from the tables alone: remove every upstream file first.
    for path in sorted((run / "eval").rglob("*.json")) + sorted((run / "models").rglob("*.json")):
        path.unlink()
    assert _plot(config_path, run) == 0
    names = ["saturation", "discarded", "discarded_map", "discarded_modules"] + [
        f"saturation_{f}"
        for f in ("classification", "reading_comprehension", "response_selection", "math")
    ]
    for name in names:
        png = run / "figures" / f"{name}.png"
        pdf = run / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not list((run / "figures").glob(".*tmp"))


def test_missing_eval_file_is_named(study):
    config_path, config, run, _ = study
    missing = run / "eval" / "ct_sft" / "bo" / "2000.json"
    missing.unlink()
    with pytest.raises(SystemExit, match=r"ct_sft/bo/2000\.json: missing"):
        _aggregate(config_path, run)
    assert not (run / "tables" / "scores.csv").exists()


def test_missing_task_is_named(study):
    config_path, config, run, _ = study
    path = run / "eval" / "sft.json"
    data = json.loads(path.read_text())
    del data["tasks"]["math_bo"]
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"sft\.json: no score for task math_bo"):
        _aggregate(config_path, run)


def test_malformed_stats_are_named(study):
    config_path, config, run, _ = study
    path = run / "models" / "merge" / "ties" / "bn" / "1000" / "merge_stats.json"
    path.write_text(json.dumps({"method": "ties", "models": ["ct", "sft"], "totals": []}))
    with pytest.raises(SystemExit, match=r"ties/bn/1000/merge_stats\.json: no 'by_module'"):
        _aggregate(config_path, run)


def test_eval_entry_without_metadata_is_named(study):
    config_path, config, run, _ = study
    path = run / "eval" / "base.json"
    data = json.loads(path.read_text())
    del data["tasks"]["topic_en"]["family"]
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"base\.json: tasks\.topic_en has no family"):
        _aggregate(config_path, run)
    path.write_text(json.dumps({"results": {"topic_en": {"acc,none": 0.5}}}))
    with pytest.raises(SystemExit, match=r"base\.json: no 'tasks'"):
        _aggregate(config_path, run)


def test_plot_without_tables_is_named(tmp_path, study):
    config_path, *_ = study
    with pytest.raises(SystemExit, match=r"scores\.csv: missing"):
        _plot(config_path, tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------
# Collapsed answers


def test_a_model_answering_one_label_is_flagged(study, capsys):
    config_path, config, run, _ = study
    path = run / "eval" / "ct" / "bn" / "2000.json"
    data = json.loads(path.read_text())
    data["tasks"]["topic_bn"]["predictions"] = {"politics": 2, "sports": 291, "economy": 0,
                                                "<unparsed>": 7}
    path.write_text(json.dumps(data))
    assert _aggregate(config_path, run) == 0
    out = capsys.readouterr().out
    scores = pd.read_csv(run / "tables" / "scores.csv")
    row = scores[(scores["model"] == "ct/bn/2000") & (scores["task"] == "topic_bn")].iloc[0]
    assert row["top_label"] == "sports" and row["top_label_share"] == pytest.approx(0.97)
    assert bool(row["collapsed"]) is True
    cls = scores[scores["family"] == "classification"]
    assert cls["collapsed"].astype(str).value_counts().to_dict() == {"False": len(cls) - 1,
                                                                     "True": 1}
    spread = cls[cls["model"] == "base"].iloc[0]
    assert spread["top_label"] == "politics" and spread["top_label_share"] == pytest.approx(
        110 / 300)
    assert scores.loc[scores["family"] != "classification", "collapsed"].isna().all()
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: collapsed answers: ct/bn/2000 on topic_bn answers 'sports' for "
                        "97% of its items (over evaluate.collapse_share 0.8)"]


def test_collapse_threshold_is_the_config_key(study, tmp_path):
    config_path, config, run, _ = study
    cfg = yaml.safe_load(config_path.read_text())
    cfg.setdefault("evaluate", {})["collapse_share"] = 0.3  # 110/300 of SPREAD is above it
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")
    assert scores.loc[scores["family"] == "classification", "collapsed"].all()


# ----------------------------------------------------------------------------------------------
# A partly failed sweep


def _partial(config_path, *args):
    return main(["report", "partial", "--config", str(config_path), *args])


def test_partial_report_from_the_inputs_that_exist(study, capsys):
    config_path, config, run, expected = study
    gone = [run / "eval" / "ct_sft" / "bo" / "2000.json", run / "eval" / "sft.json",
            run / "models" / "merge" / "ties" / "bn" / "4000" / "merge_stats.json"]
    for path in gone:
        path.unlink()
    # the strict aggregate still refuses
    with pytest.raises(SystemExit, match=r"sft\.json: missing"):
        _aggregate(config_path, run)
    assert _partial(config_path, "--results", str(run)) == 0
    out = capsys.readouterr().out
    part = run / "partial"
    missing = pd.read_csv(part / "missing.csv")
    assert sorted(missing["path"]) == sorted(str(p) for p in gone)
    assert dict(zip(missing["path"], missing["kind"], strict=True)) == {
        str(gone[0]): "eval", str(gone[1]): "eval", str(gone[2]): "merge_stats"}
    assert set(missing["model"]) == {"ct_sft/bo/2000", "sft", "merge/ties/bn/4000"}
    assert f"missing: eval of sft: {gone[1]}: missing (has the job that writes it run?)" in out
    assert "3 inputs missing" in out
    # the tables hold every score that exists and none of the missing models'
    scores = pd.read_csv(part / "tables" / "scores.csv")
    want = {k: v for k, v in expected.items() if k[0] not in ("ct_sft/bo/2000", "sft")}
    assert {(r.model, r.task): r.score for r in scores.itertuples()} == pytest.approx(want)
    discarded = pd.read_csv(part / "tables" / "discarded.csv")
    ties_bn = discarded[(discarded["variant"] == "ties") & (discarded["language"] == "bn")]
    assert sorted(set(ties_bn["tokens"])) == [1000, 2000]
    assert (part / "tables" / "discarded_map.csv").is_file()
    for name in ("saturation", "saturation_classification", "discarded", "discarded_map",
                 "discarded_modules"):
        assert (part / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the workflow's own outputs are not written
    assert not (run / "tables").exists() and not (run / "figures").exists()


def test_partial_report_never_writes_over_the_runs_own_outputs(study):
    config_path, config, run, _ = study
    with pytest.raises(SystemExit, match=r"is the run's own results folder"):
        _partial(config_path, "--results", str(run), "--out-dir", str(run))
    with pytest.raises(SystemExit, match=r"nowhere: no such results folder"):
        _partial(config_path, "--results", str(run / "nowhere"))
    # another folder is the user's choice; with nothing missing the list is empty
    assert _partial(config_path, "--results", str(run), "--out-dir", str(run.parent / "x")) == 0
    assert pd.read_csv(run.parent / "x" / "missing.csv").empty
    assert list(pd.read_csv(run.parent / "x" / "missing.csv").columns) == [
        "kind", "model", "path", "reason"]
