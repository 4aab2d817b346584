"""The report and the vocabulary as a variable of the study (issue 17): tables/vocabulary.csv
(characters per token per language entry, base vs extended), the scores' characters of target
text seen, and the saturation_characters figure where a language and its vocabulary variants
share a panel."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import REPO, _aggregate, _partial, _plot, chars_per_token, write_study

from lrmerge.config import Layout, plan_merges, rule_config
from lrmerge.config.layout import ct_id
from lrmerge.report import figure_names
from lrmerge.report.tables import SCORE_COLUMNS

OLD_SCORE_COLUMNS = [c for c in SCORE_COLUMNS if c not in ("characters", "characters_source")]
OLD_FIGURES = ["saturation", "discarded", "discarded_map", "discarded_modules"] + [
    f"saturation_{f}"
    for f in ("classification", "reading_comprehension", "response_selection", "math")]


def _mini(drop_variant: bool = False) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "mini.yaml").read_text())
    cfg["run_name"] = "synthetic"
    for facts in cfg["languages"].values():
        facts["budgets"] = [1000, 2000, 4000]
    if drop_variant:
        del cfg["languages"]["bo-v90"]
    return cfg


@pytest.fixture
def variant_study(tmp_path):
    """The mini's bn, bo and bo-v90 (bo's text with 90 more tokens), every report input."""
    return write_study(_mini(), tmp_path)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _summary(run: Path, lang: str, tokens: int) -> Path:
    return Path(Layout(str(run)).summary(ct_id(lang, tokens)))


# ----------------------------------------------------------------------------------------------
# tables/vocabulary.csv


def test_vocabulary_table_reads_the_manifests_and_the_extension_record(variant_study):
    config_path, config, run, _ = variant_study
    assert _aggregate(config_path, run) == 0
    table = pd.read_csv(run / "tables" / "vocabulary.csv")
    # one row per language entry, a language and its variants side by side
    assert list(table["language"]) == ["bn", "bo", "bo-v90"]
    assert list(table["text_language"]) == ["bn", "bo", "bo"]
    assert list(table["tokenizer"]) == ["base", "base", "extended +90"]
    layout = Layout(str(run))
    for row in table.itertuples():
        manifest = _json(Path(layout.manifest(row.language)))
        for key in ("documents", "characters", "bytes", "tokens", "characters_per_token"):
            assert getattr(row, key) == manifest[key], (row.language, key)  # exactly
        assert row.vocab_size == manifest["tokenizer"]["vocab_size"]
    bo, v90 = table.iloc[1], table.iloc[2]
    # the same text read with two tokenizers: characters per token against the base entry's
    assert v90["characters_per_token_vs_text_language"] == pytest.approx(
        v90["characters_per_token"] / bo["characters_per_token"])
    assert bo["characters_per_token_vs_text_language"] == pytest.approx(1.0)
    assert v90["characters_per_token"] == pytest.approx(chars_per_token(config, "bo-v90"))
    # the sample the tokenizer learned from, base vs extended (vocab_extension.json)
    record = _json(Path(layout.language_tokenizer("bo-v90")) / "vocab_extension.json")
    sample = record["corpus"]
    assert v90["added"] == record["added"] == 90
    for key in ("documents", "characters", "bytes", "tokens_base", "tokens_extended"):
        assert v90[f"sample_{key}"] == sample[key]
    assert v90["sample_characters_per_token_base"] == pytest.approx(
        sample["characters"] / sample["tokens_base"])
    assert v90["sample_characters_per_token_extended"] == pytest.approx(
        sample["characters"] / sample["tokens_extended"])
    # a base tokenizer has no extension sample
    assert table.loc[table["tokenizer"] == "base", "sample_characters"].isna().all()
    assert table.loc[table["tokenizer"] == "base", "added"].isna().all()


def test_manifest_from_before_text_was_counted_leaves_its_text_empty(variant_study):
    config_path, config, run, _ = variant_study
    path = Path(Layout(str(run)).manifest("bn"))
    manifest = _json(path)
    for key in ("characters", "bytes", "characters_per_token"):
        del manifest[key]
    path.write_text(json.dumps(manifest))
    assert _aggregate(config_path, run) == 0
    bn = pd.read_csv(run / "tables" / "vocabulary.csv").set_index("language").loc["bn"]
    assert bn["tokens"] == manifest["tokens"]
    assert pd.isna(bn["characters"]) and pd.isna(bn["characters_per_token"])


def test_missing_report_inputs_are_named(variant_study):
    config_path, config, run, _ = variant_study
    layout = Layout(str(run))
    record = Path(layout.language_tokenizer("bo-v90")) / "vocab_extension.json"
    record.unlink()
    with pytest.raises(SystemExit, match=r"tokenizers/bo-v90/vocab_extension\.json: missing"):
        _aggregate(config_path, run)
    _summary(run, "bn", 2000).unlink()
    with pytest.raises(SystemExit, match=r"ct/bn/2000/train_summary\.json: missing"):
        _aggregate(config_path, run)
    Path(layout.manifest("bo")).unlink()
    with pytest.raises(SystemExit, match=r"tokens/bo/manifest\.json: missing"):
        _aggregate(config_path, run)
    assert not (run / "tables").exists()
    # a partial report lists them and keeps every score
    assert _partial(config_path, "--results", str(run)) == 0
    missing = pd.read_csv(run / "partial" / "missing.csv")
    assert set(zip(missing["kind"], missing["model"], strict=True)) == {
        ("vocab_extension", "bo-v90"), ("manifest", "bo"), ("train_summary", "ct/bn/2000")}
    scores = pd.read_csv(run / "partial" / "tables" / "scores.csv")
    gone = scores[scores["model"].isin(["ct/bn/2000", "ct_sft/bn/2000", "merge/ties/bn/2000"])]
    assert len(gone) and gone["characters"].isna().all()
    vocabulary = pd.read_csv(run / "partial" / "tables" / "vocabulary.csv")
    assert list(vocabulary["language"]) == ["bn", "bo", "bo-v90"]
    assert (run / "partial" / "figures" / "saturation_characters.png").is_file()


# ----------------------------------------------------------------------------------------------
# The scores' characters of target text seen


def test_characters_are_the_ct_summaries(variant_study):
    config_path, config, run, _ = variant_study
    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    seen = {(lang, n): _json(_summary(run, lang, n))["target_characters"]
            for lang, facts in config["languages"].items() for n in facts["budgets"]}
    # base and SFT-flan saw no target text
    ref = scores[scores["method"].isin(["base", "sft"])]
    assert ref["characters"].isna().all() and ref["characters_source"].isna().all()
    # CT, CT-then-SFT and single-language merges: their CT model's, on every task
    single = {m.id for m in plan_merges(config) if len(m.languages) == 1}
    rows = scores[scores["method"].isin(["ct", "ct_sft"]) | scores["model"].isin(single)]
    assert len(rows)
    for row in rows.itertuples():
        assert row.characters == seen[(row.language, row.tokens)], row.model
        assert row.characters_source == "summary"
    # a variant's models are scored on its base's tasks, with its own text seen
    v90 = scores[scores["model"] == "ct/bo-v90/4000"]
    assert set(v90["task_language"]) == {"bo", "en"}
    assert set(v90["characters"]) == {seen[("bo-v90", 4000)]} != {seen[("bo", 4000)]}
    # a multi-language merge: on each language's tasks, that language's CT model; none on English
    multi = scores[scores["language"] == "bn+bo"]
    for lang in ("bn", "bo"):
        assert set(multi.loc[multi["task_language"] == lang, "characters"]) == {
            seen[(lang, 4000)]}
    assert multi.loc[multi["task_language"] == "en", "characters"].isna().all()


def test_characters_estimated_from_the_manifest_are_labelled(variant_study):
    config_path, config, run, _ = variant_study
    # a summary from before text was counted: null, then absent with only the blocks read
    old = _summary(run, "bo", 2000)
    summary = _json(old)
    summary.update(target_characters=None, target_bytes=None)
    old.write_text(json.dumps(summary))
    older = _summary(run, "bn", 1000)
    summary_bn = _json(older)
    for key in ("target_characters", "target_bytes", "target_tokens_seen"):
        del summary_bn[key]
    older.write_text(json.dumps(summary_bn))
    # and one whose manifest has no text counts either: unknown, never made up
    unknown = _summary(run, "bo-v90", 1000)
    summary_v = _json(unknown)
    summary_v["target_characters"] = None
    unknown.write_text(json.dumps(summary_v))
    manifest_path = Path(Layout(str(run)).manifest("bo-v90"))
    manifest = _json(manifest_path)
    del manifest["characters_per_token"]
    manifest_path.write_text(json.dumps(manifest))

    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")

    def of(model):
        rows = scores[(scores["model"] == model) & (scores["task_language"] != "en")]
        assert len(set(rows["characters"].fillna(-1))) == 1
        return rows.iloc[0]

    cpt = {lang: _json(Path(Layout(str(run)).manifest(lang))).get("characters_per_token")
           for lang in ("bn", "bo")}
    row = of("ct/bo/2000")
    assert row["characters_source"] == "manifest_estimate"
    assert row["characters"] == round(summary["target_tokens_seen"] * cpt["bo"])
    assert of("merge/ties/bo/2000")["characters_source"] == "manifest_estimate"
    row = of("ct_sft/bn/1000")
    blocks = summary_bn["data"]["target"]["blocks_read"] * summary_bn["seq_len"]
    assert row["characters_source"] == "manifest_estimate"
    assert row["characters"] == round(blocks * cpt["bn"])
    row = of("ct/bo-v90/1000")
    assert pd.isna(row["characters"]) and pd.isna(row["characters_source"])
    # the others still come from their summaries
    assert of("ct/bo/4000")["characters_source"] == "summary"
    # the figure marks the estimates
    assert _plot(config_path, run) == 0
    assert (run / "figures" / "saturation_characters.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
# Figures


def _panels(monkeypatch, config_path, run) -> dict[str, list[str]]:
    """figure name -> the titles of its visible panels, as `plot` draws them."""
    from lrmerge.report import figures

    seen: dict[str, list[str]] = {}
    save = figures._save

    def spy(fig, out_dir, name):
        seen[name] = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "_save", spy)
    assert _plot(config_path, run) == 0
    return seen


def test_characters_figure_puts_a_language_and_its_variants_in_one_panel(variant_study,
                                                                         monkeypatch):
    config_path, config, run, _ = variant_study
    _aggregate(config_path, run)
    assert ("saturation_characters", "") in figure_names(config)
    panels = _panels(monkeypatch, config_path, run)
    for fmt, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF-")):
        path = run / "figures" / f"saturation_characters.{fmt}"
        assert path.read_bytes()[: len(magic)] == magic
    assert panels["saturation_characters"] == ["Bengali (bn)", "Tibetan (bo)\nwith bo-v90"]
    # the token figures: a panel per text language too (the variant's curves in bo's)
    assert panels["saturation"] == ["Bengali (bn)", "Tibetan (bo)"]


def test_config_without_variants_keeps_its_tables_and_figures(tmp_path, monkeypatch):
    config_path, config, run, expected = write_study(_mini(drop_variant=True), tmp_path)
    assert _aggregate(config_path, run) == 0
    scores = pd.read_csv(run / "tables" / "scores.csv")
    # the same rows; the old columns first, in their order, then the two new ones
    assert len(scores) == len(expected)
    assert list(scores.columns[: len(OLD_SCORE_COLUMNS)]) == OLD_SCORE_COLUMNS
    assert list(scores.columns[len(OLD_SCORE_COLUMNS):len(SCORE_COLUMNS)]) == [
        "characters", "characters_source"]
    vocabulary = pd.read_csv(run / "tables" / "vocabulary.csv")
    assert list(vocabulary["tokenizer"]) == ["base", "base"]
    assert vocabulary["sample_characters"].isna().all()
    panels = _panels(monkeypatch, config_path, run)
    assert panels["saturation"] == ["Bengali (bn)", "Tibetan (bo)"]
    assert panels["saturation_characters"] == ["Bengali (bn)", "Tibetan (bo)"]
    # the old figures do not depend on the new columns: drawn from a scores table without
    # them, they are the same images
    before = {n: (run / "figures" / f"{n}.png").read_bytes() for n in OLD_FIGURES}
    scores.drop(columns=["characters", "characters_source"]).to_csv(
        run / "tables" / "scores.csv", index=False)
    assert _plot(config_path, run) == 0
    for name in OLD_FIGURES:
        assert (run / "figures" / f"{name}.png").read_bytes() == before[name], name
    # and the new one is still drawn, saying that no characters are known
    assert (run / "figures" / "saturation_characters.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
# What the rules read


def test_report_slices_carry_the_variant_keys(variant_study):
    _, config, _, _ = variant_study
    aggregate = rule_config(config, "aggregate")["languages"]["bo-v90"]
    assert aggregate["based_on"] == "bo" and aggregate["tokenizer"]["extend"] == 90
    assert rule_config(config, "plot")["languages"]["bo-v90"]["based_on"] == "bo"
    # the display name is the figures' only
    assert "name" not in aggregate
