"""Which strings a vocabulary extension (lrmerge.data.vocab) may add as tokens: the target
language's own text, so that text without it (English, digits, Latin names inside target text)
segments exactly as under the base tokenizer.

A *target character* is one whose Unicode Script_Extensions name a target script (so the danda
"।", script Common, counts for Bengali, Odia and Telugu, which share it with Devanagari, and so
do the combining marks of script Inherited that name it); any other character of script
Inherited (ZWNJ, the Latin accents) may join target characters but never makes a token without
one. Unicode data come from fontTools.unicodedata (a matplotlib dependency), which
names a character's script and script extensions; the standard library does not.

A new token, read as the bytes it stands for, is allowed when it is
- an optional leading space (the word-start marker: SentencePiece's "▁", byte-level BPE's "Ġ"),
- then whole characters, and under byte-level BPE possibly the first bytes of one more character
  (never the middle of one: in UTF-8 a lead byte only ever starts a character, so such a token
  matches text only where a character of that prefix stands). Every character, and every
  character the partial one can complete to (unassigned code points aside), is a target or an
  Inherited character, and at least one is a target character (a partial one counts when all its
  completions are);
- a digit (general category N, the target's own digits included) only alone: no marker and no
  other character with it. Llama-2 and SmolLM2 give every digit its own token(s); a digit the base
  reads as bytes may become one token, but no token ever spans two digits or a digit and a letter.

So the extended tokenizer's new merges fire only inside runs of target characters, after every
base merge (they rank after them), and text without a target character keeps the base's ids.
Latin as a target script gives up that guarantee for English (the caller records it). The price
under byte-level BPE: a character whose first bytes other scripts' characters share cannot be
built from its bytes (Ol Chiki letters begin as Lepcha's do, Thai letters as the baht sign ฿);
such a character is learned only where the base already holds those bytes as one token.

The target scripts are named, or detected from the sample: counting its letters (general
categories L and M, since an Indic vowel sign is a mark) by script, the script with the most and
every other with DETECT_SHARE of them; Latin only when named.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from fontTools import unicodedata as ucd

LATIN = "Latn"
# Scripts that are no language's own: Common (punctuation, digits, spaces), Inherited (combining
# marks), Unknown (unassigned).
NOT_A_TARGET = frozenset({"Zyyy", "Zinh", "Zzzz"})
# Detected target scripts: besides the script with the most letters, every other (not Latin)
# holding at least this share of the sample's letters (Japanese: Han, Hiragana, Katakana).
DETECT_SHARE = 0.1
SPACE = 0x20


class ScriptError(ValueError):
    """Target scripts that cannot be used as asked (names the script or the sample's letters)."""


def script_code(name: str) -> str:
    """The four-letter code of a Unicode script named by its long name ("Telugu", "Ol_Chiki")."""
    code = ucd.script_code(str(name), default=None)
    if code is None or code in NOT_A_TARGET:
        raise ScriptError(f"{name!r} is not the name of a language's Unicode script (Scripts.txt "
                          "long names: Telugu, Bengali, Tibetan, Cyrillic, Arabic, ...)")
    return code


def script_name(code: str) -> str:
    return ucd.script_name(code)


def letter_counts(texts: Iterable[str]) -> Counter:
    """Letters and marks (general categories L and M: an Indic vowel sign is a mark) of `texts`
    by script code, Common/Inherited/Unknown left out."""
    chars = Counter(c for t in texts for c in t)
    out: Counter = Counter()
    for c, n in chars.items():
        if unicodedata.category(c)[0] in "LM":
            code = ucd.script(c)
            if code not in NOT_A_TARGET:
                out[code] += n
    return out


def detect(counts: Counter) -> list[str]:
    """The target script codes of a sample from its letter counts: the script with the most
    letters and every other non-Latin one with at least DETECT_SHARE of them. Refuses a sample
    without letters and one whose letters are mostly Latin (an extension would then learn English
    and change how English segments: a Latin-script language must name its script)."""
    if not counts:
        raise ScriptError("the sample has no letters of any script to learn tokens from")
    total = sum(counts.values())
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    if ranked[0] == LATIN:
        shares = ", ".join(f"{script_name(c)} {counts[c]}" for c in ranked[:4])
        raise ScriptError(f"the sample's letters are mostly Latin ({shares} of {total} letters): "
                          "tokens learned from it would change how English segments; name the "
                          "language's scripts (tokenizer.scripts), [Latin] if that is its own "
                          "script and English may segment differently")
    return [ranked[0]] + [c for c in ranked[1:]
                          if c != LATIN and counts[c] >= DETECT_SHARE * total]


def _char_class(c: str, targets: frozenset) -> tuple[bool, bool, bool]:
    """(may be in a new token, is a target character, is a digit)."""
    target = bool(ucd.script_extension(c) & targets)
    return target or ucd.script(c) == "Zinh", target, unicodedata.category(c).startswith("N")


def _completions(tail: bytes) -> range | None:
    """The code points whose UTF-8 encoding starts with `tail` (a lead byte and fewer
    continuation bytes than its character needs); None when no character starts so."""
    lead = tail[0]
    n = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 \
        else 0
    if n <= len(tail) or any(b & 0xC0 != 0x80 for b in tail[1:]):
        return None
    value = lead & (0x7F >> n)
    for b in tail[1:]:
        value = (value << 6) | (b & 0x3F)
    free = 6 * (n - len(tail))
    lo, hi = value << free, ((value + 1) << free) - 1
    lo, hi = max(lo, {2: 0x80, 3: 0x800, 4: 0x10000}[n]), min(hi, {2: 0x7FF, 3: 0xFFFF,
                                                                   4: 0x10FFFF}[n])
    return range(lo, hi + 1) if lo <= hi else None


class TokenRule:
    """Whether a new token (as the bytes it stands for) is made of the target scripts'
    characters; see the module docstring. Results are cached per character and per token."""

    def __init__(self, codes: Iterable[str]):
        self.codes = tuple(sorted(set(codes)))
        if not self.codes:
            raise ScriptError("no target script")
        self._targets = frozenset(self.codes)
        self._chars = lru_cache(maxsize=None)(self._char)
        self._tails = lru_cache(maxsize=None)(self._tail)
        self._tokens: dict[bytes, bool] = {}

    @property
    def names(self) -> list[str]:
        return [script_name(c) for c in self.codes]

    @property
    def latin_unchanged(self) -> bool:
        """Whether text without target characters, English included, keeps its segmentation
        (always, unless Latin is a target script)."""
        return LATIN not in self._targets

    def _char(self, c: str) -> tuple[bool, bool, bool]:
        return _char_class(c, self._targets)

    def _tail(self, tail: bytes) -> tuple[bool, bool, bool]:
        """(every completion may be in a token, all are target characters, any is a digit);
        unassigned code points are skipped (no text holds them)."""
        span = _completions(tail)
        if span is None:
            return False, False, False
        all_target, any_digit, seen = True, False, False
        for cp in span:
            if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) == "Cn":
                continue
            ok, target, digit = self._chars(chr(cp))
            if not ok:
                return False, False, False
            seen = True
            all_target &= target
            any_digit |= digit
        return seen, seen and all_target, any_digit

    def allows(self, data: bytes) -> bool:
        """Whether a token standing for the bytes `data` may be added."""
        known = self._tokens.get(data)
        if known is None:
            known = self._tokens[data] = self._allows(data)
        return known

    def _allows(self, data: bytes) -> bool:
        marker = data[:1] == bytes([SPACE])
        body = data[1:] if marker else data
        if not body or body[0] & 0xC0 == 0x80:  # empty, or it starts inside a character
            return False
        cut = len(body)  # the whole characters end here; a partial one may follow
        for back in range(1, min(4, len(body)) + 1):
            b = body[-back]
            if b & 0xC0 != 0x80:  # the last lead byte: is its character complete?
                if b >= 0xC0 and back < (2 if b < 0xE0 else 3 if b < 0xF0 else 4):
                    cut = len(body) - back
                break
        try:
            chars = body[:cut].decode("utf-8")
        except UnicodeDecodeError:
            return False
        slots = [self._chars(c) for c in chars]
        if cut < len(body):
            slots.append(self._tails(body[cut:]))
        if not all(ok for ok, _, _ in slots) or not any(target for _, target, _ in slots):
            return False
        if any(digit for _, _, digit in slots):
            return len(slots) == 1 and not marker
        return True


def rule_for(texts: list[str], names: list[str] | None) -> tuple[TokenRule, dict]:
    """The token rule for a sample: for the scripts named (long names), else for those detected
    from its letters; with what to record (scripts, where they came from, the sample's letters by
    script, whether Latin text keeps its segmentation)."""
    counts = letter_counts(texts)
    if names is not None:
        if not names:
            raise ScriptError("an empty list of scripts; leave the key out to detect them")
        rule, source = TokenRule(script_code(n) for n in names), "config"
    else:
        rule, source = TokenRule(detect(counts)), "sample"
    letters = {script_name(c): n for c, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))}
    return rule, {"scripts": rule.names, "scripts_from": source, "sample_letters": letters,
                  "latin_unchanged": rule.latin_unchanged}
