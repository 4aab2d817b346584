"""Which tokens a vocabulary extension may add (lrmerge.data.scripts): the target scripts'
characters with at most a leading word-start marker, digits alone, and under byte-level BPE no
token that can match text outside the target scripts."""

from __future__ import annotations

import pytest

from lrmerge.data.scripts import ScriptError, TokenRule, detect, letter_counts, rule_for

TELUGU = TokenRule(["Telu"])


@pytest.mark.parametrize("text, ok", [
    ("క", True), (" క", True), ("కలు", True),             # letters, with the marker
    ("  క", False), ("క ", False), ("క క", False),         # a marker only at the start
    ("a", False), (" the", False), ("కa", False),          # Latin never, not even joined
    ("1", False), (" 19", False), ("00", False), ("క1", False),  # ASCII digits: base tokens
    ("౧", True), ("౧౨", False), (" ౧", False), ("క౧", False),  # a native digit only alone
    (".", False), ("క.", False), ("క,", False),           # Common punctuation
    ("।", True), ("క।", True),                            # the danda: Telugu in its extensions
    ("\u200c", False), ("క\u200c", True),                 # ZWNJ (Inherited) only with a letter
    ("ক", False), ("কক", False),                          # another Indic script
])
def test_whole_characters(text, ok):
    assert TELUGU.allows(text.encode()) is ok, text


@pytest.mark.parametrize("data, ok", [
    (b"\xe0\xb0", True),            # U+0C00..0C3F: Telugu (or unassigned) only
    (b" \xe0\xb0", True),           # with the marker
    ("క".encode() + b"\xe0\xb0", True),
    (b"\xe0\xb1", True),            # U+0C40..0C7F: vowel signs and the Telugu digits, alone
    (b" \xe0\xb1", False),          # ... a digit may follow: no marker, nothing else with it
    ("క".encode() + b"\xe0\xb1", False),
    (b"\xe0", False),               # U+0800..0FFF: many scripts
    (b"\xb0\x95", False),           # starts inside a character: it could be anyone's
    ("క".encode()[1:], False),
    (b"\xe0\xa6", False),           # Bengali's block
    (b"\xed\xa0", False),           # surrogates: no character
    (b"\xe0\x80", False),           # an overlong prefix
])
def test_partial_characters(data, ok):
    """Byte-level BPE builds a character from its bytes: a token may end inside one when every
    character it can complete to is a target character."""
    assert TELUGU.allows(data) is ok, data


def test_a_prefix_shared_with_another_script_is_refused():
    """Ol Chiki letters share their first two UTF-8 bytes with Lepcha's: a token of those two
    bytes would fire inside Lepcha text, so it is refused (whole letters are fine)."""
    ol_chiki = TokenRule(["Olck"])
    assert "ᱚ".encode()[:2] == "ᱏ".encode()[:2]  # U+1C5A Ol Chiki, U+1C4F Lepcha
    assert not ol_chiki.allows("ᱚ".encode()[:2])
    assert ol_chiki.allows("ᱚ".encode()) and ol_chiki.allows(" ᱚᱛ".encode())
    assert TokenRule(["Olck", "Lepc"]).allows("ᱚ".encode()[:2])


def test_latin_as_a_target():
    latin = TokenRule(["Latn"])
    assert latin.allows(b" the") and not latin.allows(b" 19") and not latin.latin_unchanged
    assert TELUGU.latin_unchanged


def test_detection():
    telugu_with_english = ["తెలుగు భాష Telugu 2024"] * 3  # 9 letters and signs, 6 Latin
    assert detect(letter_counts(telugu_with_english)) == ["Telu"]
    japanese = ["日本語のテキストです。カタカナも。"]
    assert sorted(detect(letter_counts(japanese))) == ["Hani", "Hira", "Kana"]
    # a script under DETECT_SHARE of the letters is left out; Latin is never added
    counts = letter_counts(["ক" * 95 + "క" * 5 + "a" * 40])
    assert detect(counts) == ["Beng"]
    with pytest.raises(ScriptError, match=r"mostly Latin \(Latin 40, Bengali 10 of 50 letters\)"):
        detect(letter_counts(["a" * 40 + "ক" * 10]))
    with pytest.raises(ScriptError, match="no letters"):
        detect(letter_counts(["12, 34."]))


def test_rule_for_records_the_scripts():
    rule, record = rule_for(["తెలుగు భాష English"], None)
    assert record == {"scripts": ["Telugu"], "scripts_from": "sample",
                      "sample_letters": {"Telugu": 9, "Latin": 7}, "latin_unchanged": True}
    rule, record = rule_for(["English only"], ["Telugu", "Bengali"])
    assert record["scripts"] == ["Bengali", "Telugu"] and record["scripts_from"] == "config"
    with pytest.raises(ScriptError, match="'Telgu' is not the name of a language's Unicode script"):
        rule_for(["x"], ["Telgu"])
    with pytest.raises(ScriptError, match="'Common' is not"):
        rule_for(["x"], ["Common"])
    with pytest.raises(ScriptError, match="empty list"):
        rule_for(["x"], [])
