"""One unit for a budget everywhere (issue 23 item 8): a budget counts CT tokens, the target
language and the English replay together, and every figure, table description, the plan and the
docs say so in the same words (lrmerge.config.units); characters count target-language text."""

from __future__ import annotations

import json
import re

import pytest
from test_report import REPO, _aggregate, _plot, study  # noqa: F401  (the fixture)

from lrmerge.cli import main as cli
from lrmerge.config.units import BUDGET_UNIT, TARGET_CHARACTERS

# Text that states budgets: the docs, the report's captions and the configs' comments.
TEXTS = [REPO / "README.md", REPO / "docs" / "glossary.md", REPO / "docs" / "workflow.md",
         REPO / "docs" / "slurm.md", REPO / "docs" / "evaluation.md",
         *sorted((REPO / "workflow" / "report").glob("*.rst")),
         REPO / "config" / "config.yaml", REPO / "config" / "mini.yaml",
         REPO / "config" / "pilot.yaml"]


def _words(path) -> str:
    """The file's text with every run of whitespace and YAML comment marks one space."""
    text = path.read_text(encoding="utf-8")
    return " ".join(re.sub(r"\n\s*#", "\n", text).split())


def test_the_unit_is_the_data_stages_mix():
    assert BUDGET_UNIT == "CT tokens (target + English)"
    assert TARGET_CHARACTERS == "characters of target-language text"


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(REPO)))
def test_texts_name_ct_tokens_in_one_wording(path):
    text = _words(path)
    loose = [m.start() for m in re.finditer(r"CT tokens", text)
             if not text.startswith(BUDGET_UNIT, m.start())]
    assert not loose, f"{path}: 'CT tokens' without '(target + English)': " + "; ".join(
        text[max(0, i - 40):i + 40] for i in loose)
    for other in ("continual pre-training tokens", "target and English together",
                  "target text seen"):
        assert other not in text, f"{path}: {other!r}"


def test_the_glossary_and_captions_define_the_unit():
    glossary = _words(REPO / "docs" / "glossary.md")
    budget = glossary[glossary.index("**budget**"):glossary.index("**chain**")]
    assert BUDGET_UNIT in budget and "English replay" in budget
    for caption in ("scores", "saturation", "saturation_family", "discarded", "discarded_modules",
                    "discarded_map", "discarded_table", "discarded_map_table"):
        assert BUDGET_UNIT in _words(REPO / "workflow" / "report" / f"{caption}.rst"), caption
    assert TARGET_CHARACTERS in _words(REPO / "workflow" / "report" / "saturation_characters.rst")
    assert BUDGET_UNIT in _words(REPO / "config" / "config.yaml")  # the "Budgets:" comment


def test_figures_label_budgets_and_characters_in_the_unit(study, monkeypatch):  # noqa: F811
    from lrmerge.report import figures

    config_path, _, run, _ = study
    assert _aggregate(config_path, run) == 0
    drawn: dict[str, dict] = {}
    save = figures._save

    def spy(fig, out_dir, name):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        drawn[name] = {"x": {ax.get_xlabel() for ax in axes if ax.get_xlabel()},
                       "title": fig._suptitle.get_text() if fig._suptitle else ""}
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "_save", spy)
    assert _plot(config_path, run) == 0
    budget_axes = [n for n in drawn if n.startswith("saturation") and n != "saturation_characters"]
    assert len(budget_axes) == 5  # families averaged, and each of the four families
    for name in [*budget_axes, "discarded", "discarded_modules"]:
        assert drawn[name]["x"] == {BUDGET_UNIT}, name
    for name in budget_axes:
        assert BUDGET_UNIT in drawn[name]["title"], name
    assert BUDGET_UNIT in drawn["discarded_map"]["title"]  # its panels are titled by budget
    assert drawn["saturation_characters"]["x"] == {f"{TARGET_CHARACTERS} seen in CT"}
    assert TARGET_CHARACTERS in drawn["saturation_characters"]["title"]


def test_the_plan_states_the_unit(capsys):
    config = str(REPO / "config" / "config.yaml")
    assert cli(["plan", "--config", config, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ct_data"]["budget_unit"] == BUDGET_UNIT
    assert cli(["plan", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"(budgets in {BUDGET_UNIT})" in out
    assert not [m for m in re.finditer("CT tokens", out) if not out.startswith(BUDGET_UNIT,
                                                                               m.start())]


def test_the_plan_of_an_extended_vocabulary_states_the_unit(capsys):
    assert cli(["plan", "--config", str(REPO / "config" / "mini.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"extended vocabularies: the {TARGET_CHARACTERS} each budget ({BUDGET_UNIT})" in out
