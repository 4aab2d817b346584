"""Extended vocabularies in the plan: the same characters of target text for fewer tokens.

A CT budget counts CT tokens (target + English); an extended tokenizer (`languages.X.tokenizer:
{extend: K}`) reads the same text in fewer of them. For each extended language the plan gives the
characters of target-language text its budgets buy (their target tokens x characters per token),
and the CT tokens (target + English) and GPU-hours it needs to read the same characters as its
base-tokenizer counterpart's budgets: a variant's `based_on` entry, else the language's own
budgets under the base tokenizer. Same characters = tokens x (characters per token, base) /
(characters per token, extended), at the same target:English mix (the English share scales with
the budget); GPU-hours are the CT chain to the budget (budgets continue one another) at the
model's own FLOPs per token (the extended one K more output rows) and the plan's MFU.

Characters per token, per language, from the first of:
1. measured, in the sweep's results/{run}: the token manifests (`characters_per_token`) of both
   corpora (the extended language's, and its text language's when that one reads with the base
   tokenizer), else the extended tokenizer's `vocab_extension.json` (base and extended tokens of
   the sample it learned from); where neither pair is there, a manifest for one figure;
2. `plan.characters_per_token`: under the text language's code the base tokenizer's figure, under
   a variant's key its extended tokenizer's;
3. unknown until `extend_tokenizer` has run: no ratio is made up.
"""

from __future__ import annotations

from pathlib import Path

from lrmerge import fsutil
from lrmerge.config import Layout, extends_vocabulary, language_entry, text_language
from lrmerge.config.units import BUDGET_UNIT, TARGET_CHARACTERS

from .corpora import budget_reads
from .flops import _duration, _params, extension_rows, train_flops

UNKNOWN = "unknown until `extend_tokenizer` has run"


def _manifest_cpt(layout: Layout, corpus: str) -> tuple[float, str] | None:
    path = Path(layout.manifest(corpus))
    if not path.is_file():
        return None
    doc = fsutil.read_json(path)
    chars, tokens = doc.get("characters"), doc.get("tokens")
    if not chars or not tokens:  # prepared before manifests counted characters
        return None
    return chars / tokens, f"measured: {path}"


def _record_cpt(layout: Layout, lang: str) -> tuple[tuple[float, str], tuple[float, str]] | None:
    from lrmerge.data.vocab import RECORD

    path = Path(layout.language_tokenizer(lang)) / RECORD
    if not path.is_file():
        return None
    c = fsutil.read_json(path).get("corpus") or {}
    chars, base, ext = c.get("characters"), c.get("tokens_base"), c.get("tokens_extended")
    if not chars or not base or not ext:
        return None
    source = f"measured: {path} (the sample it learned from)"
    return (chars / base, source), (chars / ext, source)


def characters_per_token(cfg: dict, lang: str, layout: Layout) -> dict:
    """{"base": (value, source) | None, "extended": (value, source) | None} of an extended
    language: the base model's tokenizer and its own on its text."""
    text = text_language(cfg, lang)
    base_manifest = None if extends_vocabulary(cfg, text) else _manifest_cpt(layout, text)
    ext_manifest = _manifest_cpt(layout, lang)
    if base_manifest and ext_manifest:
        return {"base": base_manifest, "extended": ext_manifest}
    record = _record_cpt(layout, lang)
    if record:
        return {"base": record[0], "extended": record[1]}
    given = cfg["plan"].get("characters_per_token") or {}

    def configured(key: str) -> tuple[float, str] | None:
        if key in given:
            return float(given[key]), f"plan.characters_per_token.{key}"
        return None

    return {"base": base_manifest or configured(text),
            "extended": ext_manifest or (configured(lang) if lang != text else None)}


