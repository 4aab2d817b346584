"""What each corpus must hold, in the plan: per language, for each of its budgets, the target
tokens the CT chain reads up to it and the English replay among them; then each corpus's need
and what the data stage prepares with `continual_pretrain.data_margin`.

A budget counts CT tokens (target + English) (lrmerge.config.units). A CT run of budget B reads
ceil(B / seq_len) whole blocks, of which `continual_pretrain.english_ratio` are English
(lrmerge.data.budget), so it reads up to a block more than B. Budgets continue one another: each
budget's counts run from the start of the chain, and the largest budget's target tokens are the
language corpus's need. The English corpus serves every language's replay from its start, so it
needs the most any language's replay reads (the mini's pre-training too, which reads it from the
start as well). The data stage tokenizes the need times the margin, rounded up, or the corpus's
`max_tokens` where that is less.
"""

from __future__ import annotations

from lrmerge.config import language_entry
from lrmerge.config.units import BUDGET_UNIT


def budget_reads(cfg: dict, budget: int) -> tuple[int, int]:
    """(target, English) tokens a CT chain reads up to `budget`: whole blocks, mixed as the data
    stage mixes them."""
    from lrmerge.data.budget import blocks_for, mix_counts

    ct = cfg["continual_pretrain"]
    target, english = mix_counts(blocks_for(budget, ct["seq_len"]), ct["english_ratio"])
    return target * ct["seq_len"], english * ct["seq_len"]


def _prepared(cfg: dict, corpus: str, need: int) -> tuple[int, int | None]:
    """(tokens the data stage prepares for a need, the corpus's max_tokens cap or None)."""
    from lrmerge.data.budget import with_margin

    cap = language_entry(cfg, corpus)["corpus"].get("max_tokens")
    goal = with_margin(need, cfg["continual_pretrain"]["data_margin"])
    return (goal if cap is None else min(goal, int(cap))), cap


def corpus_needs(cfg: dict) -> dict:
    """{"budget_unit", "data_margin", "corpora"}: one entry per language corpus ({"corpus",
    "budgets": [{"budget", "target_tokens", "english_tokens"}], "need", "prepared",
    "max_tokens"}), then the English corpus's ({"corpus": "en", "readers": {reader: tokens},
    "need", "prepared", "max_tokens"})."""
    from lrmerge.data.budget import corpus_tokens_needed

    out = []
    for lang, facts in cfg["languages"].items():
        budgets = []
        for budget in facts["budgets"]:
            target, english = budget_reads(cfg, budget)
            budgets.append({"budget": budget, "target_tokens": target,
                            "english_tokens": english})
        need = corpus_tokens_needed(cfg, lang)[0]
        prepared, cap = _prepared(cfg, lang, need)
        out.append({"corpus": lang, "budgets": budgets, "need": need, "prepared": prepared,
                    "max_tokens": cap})
    need, readers = corpus_tokens_needed(cfg, "en")
    prepared, cap = _prepared(cfg, "en", need)
    out.append({"corpus": "en", "readers": readers, "need": need, "prepared": prepared,
                "max_tokens": cap})
    return {"budget_unit": BUDGET_UNIT, "data_margin": cfg["continual_pretrain"]["data_margin"],
            "corpora": out}


def format_corpora(ct_data: dict) -> list[str]:
    """The plan's lines for the corpora (`corpus_needs`): the reads of each budget, then each
    corpus's need and what the data stage prepares."""
    entries, w = ct_data["corpora"], 16
    lines = [f"CT data: what each budget reads, from the start of its chain (budgets in "
             f"{ct_data['budget_unit']})",
             f"{'CORPUS':<10}{'BUDGET':>{w}}{'TARGET':>{w}}{'ENGLISH':>{w}}"]
    for e in entries:
        for i, b in enumerate(e.get("budgets", [])):
            lines.append(f"{e['corpus'] if i == 0 else '':<10}{b['budget']:>{w},}"
                         f"{b['target_tokens']:>{w},}{b['english_tokens']:>{w},}")
    lines.append(f"{'CORPUS':<10}{'NEED':>{w}}{'PREPARED':>{w}}  (tokens; prepared: the need x "
                 f"data_margin {ct_data['data_margin']:g}, rounded up)")
    for e in entries:
        if e["corpus"] == "en":
            most = max(e["readers"].values(), default=0)
            whose = ", ".join(r for r, n in e["readers"].items() if n == most) or "no reader"
            why = f"English replay: the most any reader takes ({whose})"
        else:
            why = "target text of the largest budget"
        if e["max_tokens"] is not None and e["prepared"] < e["need"]:
            why += (f"; max_tokens {e['max_tokens']:,} is below the need: the data stage fails "
                    "unless allow_repeat")
        elif e["max_tokens"] is not None and e["prepared"] == e["max_tokens"]:
            why += f"; capped by max_tokens {e['max_tokens']:,}"
        lines.append(f"{e['corpus']:<10}{e['need']:>{w},}{e['prepared']:>{w},}  {why}")
    return lines
