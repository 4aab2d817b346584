"""Vocabulary extension (lrmerge.data.vocab, issue 17): K new tokens learned from a language's
corpus, appended to a BPE tokenizer of either family.

Fast tests build a tiny tokenizer of each family with `tokenizers` in the real formats (Llama-2's
byte-fallback BPE: normalizer "▁" + spaces as "▁", no pre-tokenizer, <0xXX> byte tokens; SmolLM2's
byte-level BPE with added tokens at ids 0..) and extend it on a made-up language written in
Kannada letters, a script neither knows, with digits, numbers and Latin names between its words.
The `real` tests do the same with Llama-2's and SmolLM2's real tokenizers on UDHR text, and on
SIB-200 Telugu and Bengali, against SIB-200's English test sentences and MGSM's English questions.

What every extension must hold (check_extension):
- exactly K new ids, base_vocab_size .. base_vocab_size + K - 1; every base token keeps its id and
  the base merges come first, unchanged; added tokens keep their ids;
- text the new tokens do not touch (English) gets the very same ids as from the base;
- every new token is the target scripts' own text (lrmerge.data.scripts): its characters are the
  recorded scripts' (or Inherited marks), at most a leading space, a digit only alone; so English
  and every digit string segment as under the base;
- each new token is reached by the extended BPE from its own string: model.tokenize(token) == [id];
  where its text is a whole word (a pre-token), encode(text) == [id];
- its pieces are how the base segments its string: base model.tokenize(token) == pieces, and the
  pieces spell the token's bytes exactly (so decode agrees, bytes-wise);
- decode([id]) is its text (under Llama's decoder less the one leading space it strips).
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from fontTools import unicodedata as ucd
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer

from lrmerge.data import vocab
from lrmerge.data.vocab import BYTE_FALLBACK, BYTE_LEVEL, RECORD, SPACE, VocabError

ENGLISH = ["All human beings are born free and equal in dignity and rights.",
           "They are endowed with reason and conscience and should act towards one another.",
           "Everyone has the right to life, liberty and security of person.",
           "No one shall be held in slavery or servitude; slavery shall be prohibited."]
# Letters no tiny base has. Under byte-level BPE an Ol Chiki letter cannot be built from its
# bytes (its first two are Lepcha's too: lrmerge.data.scripts), so byte-level tests use Kannada.
OL_CHIKI = [chr(c) for c in range(0x1C5A, 0x1C78)]
KANNADA = [chr(c) for c in range(0x0C95, 0x0CBA) if unicodedata.category(chr(c)) == "Lo"]
# What real target text holds besides its own words: numbers, Latin names, prices, years.
FOREIGN = ["12", "1999", "2,000", "$80,000", "150%", "3.5", "Anna", "Gingrich", "CEP", "pH",
           "(UN)", "2024-05-01"]
# English with numbers, MGSM-like
ENGLISH_NUMBERS = ["Janet's ducks lay 16 eggs per day and she sells them for $2 each.",
                   "He buys a house for $80,000 and puts in $50,000 in repairs: 150% more.",
                   "In 1999, 2,000 of the 10,000 people (20%) were 19 or 20 years old."]


def made_up_language(n_docs: int, seed: int = 0, letters: list[str] = OL_CHIKI,
                     foreign: float = 0.0) -> list[str]:
    """Documents of a made-up language: a Zipf-distributed lexicon of words in `letters`, some
    Latin punctuation and digits between them; with `foreign`, that share of its words are
    numbers and Latin names (FOREIGN)."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(60)]
    weights = [1 / (r + 1) for r in range(len(lexicon))]
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(FOREIGN) if rng.random() < foreign else w
                 for w in rng.choices(lexicon, weights, k=rng.randint(8, 20))]
        docs.append(" ".join(words) + rng.choice([".", ",", " 12.", "!"]))
    return docs


def target_language(n_docs: int, seed: int = 0) -> list[str]:
    return made_up_language(n_docs, seed, KANNADA, foreign=0.2)


NUMBER_FORMS = ("{}", " {}", "x{}y", "${},", "({})")
# next to letters of the scripts the tests learn (their segmentation changes, not the digits')
TARGET_FORMS = ("ಕ{}", "{}ಕ", " ಕ {}", "క{}", "{}ক")


def digit_strings() -> list[str]:
    """Every number below 1,000 and some long ones, alone, after a space, next to Latin letters
    and punctuation."""
    numbers = [str(i) for i in range(1000)] + ["2024", "12345", "1000000", "3.14159", "80,000"]
    return [form.format(n) for n in numbers for form in NUMBER_FORMS]


