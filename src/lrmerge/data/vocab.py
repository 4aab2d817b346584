"""Vocabulary extension: K new tokens for a language, learned from its own corpus and appended to a
base model's BPE tokenizer, so that its text costs fewer tokens (Llama-2 reads Telugu at 0.40
characters per token, English at 4.25).

The new tokens come from BPE training *continued from the base tokenizer*: each word of the corpus
(a pre-token, as the base splits text) starts as the base tokenizer segments it, and the most
frequent adjacent pair whose joined string the vocabulary lacks becomes the next merge. Its merge is
appended after the base merges, so the extended tokenizer first segments every word exactly as the
base does (base ids and English segmentation unchanged) and only then applies the new merges, in the
order they were learned; that is what training simulated, so every new token is reached as it was
counted. (Training a fresh BPE on the corpus and appending its merges would learn merges such as
("ab", "c") for words that the base splits as "a" + "bc": they never fire.)

Two families:
- byte-fallback BPE (SentencePiece style, Llama-2): a character the vocabulary lacks is read as its
  UTF-8 byte tokens <0xXX>, which no merge joins. Adding the character itself as a token (one of the
  K) turns those 2-4 tokens into one, and lets merges build on it; a merge that needs a missing
  character adds it first. Its pieces are its byte tokens.
- byte-level BPE (GPT-2 style, SmolLM2): every byte is a base symbol, so every new token is a merge;
  one may end inside a character (its "text" is then null).

Each new token's `pieces` are the base ids that make it up, which is exactly how the base tokenizer
segments its string as one pre-token (the property CT's embedding initialisation relies on: each new
row is the mean of its pieces' rows).

A new token keeps the base's conventions (lrmerge.data.scripts): it is made of the target
language's own characters (its scripts, named or detected from the text) with at most a leading
word-start marker, and a digit is never joined to anything. Without that rule, Telugu text with
numbers taught Llama-2 "▁1", "00", "▁19", ..., and English with numbers segmented differently
(33 of SIB-200's 204 English test sentences, 54 of MGSM's first 60 English questions:
benchmarks/bench_vocab.py); now text without a target character keeps the base's ids.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from lrmerge import fsutil
from lrmerge.data import scripts as target_scripts

RECORD = "vocab_extension.json"
BYTE_FALLBACK = "byte_fallback_bpe"
BYTE_LEVEL = "byte_level_bpe"
SPACE = "\u2581"  # SentencePiece's "▁", a space inside pieces
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Slow-tokenizer files that would still describe the base vocabulary; the extended folder is a
# fast tokenizer (tokenizer.json) only.
STALE_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", RECORD)


class VocabError(ValueError):
    """A vocabulary extension that cannot be done as asked (names the folder, key or count).
    `key`: the tokenizer key at fault (extend, scripts)."""

    def __init__(self, message: str, key: str = "extend"):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------
# The base tokenizer
# --------------------------------------------------------------------------------------------
def _read_base(base_dir: Path) -> tuple[dict, str]:
    """The base tokenizer.json and its family; refuses what is not a BPE of either family."""
    path = base_dir / "tokenizer.json"
    if not path.is_file():
        raise VocabError(f"{base_dir}: no tokenizer.json (a Hugging Face fast tokenizer is needed)")
    data = fsutil.read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise VocabError(f"{path}: model.type is {model.get('type')!r}; only a BPE tokenizer can "
                         "be extended")
    if model.get("byte_fallback"):
        family = BYTE_FALLBACK
    elif _has_byte_level(data.get("pre_tokenizer")):
        family = BYTE_LEVEL
    else:
        raise VocabError(f"{path}: BPE with neither model.byte_fallback nor a ByteLevel "
                         "pre_tokenizer; characters outside its vocabulary would be unknown")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise VocabError(f"{path}: model.continuing_subword_prefix / end_of_word_suffix are set; "
                         "extension supports plain BPE symbols only")
    if model.get("dropout"):
        raise VocabError(f"{path}: model.dropout is {model['dropout']}; BPE dropout makes "
                         "segmentation random")
    return data, family


def _has_byte_level(pre: dict | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre.get("pretokenizers") or [])


def base_vocab_size(data: dict, path: Path) -> int:
    """One more than the highest id the base uses (its BPE vocab and its added tokens): new ids
    go after added tokens that sit at the end (e.g. a <pad> at 32000), so none collide."""
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens") or []]
    size = max(ids) + 1
    if len(set(ids)) != size:
        missing = sorted(set(range(size)) - set(ids))
        raise VocabError(f"{path}: ids {missing[:5]} (of 0..{size - 1}) name no token; new ids "
                         "must follow a contiguous vocabulary")
    return size


def _tokenizer(data: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _pre_tokens(tok, family: str, text: str) -> list[str]:
    """The words of `text` as the base runs BPE on them: normalized, pre-tokenized. Without a
    pre-tokenizer (Llama-2's tokenizer.json) BPE runs over a whole text; SentencePiece never
    merges across a "▁", so words are counted split before each one."""
    if tok.normalizer is not None:
        text = tok.normalizer.normalize_str(text)
    words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)] if tok.pre_tokenizer \
        else [text]
    if family == BYTE_FALLBACK:
        words = [p for w in words for p in re.findall(f"{SPACE}*[^{SPACE}]+|{SPACE}+", w)]
    return words


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _base_symbols(tok, word: str, unk: str | None) -> list[tuple[str, list[int]]]:
    """The base segmentation of one word as (symbol, base ids): under byte fallback the byte
    tokens of one character are joined back into that character (a symbol the vocabulary lacks)."""
    out: list[tuple[str, list[int]]] = []
    pending: list[tuple[int, int]] = []  # (byte, id) of a character read as bytes
    for t in tok.model.tokenize(word):
        m = BYTE_TOKEN.fullmatch(t.value)
        if m is None:
            if pending:
                raise VocabError(f"word {word!r}: byte tokens {[b for b, _ in pending]} are no "
                                 "whole UTF-8 character")
            if unk is not None and t.value == unk:
                raise VocabError(f"word {word!r}: the base tokenizer reads part of it as {unk}")
            out.append((t.value, [t.id]))
            continue
        pending.append((int(m.group(1), 16), t.id))
        if len(pending) == _utf8_length(pending[0][0]):
            char = bytes(b for b, _ in pending).decode("utf-8")
            out.append((char, [i for _, i in pending]))
            pending = []
    if pending:
        raise VocabError(f"word {word!r}: it ends inside a UTF-8 character read as bytes")
    return out


# --------------------------------------------------------------------------------------------
# Learning the new tokens
# --------------------------------------------------------------------------------------------
class _Corpus:
    """Distinct words with counts as lists of symbols, and the counts of adjacent pairs."""

    def __init__(self, words: Counter, segment):
        self.words: list[list[str]] = []
        self.counts: list[int] = []
        self.pieces: dict[str, list[int]] = {}  # symbol -> base ids (base tokens and characters)
        for word in sorted(words):
            symbols = segment(word)
            for s, ids in symbols:
                self.pieces.setdefault(s, ids)
            self.words.append([s for s, _ in symbols])
            self.counts.append(words[word])
        self.pairs: Counter = Counter()
        self.where: dict[tuple[str, str], set[int]] = {}
        self.symbols: Counter = Counter()
        for i in range(len(self.words)):
            self._count(i, +1)

    def _count(self, i: int, sign: int) -> None:
        w, n = self.words[i], self.counts[i]
        for s in w:
            self.symbols[s] += sign * n
        for pair in zip(w, w[1:], strict=False):
            self.pairs[pair] += sign * n
            if sign > 0:
                self.where.setdefault(pair, set()).add(i)

    def merge(self, pair: tuple[str, str]) -> set[tuple[str, str]]:
        """Join every occurrence of `pair` (left to right, as BPE does); the pairs that gained."""
        a, b = pair
        joined = a + b
        touched = set()
        for i in sorted(self.where.pop(pair, ())):
            w = self.words[i]
            if len(w) < 2:
                continue
            self._count(i, -1)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(joined)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            self.words[i] = out
            self._count(i, +1)
            touched.update(p for p in zip(out, out[1:], strict=False) if joined in p)
        self.pairs[pair] = 0
        return touched


def learn_tokens(corpus: _Corpus, family: str, known: set[str], k: int | None,
                 min_frequency: int, allows: Callable[[str], bool]) \
        -> list[tuple[str, tuple[str, str] | None]]:
    """New tokens in order, each (token, merge pair) or (character, None), by greedy continued BPE:
    the step saving the most tokens in the corpus next (a merge: its pair's count; a new character
    under byte fallback: (its UTF-8 bytes - 1) x its count), ties by the token strings. Only
    tokens that `allows` (the target scripts' rule) are learned; a merge that needs a character
    the vocabulary lacks adds that character first (counted among the K, and itself allowed).
    Stops at k tokens, or when no step is seen min_frequency times."""
    vocab = set(known)
    chosen: list[tuple[str, tuple[str, str] | None]] = []
    heap: list = []

    def gain(item) -> int:
        kind, x = item
        if kind == "char":
            return (len(x.encode()) - 1) * corpus.symbols[x] \
                if x not in vocab and allows(x) else 0
        count = corpus.pairs[x]
        if count < min_frequency or x[0] + x[1] in vocab or not allows(x[0] + x[1]):
            return 0
        return count if all(s in vocab or allows(s) for s in x) else 0

    def push(item) -> None:
        g = gain(item)
        if g > 0:
            heapq.heappush(heap, (-g, item[1] if item[0] == "char" else item[1][0] + item[1][1],
                                  item))

    if family == BYTE_FALLBACK:
        for s in sorted(corpus.symbols):
            if s not in vocab and corpus.symbols[s] >= min_frequency:
                push(("char", s))
    for pair in sorted(corpus.pairs):
        push(("pair", pair))
    while heap and (k is None or len(chosen) < k):
        neg, _, item = heapq.heappop(heap)
        g = gain(item)
        if g <= 0:
            continue
        if g != -neg:  # counts fell since it was pushed
            push(item)
            continue
        kind, x = item
        if kind == "char":
            vocab.add(x)
            chosen.append((x, None))
            continue
        missing = [s for s in dict.fromkeys(x) if s not in vocab]
        if any(corpus.symbols[s] < min_frequency for s in missing):
            continue
        if k is not None and len(chosen) + len(missing) + 1 > k:
            continue  # no room for it and the characters it needs
        for s in missing:
            vocab.add(s)
            chosen.append((s, None))
        joined = x[0] + x[1]
        vocab.add(joined)
        chosen.append((joined, x))
        corpus.pieces[joined] = corpus.pieces[x[0]] + corpus.pieces[x[1]]
        for pair in corpus.merge(x):
            push(("pair", pair))
    return chosen


# --------------------------------------------------------------------------------------------
# The extended tokenizer
# --------------------------------------------------------------------------------------------
def _token_bytes(token: str, family: str) -> bytes:
    """The bytes a new token stands for (new tokens are never <0xXX> byte tokens)."""
    if family == BYTE_FALLBACK:
        return token.replace(SPACE, " ").encode()
    table = _byte_level_table()
    return bytes(table[c] for c in token)


def _token_text(token: str, family: str) -> str | None:
    """What the token stands for in running text (None: not whole UTF-8)."""
    if family == BYTE_FALLBACK:
        return token.replace(SPACE, " ")
    return _byte_level_text(token)


def _byte_level_text(token: str) -> str | None:
    try:
        return _token_bytes(token, BYTE_LEVEL).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte <-> printable character map (printable bytes stand for themselves, the rest
    shift to U+0100 onwards)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _extended_json(data: dict, new: list[tuple[str, tuple[str, str] | None]], first_id: int,
                   path: Path) -> dict:
    out = json.loads(json.dumps(data))
    model = out["model"]
    # `tokenizers` gives an added token that the BPE vocab lacks the id after the model's highest
    # when it loads a file, so one at the end (a <pad> at 32000) would move onto a new token's
    # id; naming it in the vocab at its own id keeps it there (no merge ever produces it).
    for added in out.get("added_tokens") or []:
        if added["id"] >= first_id:
            raise VocabError(f"{path}: added token {added['content']!r} has id {added['id']}, "
                             f"where new ids start ({first_id})")
        known = model["vocab"].setdefault(added["content"], added["id"])
        if known != added["id"]:
            raise VocabError(f"{path}: added token {added['content']!r} has id {added['id']} "
                             f"but model.vocab gives it {known}")
    merges = model.get("merges") or []
    as_strings = bool(merges) and isinstance(merges[0], str)
    for i, (token, pair) in enumerate(new):
        model["vocab"][token] = first_id + i
        if pair is None:
            continue
        if as_strings:
            if " " in pair[0] or " " in pair[1]:
                raise VocabError(f"{path}: model.merges are 'a b' strings and new merge {pair} "
                                 "holds a space")
            merges.append(f"{pair[0]} {pair[1]}")
        else:
            merges.append([pair[0], pair[1]])
    model["merges"] = merges
    return out


def _count_tokens(tok, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def extend_tokenizer(base_dir, texts: Iterable[str], k: int, out_dir, *, seed: int = 0,
                     min_frequency: int = 2, scripts: list[str] | None = None,
                     base_identity: dict | None = None) -> dict:
    """Write at out_dir the base tokenizer (folder base_dir) extended by exactly k tokens learned
    from `texts` (the language's documents): base ids unchanged, new ids base_vocab_size ..
    base_vocab_size + k - 1, their merges after the base merges; `vocab_extension.json` beside
    the Hugging Face files records each new token's text and base pieces. Returns that record.
    New tokens are made of the characters of `scripts` (Unicode long names; None: detected from
    the text, lrmerge.data.scripts), so text without them keeps the base's ids; the record names
    the scripts. `seed` is recorded; the learning is deterministic (ties broken by token text), so
    the same inputs give a byte-identical folder. Refuses k < 1, a corpus that yields fewer than k
    tokens seen min_frequency times (saying how many), unknown script names or a text mostly in
    Latin letters without named scripts, and a base that is no BPE tokenizer.json of either
    family. `base_identity` (lrmerge.data.tokenize.tokenizer_identity of the base) is recorded as
    `base_tokenizer`: token folders made with the base read as valid ids here."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise VocabError(f"vocabulary extension of {base_dir}: k must be a whole number >= 1, "
                         f"not {k!r}")
    data, family = _read_base(base_dir)
    path = base_dir / "tokenizer.json"
    first_id = base_vocab_size(data, path)
    docs = [t for t in texts if t]
    rule, script_record = _script_rule(base_dir, docs, scripts)
    tok = _tokenizer(data)
    corpus, new = _learn(tok, data, family, docs, k, min_frequency, rule)
    if len(new) < k:
        raise VocabError(f"vocabulary extension of {base_dir}: the corpus ({len(docs)} documents, "
                         f"{sum(map(len, docs))} characters) yields {len(new)} new tokens "
                         f"({', '.join(rule.names)} script) seen at least {min_frequency} times, "
                         f"fewer than k={k}; lower k or give more text")
    extended = _extended_json(data, new, first_id, path)
    ext_tok = _tokenizer(extended)
    record = {
        "base": str(base_dir), "base_vocab_size": first_id, "added": k, "family": family,
        "seed": seed, "min_frequency": min_frequency, **script_record,
        "base_tokenizer": base_identity,
        "corpus": {"documents": len(docs), "characters": sum(map(len, docs)),
                   "bytes": sum(len(d.encode()) for d in docs),
                   "tokens_base": _count_tokens(tok, docs),
                   "tokens_extended": _count_tokens(ext_tok, docs)},
        "tokens": [{"id": first_id + i, "token": token, "text": _token_text(token, family),
                    "pieces": corpus.pieces[token]} for i, (token, _) in enumerate(new)],
    }
    with fsutil.atomic_dir(out_dir) as tmp:
        for f in sorted(base_dir.iterdir()):
            if f.is_file() and f.name not in STALE_FILES:
                shutil.copyfile(f, tmp / f.name)
        fsutil.write_text(tmp / "tokenizer.json",
                          json.dumps(extended, ensure_ascii=False, indent=2) + "\n")
        fsutil.write_json(tmp / RECORD, record)
    return record


def _script_rule(base_dir: Path, docs: list[str], scripts: list[str] | None):
    try:
        return target_scripts.rule_for(docs, scripts)
    except target_scripts.ScriptError as exc:
        raise VocabError(f"vocabulary extension of {base_dir}: {exc}", key="scripts") from None


def _learn(tok, data: dict, family: str, docs: list[str], k: int | None, min_frequency: int,
           rule: target_scripts.TokenRule):
    words = Counter(w for d in docs for w in _pre_tokens(tok, family, d))
    unk = data["model"].get("unk_token")
    corpus = _Corpus(words, lambda w: _base_symbols(tok, w, unk))
    known = set(data["model"]["vocab"]) | {t["content"] for t in data.get("added_tokens") or []}
    return corpus, learn_tokens(corpus, family, known, k, min_frequency,
                                lambda token: rule.allows(_token_bytes(token, family)))


def available_tokens(base_dir, texts: Iterable[str], *, min_frequency: int = 2,
                     scripts: list[str] | None = None) -> int:
    """How many new tokens the corpus yields at most (the largest k extend_tokenizer accepts)."""
    base_dir = Path(base_dir)
    data, family = _read_base(base_dir)
    docs = [t for t in texts if t]
    rule, _ = _script_rule(base_dir, docs, scripts)
    _, new = _learn(_tokenizer(data), data, family, docs, None, min_frequency, rule)
    return len(new)


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def chars_per_token(tokenizer_dir, texts: Iterable[str]) -> dict:
    """Characters, UTF-8 bytes and tokens of `texts` (no special tokens), characters per token,
    and under byte fallback the share of tokens that are <0xXX> byte tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    docs = [t for t in texts if t]
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encodings)
    chars = sum(map(len, docs))
    out = {"documents": len(docs), "characters": chars,
           "bytes": sum(len(d.encode()) for d in docs), "tokens": tokens,
           "chars_per_token": chars / tokens if tokens else None}
    if json.loads(tok.to_str())["model"].get("byte_fallback"):
        fallback = sum(1 for e in encodings for t in e.tokens if BYTE_TOKEN.fullmatch(t))
        out["byte_fallback_share"] = fallback / tokens if tokens else None
    return out


# --------------------------------------------------------------------------------------------
# A language of the study (the workflow's extend_tokenizer rule)
# --------------------------------------------------------------------------------------------
def extend_language(cfg: dict, lang: str, base_dir, out_dir, log=print) -> dict:
    """`languages.{lang}.tokenizer: {extend: K}`: the base tokenizer extended by K tokens learned
    from the first `sample_chars` characters of the language's corpus (whole documents; all of
    it when it is shorter, which the record says). Returns the record."""
    from lrmerge.config import corpus_key, language_entry
    from lrmerge.data.sources import corpus_documents
    from lrmerge.data.tokenize import load_tokenizer, tokenizer_identity

    if not Path(base_dir).is_dir():  # a hub id: its files in the local cache
        from huggingface_hub import snapshot_download

        base_dir = snapshot_download(str(base_dir), allow_patterns=["*.json", "*.model"])
    identity = tokenizer_identity(load_tokenizer(str(base_dir)))

    spec = language_entry(cfg, lang)["tokenizer"]
    want = spec["sample_chars"]
    docs, chars = [], 0
    for doc in corpus_documents(cfg, lang):
        if chars >= want:
            break
        docs.append(doc)
        chars += len(doc)
    try:
        record = extend_tokenizer(base_dir, docs, spec["extend"], out_dir, seed=cfg["seed"],
                                  min_frequency=spec["min_frequency"], scripts=spec["scripts"],
                                  base_identity=identity)
    except VocabError as exc:
        raise VocabError(f"languages.{lang}.tokenizer.{exc.key}: {exc} (text: "
                         f"{corpus_key(lang)}, {chars} of tokenizer.sample_chars={want} "
                         "characters)", key=exc.key) from None
    c = record["corpus"]
    short = "" if chars >= want else f" (the whole corpus: short of sample_chars={want})"
    log(f"{lang}: {record['added']} new tokens ({record['family']}, "
        f"{', '.join(record['scripts'])} script from the {record['scripts_from']}) from "
        f"{c['documents']} documents, {c['characters']} characters{short}; characters per token "
        f"{c['characters'] / c['tokens_base']:.3f} -> {c['characters'] / c['tokens_extended']:.3f}")
    if not record["latin_unchanged"]:
        log(f"{lang}: Latin is a target script (tokenizer.scripts): English text may segment "
            "differently than under the base")
    return record