def same_characters(cfg: dict, sizes: dict, achieved: float,
                    results: str | Path | None = None) -> list[dict]:
    """One entry per extended language (see the module's docstring). `achieved`: CT FLOP/s per
    GPU; `results`: the sweep's results/{run} (default Layout.of(cfg), under the working
    directory)."""
    layout = Layout(str(results)) if results is not None else Layout.of(cfg)
    seq = cfg["continual_pretrain"]["seq_len"]
    base_fpt = train_flops(sizes, seq)
    out = []
    for lang in cfg["languages"]:
        if not extends_vocabulary(cfg, lang):
            continue
        rows = extension_rows(cfg, lang)
        ext_fpt = train_flops(sizes, seq, rows)
        entry = language_entry(cfg, lang)
        text = text_language(cfg, lang)
        ref = entry.get("based_on")
        cpt = characters_per_token(cfg, lang, layout)
        base_cpt, ext_cpt = (cpt[k][0] if cpt[k] else None for k in ("base", "extended"))
        ratio = base_cpt / ext_cpt if base_cpt and ext_cpt else None

        def chars(tokens, per_token):
            return budget_reads(cfg, tokens)[0] * per_token if per_token else None

        def hours(tokens, fpt):
            return tokens * fpt / achieved / 3600

        own = [{"tokens": b, "target_tokens": budget_reads(cfg, b)[0],
                "characters": chars(b, ext_cpt), "device_hours": hours(b, ext_fpt)}
               for b in entry["budgets"]]
        reference = []
        for b in language_entry(cfg, ref)["budgets"] if ref else entry["budgets"]:
            same = None if ratio is None else b * ratio
            reference.append({
                "tokens": b, "target_tokens": budget_reads(cfg, b)[0],
                "characters": chars(b, base_cpt), "device_hours": hours(b, base_fpt),
                "same_characters": {"tokens": same,
                                    "device_hours": None if same is None
                                    else hours(same, ext_fpt)}})
        out.append({
            "lang": lang, "text": text, "extend": rows,
            "tied": bool(sizes.get("tie_word_embeddings", False)),
            "extra_params": _params(sizes, rows)[1] - _params(sizes)[1],
            "ct_flops_per_token": ext_fpt, "base_ct_flops_per_token": base_fpt,
            # the counterpart: a variant's based_on entry; else its own budgets, base tokenizer
            "reference": ref if ref and not extends_vocabulary(cfg, ref)
            else f"{ref or lang} (base tokenizer)",
            "characters_per_token": {
                k: {"value": cpt[k][0], "source": cpt[k][1]} if cpt[k]
                else {"value": None, "source": UNKNOWN} for k in ("base", "extended")},
            "ratio": ratio,
            "budgets": own,
            "reference_budgets": reference})
    return out


def format_vocabulary(entries: list[dict]) -> list[str]:
    """The table's lines for the extended languages (none where there are none)."""
    if not entries:
        return []
    lines = [f"extended vocabularies: the {TARGET_CHARACTERS} each budget ({BUDGET_UNIT}) "
             "buys, and the CT chain's device time to it (GPU-hours where on GPUs)"]
    for e in entries:
        lang, ref = e["lang"], e["reference"]
        lines.append(
            f"  {lang}: {e['text']}'s text, +{e['extend']:,} tokens "
            f"({'tied' if e['tied'] else 'untied'}: +{_count(e['extra_params'])} parameters, "
            f"{e['ct_flops_per_token'] / 1e9:.4g} GFLOP per CT token against "
            f"{e['base_ct_flops_per_token'] / 1e9:.4g})")
        cpt = []
        for key, label in (("base", "base tokenizer"), ("extended", lang)):
            c = e["characters_per_token"][key]
            value = "?" if c["value"] is None else f"{c['value']:.3f}"
            cpt.append(f"{label} {value} ({c['source']})")
        lines.append(f"    characters per token: {'; '.join(cpt)}")
        for b in e["budgets"]:
            lines.append(f"    {lang:<20}{_count(b['tokens']):>7} tokens{_chars(b['characters'])}"
                         f"{_hours(b['device_hours']):>10}")
        for b in e["reference_budgets"]:
            s = b["same_characters"]
            same = ("?" if s["tokens"] is None else
                    f"{_count(s['tokens'])} tokens, {_hours(s['device_hours'])}")
            lines.append(f"    {ref:<20}{_count(b['tokens']):>7} tokens{_chars(b['characters'])}"
                         f"{_hours(b['device_hours']):>10}  -> {lang} for the same characters: "
                         f"{same}")
        if e["ratio"] is None:
            lines.append(f"    ({lang}'s characters per token: {UNKNOWN}; no ratio is assumed)")
    return lines


def _hours(hours: float) -> str:
    return _duration(hours)


def _chars(n: float | None) -> str:
    return f"{'?' if n is None else _count(n):>9} characters"


def _count(n: float) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:,.3g}{unit}"
    return f"{n:,.0f}"