def native_digit_strings() -> list[str]:
    """Numbers in ASCII, Kannada, Telugu and Bengali digits, next to target letters, and native
    digits in the forms of digit_strings."""
    native = [str(i).translate(str.maketrans("0123456789", digits))
              for digits in ("೦೧೨೩೪೫೬೭೮೯", "౦౧౨౩౪౫౬౭౮౯", "০১২৩৪৫৬৭৮৯") for i in range(120)]
    return [form.format(n) for n in native for form in NUMBER_FORMS + TARGET_FORMS] + \
        [form.format(i) for i in range(120) for form in TARGET_FORMS]


def assert_digits_alone(tok: Tokenizer, text: str) -> None:
    """No token of `text` holds a digit with any other character (a digit the base reads as bytes
    may have become one token of its own)."""
    enc = tok.encode(text, add_special_tokens=False)
    for start, end in enc.offsets:
        span = text[start:end]
        if any(unicodedata.category(c).startswith("N") for c in span):
            assert len(span) == 1, (text, enc.tokens)


# --------------------------------------------------------------------------------------------
# tiny bases in the real formats
# --------------------------------------------------------------------------------------------
def write_byte_fallback_base(folder: Path) -> Path:
    """A Llama-2-style tokenizer: <unk> <s> </s>, the 256 byte tokens, then a BPE learned on
    English (words marked by "▁"); byte fallback for every other character."""
    trainer_tok = Tokenizer(BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    trainer_tok.train_from_iterator(ENGLISH * 3, BpeTrainer(vocab_size=200, show_progress=False))
    learned = json.loads(trainer_tok.to_str())["model"]
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += sorted(learned["vocab"], key=learned["vocab"].get)
    tok = Tokenizer(BPE(vocab={p: i for i, p in enumerate(pieces)},
                        merges=[tuple(m) for m in learned["merges"]], unk_token="<unk>",
                        fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE),
                                           normalizers.Replace(Regex(" "), SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ("<unk>", "<s>", "</s>")])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizerFast"}\n')
    return folder


def write_byte_level_base(folder: Path, pad_at_end: bool = False) -> Path:
    """A SmolLM2-style byte-level BPE learned on English: <|endoftext|> <|im_start|> <|im_end|>
    at ids 0-2, the 256 byte symbols, merges; with pad_at_end a <pad> added token after the BPE
    vocabulary (as some models append one)."""
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=400, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(ENGLISH * 3, trainer)
    if pad_at_end:
        tok.add_special_tokens(["<pad>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


BASES = {BYTE_FALLBACK: write_byte_fallback_base, BYTE_LEVEL: write_byte_level_base}


@pytest.fixture(params=sorted(BASES))
def base(request, tmp_path) -> tuple[str, Path]:
    return request.param, BASES[request.param](tmp_path / f"base_{request.param}")


# --------------------------------------------------------------------------------------------
# the properties
# --------------------------------------------------------------------------------------------
def _load(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def token_bytes(token: str, family: str) -> bytes:
    """The bytes a vocabulary string stands for (<0xXX> a byte; "▁" a space; byte-level
    symbols mapped back through GPT-2's table)."""
    if family == BYTE_FALLBACK:
        m = vocab.BYTE_TOKEN.fullmatch(token)
        return bytes([int(m.group(1), 16)]) if m else token.replace(SPACE, " ").encode()
    table = vocab._byte_level_table()
    return bytes(table[c] for c in token)


def assert_own_script(record: dict) -> None:
    """Every new token is text of the recorded scripts (see the module docstring)."""
    family = record["family"]
    targets = {ucd.script_code(n) for n in record["scripts"]}
    for t in record["tokens"]:
        data = token_bytes(t["token"], family)
        body = data.removeprefix(b" ")
        assert body and body[0] & 0xC0 != 0x80, t  # never starts inside a character
        if t["text"] is None:  # the first bytes of a character: its whole characters, then
            body = body[:-1] if body[-1] >= 0xC0 else body[:-2] if body[-2] >= 0xE0 else body[:-3]
            assert all(ucd.script_extension(c) & targets for c in body.decode()), t
            continue
        chars = body.decode()
        assert any(ucd.script_extension(c) & targets for c in chars), t
        assert all(ucd.script_extension(c) & targets or ucd.script(c) == "Zinh"
                   for c in chars), t
        if any(unicodedata.category(c).startswith("N") for c in chars):
            assert chars == body.decode() == data.decode() and len(chars) == 1, t


def check_extension(base_dir: Path, out: Path, k: int, family: str, untouched: list[str]) -> dict:
    record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    base_json = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ext_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    n = record["base_vocab_size"]
    assert record["added"] == k == len(record["tokens"])
    assert record["family"] == family
    assert [t["id"] for t in record["tokens"]] == list(range(n, n + k))
    # base ids, merges and added tokens unchanged; exactly k new vocabulary entries
    ext_vocab, base_vocab = ext_json["model"]["vocab"], base_json["model"]["vocab"]
    assert {t: ext_vocab[t] for t in base_vocab} == base_vocab
    added = {t["content"]: t["id"] for t in base_json["added_tokens"]}
    new = {t: i for t, i in ext_vocab.items() if t not in base_vocab and t not in added}
    assert sorted(new.values()) == list(range(n, n + k))
    # added tokens the BPE vocab lacked are named in it at their own ids, nothing else changes
    assert {t: i for t, i in ext_vocab.items() if t not in new} == {**base_vocab, **added}
    base_merges = base_json["model"]["merges"]
    assert ext_json["model"]["merges"][:len(base_merges)] == base_merges
    assert ext_json["added_tokens"] == base_json["added_tokens"]
    base, ext = _load(base_dir), _load(out)
    assert_own_script(record)
    # text without the target scripts (English, numbers): the same ids; digits stay alone
    for text in untouched + digit_strings():
        assert ext.encode(text).ids == base.encode(text).ids, text
    for text in native_digit_strings():
        assert_digits_alone(ext, text)
    for t in record["tokens"]:
        token, tid = t["token"], t["id"]
        assert ext.token_to_id(token) == tid
        assert [x.id for x in ext.model.tokenize(token)] == [tid], token
        assert [x.id for x in base.model.tokenize(token)] == t["pieces"], token
        spelled = b"".join(token_bytes(base.id_to_token(p), family) for p in t["pieces"])
        assert spelled == token_bytes(token, family), token
        if t["text"] is None:
            assert family == BYTE_LEVEL
            with pytest.raises(UnicodeDecodeError):
                token_bytes(token, family).decode("utf-8")
            continue
        assert token_bytes(token, family).decode("utf-8") == t["text"]
        if family == BYTE_FALLBACK:
            assert ext.decode([tid]) == t["text"].removeprefix(" "), token
            if token.startswith(SPACE) and SPACE not in token[1:]:  # a whole word
                assert ext.encode(t["text"][1:], add_special_tokens=False).ids == [tid]
        else:
            assert ext.decode([tid]) == t["text"], token
            if [w for w, _ in ext.pre_tokenizer.pre_tokenize_str(t["text"])] == [token]:
                assert ext.encode(t["text"], add_special_tokens=False).ids == [tid]
    return record


# --------------------------------------------------------------------------------------------
# fast tests
# --------------------------------------------------------------------------------------------
def test_extension_properties(base, tmp_path):
    family, base_dir = base
    docs = target_language(200)
    k = 40
    record = vocab.extend_tokenizer(base_dir, docs, k, tmp_path / "ext")
    check_extension(base_dir, tmp_path / "ext", k, family, ENGLISH + ENGLISH_NUMBERS + FOREIGN)
    assert record["scripts"] == ["Kannada"] and record["scripts_from"] == "sample"
    assert record["latin_unchanged"] is True
    corpus = record["corpus"]
    assert corpus["documents"] == 200 and corpus["characters"] == sum(map(len, docs))
    assert corpus["tokens_extended"] < corpus["tokens_base"]
    before = vocab.chars_per_token(base_dir, docs)
    after = vocab.chars_per_token(tmp_path / "ext", docs)
    assert after["tokens"] == corpus["tokens_extended"]
    assert after["chars_per_token"] > 2 * before["chars_per_token"]
    if family == BYTE_FALLBACK:
        # Kannada is 3 bytes a letter, all byte fallback in the base
        assert before["byte_fallback_share"] > 0.8 > after["byte_fallback_share"]
        chars = [t for t in record["tokens"] if len(t["token"]) == 1]
        assert chars and all(len(t["pieces"]) == 3 for t in chars)
    else:
        assert "byte_fallback_share" not in before


def test_merges_need_their_characters(tmp_path):
    """Under byte fallback a new merge's parts are base tokens or earlier new tokens, and a new
    single character comes before any merge that uses it."""
    base_dir = write_byte_fallback_base(tmp_path / "base")
    record = vocab.extend_tokenizer(base_dir, target_language(200), 60, tmp_path / "ext")
    ext_json = json.loads((tmp_path / "ext" / "tokenizer.json").read_text(encoding="utf-8"))
    base_merges = len(json.loads((base_dir / "tokenizer.json").read_text())["model"]["merges"])
    new_merges = ext_json["model"]["merges"][base_merges:]
    order = {t["token"]: t["id"] for t in record["tokens"]}
    base_vocab = json.loads((base_dir / "tokenizer.json").read_text())["model"]["vocab"]
    chars = [t["token"] for t in record["tokens"] if len(t["token"]) == 1]
    assert len(new_merges) == 60 - len(chars) > 0 and chars
    for a, b in new_merges:
        for part in (a, b):
            assert part in base_vocab or order[part] < order[a + b]
    # merges build on new characters (each came first, above)
    assert all(c not in base_vocab for c in chars)
    assert {c for a, b in new_merges for c in (a, b)} & set(chars)


def test_deterministic(base, tmp_path):
    family, base_dir = base
    docs = target_language(120)
    for name in ("one", "two"):
        vocab.extend_tokenizer(base_dir, docs, 25, tmp_path / name, seed=3)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "tokenizer.json" in files and RECORD in files
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    assert json.loads((tmp_path / "one" / RECORD).read_text())["seed"] == 3


def test_added_token_after_the_vocabulary_keeps_its_id(tmp_path):
    """A <pad> added after the BPE vocabulary keeps its id; the new ids follow it."""
    base_dir = write_byte_level_base(tmp_path / "base", pad_at_end=True)
    pad = _load(base_dir).token_to_id("<pad>")
    assert pad == max(json.loads((base_dir / "tokenizer.json").read_text())["model"]["vocab"]
                      .values()) + 1
    record = vocab.extend_tokenizer(base_dir, target_language(100), 10, tmp_path / "ext")
    assert record["base_vocab_size"] == pad + 1
    assert _load(tmp_path / "ext").token_to_id("<pad>") == pad
    check_extension(base_dir, tmp_path / "ext", 10, BYTE_LEVEL, ENGLISH)


def test_numbers_and_names_keep_the_base_segmentation(base, tmp_path):
    """Target text full of numbers and Latin names, every token it yields learned: none of them
    holds a digit with anything, a Latin letter or punctuation, so English with numbers and every
    digit string segment as under the base (unconstrained BPE learns "▁1", "00", "▁19" here)."""
    family, base_dir = base
    docs = made_up_language(300, seed=5, letters=KANNADA, foreign=0.4)
    k = vocab.available_tokens(base_dir, docs)
    record = vocab.extend_tokenizer(base_dir, docs, k, tmp_path / "ext")
    check_extension(base_dir, tmp_path / "ext", k, family, ENGLISH + ENGLISH_NUMBERS + FOREIGN)
    assert k > 60 and all(t["text"] is None or any(c in KANNADA for c in t["text"])
                          for t in record["tokens"])
    base_tok, ext = _load(base_dir), _load(tmp_path / "ext")

    def covering(tok, doc, start, end):
        enc = tok.encode(doc, add_special_tokens=False)
        return [t for t, (s, e) in zip(enc.tokens, enc.offsets, strict=True) if s < end and e > start]

    seen = 0
    for doc in docs[:80]:  # inside target text too, numbers and names keep the base's tokens
        assert_digits_alone(ext, doc)
        for word in FOREIGN:
            at = doc.find(" " + word + " ") + 1
            if at > 0:
                seen += 1
                span = (at, at + len(word))
                assert covering(ext, doc, *span) == covering(base_tok, doc, *span), (word, doc)
    assert seen > 50


def test_named_scripts(base, tmp_path):
    family, base_dir = base
    docs = target_language(150)
    detected = vocab.extend_tokenizer(base_dir, docs, 20, tmp_path / "detected")
    named = vocab.extend_tokenizer(base_dir, docs, 20, tmp_path / "named", scripts=["Kannada"])
    assert named["scripts_from"] == "config" and detected["scripts_from"] == "sample"
    assert named["tokens"] == detected["tokens"]
    assert named["sample_letters"]["Kannada"] > 4 * named["sample_letters"]["Latin"] > 0
    with pytest.raises(VocabError, match=r"yields 0 new tokens \(Telugu script\)") as err:
        vocab.extend_tokenizer(base_dir, docs, 5, tmp_path / "telugu", scripts=["Telugu"])
    assert err.value.key == "extend"
    with pytest.raises(VocabError, match="'Kanada' is not the name of a language's Unicode "
                                         "script") as err:
        vocab.extend_tokenizer(base_dir, docs, 5, tmp_path / "typo", scripts=["Kanada"])
    assert err.value.key == "scripts"
    assert not (tmp_path / "telugu").exists() and not (tmp_path / "typo").exists()


def test_latin_only_when_named(base, tmp_path):
    """Text mostly in Latin letters is refused (its tokens would change English); named, Latin is
    a target like any other and the record says English may change."""
    family, base_dir = base
    docs = [f"{w} {w}s {w}ing {n}." for w in ("merge", "tokenizer", "corpus", "Telugu")
            for n in range(12)]
    with pytest.raises(VocabError, match=r"mostly Latin .*tokenizer\.scripts") as err:
        vocab.extend_tokenizer(base_dir, docs, 5, tmp_path / "out")
    assert err.value.key == "scripts"
    record = vocab.extend_tokenizer(base_dir, docs, 5, tmp_path / "out", scripts=["Latin"])
    assert record["scripts"] == ["Latin"] and record["latin_unchanged"] is False
    assert_own_script(record)
    base_tok, ext = _load(base_dir), _load(tmp_path / "out")
    assert any(ext.encode(d).ids != base_tok.encode(d).ids for d in docs)
    for text in digit_strings()[:500]:
        assert ext.encode(text).ids == base_tok.encode(text).ids, text


def test_byte_level_builds_no_character_other_scripts_begin_alike(tmp_path):
    """Ol Chiki letters begin with the bytes Lepcha's do: a byte-level base can learn none of
    them (a token of those bytes would change Lepcha text); byte fallback adds whole letters."""
    docs = made_up_language(100)
    level = write_byte_level_base(tmp_path / "level")
    assert vocab.available_tokens(level, docs) == 0
    assert vocab.available_tokens(level, docs, scripts=["Ol_Chiki", "Lepcha"]) > 20
    fallback = write_byte_fallback_base(tmp_path / "fallback")
    assert vocab.available_tokens(fallback, docs) > 20


def test_output_loads_with_transformers(tmp_path):
    from transformers import AutoTokenizer

    base_dir = write_byte_fallback_base(tmp_path / "base")
    record = vocab.extend_tokenizer(base_dir, target_language(100), 20, tmp_path / "ext")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    assert len(hf) == record["base_vocab_size"] + 20
    assert hf.convert_tokens_to_ids(record["tokens"][-1]["token"]) == record["tokens"][-1]["id"]


def test_refusals(tmp_path):
    docs = target_language(50)
    base_dir = write_byte_fallback_base(tmp_path / "base")
    for bad_k in (0, -3, 2.5, True):
        with pytest.raises(VocabError, match="k must be a whole number"):
            vocab.extend_tokenizer(base_dir, docs, bad_k, tmp_path / "out")
    most = vocab.available_tokens(base_dir, docs)
    with pytest.raises(VocabError, match=rf"yields {most} new tokens .* fewer than k={most + 1}"):
        vocab.extend_tokenizer(base_dir, docs, most + 1, tmp_path / "out")
    vocab.extend_tokenizer(base_dir, docs, most, tmp_path / "out")  # the most it yields is fine
    with pytest.raises(VocabError, match="no tokenizer.json"):
        vocab.extend_tokenizer(tmp_path / "nowhere", docs, 5, tmp_path / "out2")
    word_level = tmp_path / "wordlevel"
    word_level.mkdir()
    Tokenizer(WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(
        str(word_level / "tokenizer.json"))
    with pytest.raises(VocabError, match=r"wordlevel/tokenizer.json: model.type is 'WordLevel'"):
        vocab.extend_tokenizer(word_level, docs, 5, tmp_path / "out3")
    plain = tmp_path / "plain_bpe"
    plain.mkdir()
    Tokenizer(BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")])).save(str(plain / "tokenizer.json"))
    with pytest.raises(VocabError, match="neither model.byte_fallback nor a ByteLevel"):
        vocab.extend_tokenizer(plain, docs, 5, tmp_path / "out4")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_failed_extension_leaves_old_output(tmp_path):
    """The folder is written atomically: a refused run leaves the previous output whole."""
    base_dir = write_byte_level_base(tmp_path / "base")
    docs = target_language(80)
    vocab.extend_tokenizer(base_dir, docs, 5, tmp_path / "ext")
    before = (tmp_path / "ext" / "tokenizer.json").read_bytes()
    with pytest.raises(VocabError):
        vocab.extend_tokenizer(base_dir, docs[:2], 10_000, tmp_path / "ext")
    assert (tmp_path / "ext" / "tokenizer.json").read_bytes() == before


# --------------------------------------------------------------------------------------------
# real tokenizers on real text (make test-real)
# --------------------------------------------------------------------------------------------
REAL_LANGUAGES = ["ben", "tel", "tam", "bod", "khk", "uig_arab"]  # UDHR files (khk_mong: 1 <p>)
REAL_K = 150


@pytest.fixture(scope="module")
def real_bases() -> dict[str, tuple[str, Path]]:
    from llama2_tokenizer import llama2_tokenizer_dir, smollm2_tokenizer_dir

    return {"llama2": (BYTE_FALLBACK, llama2_tokenizer_dir()),
            "smollm2": (BYTE_LEVEL, smollm2_tokenizer_dir())}


@pytest.mark.real
@pytest.mark.parametrize("model", ["llama2", "smollm2"])
@pytest.mark.parametrize("code", REAL_LANGUAGES)
def test_real_extension(real_bases, model, code, tmp_path):
    from real_assets import udhr_paragraphs, udhr_split

    family, base_dir = real_bases[model]
    train, held_out = udhr_split(code)
    english = udhr_paragraphs("eng")[:20]
    record = vocab.extend_tokenizer(base_dir, train, REAL_K, tmp_path / "ext")
    check_extension(base_dir, tmp_path / "ext", REAL_K, family, english)
    assert record["base_vocab_size"] == {"llama2": 32000, "smollm2": 49152}[model]
    before = vocab.chars_per_token(base_dir, held_out)
    after = vocab.chars_per_token(tmp_path / "ext", held_out)
    assert after["tokens"] < before["tokens"], (before, after)
    if family == BYTE_FALLBACK and before["byte_fallback_share"] > 0.5:
        assert after["byte_fallback_share"] < before["byte_fallback_share"] / 2


@pytest.mark.real
def test_real_deterministic(real_bases, tmp_path):
    from real_assets import udhr_paragraphs

    family, base_dir = real_bases["llama2"]
    for name in ("one", "two"):
        vocab.extend_tokenizer(base_dir, udhr_paragraphs("tel"), 300, tmp_path / name)
    for f in ("tokenizer.json", RECORD):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()


# Unconstrained, these extensions learned "▁1", "00", "▁19", ...: 31-33 of these 204 English
# sentences and 49-56 of these 60 questions then segmented differently (either base, either
# language).
CONVENTION_K = {"llama2": 1000, "smollm2": 250}


@pytest.mark.real
@pytest.mark.parametrize("model", ["llama2", "smollm2"])
@pytest.mark.parametrize("lang, udhr, mgsm, script", [("tel_Telu", "tel", "te", "Telugu"),
                                                      ("ben_Beng", "ben", "bn", "Bengali")])
def test_real_english_and_numbers_unchanged(real_bases, model, lang, udhr, mgsm, script,
                                            tmp_path):
    """Extended from real Telugu / Bengali (UDHR and SIB-200 dev: numbers, Latin names), every
    SIB-200 English test sentence, every MGSM English question and every digit string segment as
    under the base; digits in MGSM's Telugu / Bengali questions stay alone; the language still
    gains on held-out text (UDHR paragraphs, SIB-200 test, MGSM)."""
    from real_assets import mgsm_questions, sib200_sentences, udhr_split

    family, base_dir = real_bases[model]
    udhr_train, udhr_held = udhr_split(udhr)
    train = udhr_train + sib200_sentences(lang, "dev")
    held_out = udhr_held + sib200_sentences(lang, "test") + mgsm_questions(mgsm)
    english = sib200_sentences("eng_Latn", "test") + mgsm_questions("en")
    assert len(english) == 264 and sum(any(c.isdigit() for c in t) for t in english) > 60
    k = CONVENTION_K[model]
    record = vocab.extend_tokenizer(base_dir, train, k, tmp_path / "ext")
    assert record["scripts"] == [script] and record["scripts_from"] == "sample"
    check_extension(base_dir, tmp_path / "ext", k, family, english)
    ext = _load(tmp_path / "ext")
    for question in mgsm_questions(mgsm):
        assert_digits_alone(ext, question)
    before = vocab.chars_per_token(base_dir, held_out)
    after = vocab.chars_per_token(tmp_path / "ext", held_out)
    assert after["chars_per_token"] > 1.5 * before["chars_per_token"], (before, after)
