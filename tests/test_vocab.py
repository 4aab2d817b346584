"""Vocabulary extension (lrmerge.data.vocab, issue 17): K new tokens learned from a language's
corpus, appended to a BPE tokenizer of either family.

Fast tests build a tiny tokenizer of each family with `tokenizers` in the real formats (Llama-2's
byte-fallback BPE: normalizer "▁" + spaces as "▁", no pre-tokenizer, <0xXX> byte tokens; SmolLM2's
byte-level BPE with added tokens at ids 0..) and extend it on a made-up language written in Ol
Chiki letters, a script neither knows. The `real` tests do the same with Llama-2's and SmolLM2's
real tokenizers on UDHR text.

What every extension must hold (check_extension):
- exactly K new ids, base_vocab_size .. base_vocab_size + K - 1; every base token keeps its id and
  the base merges come first, unchanged; added tokens keep their ids;
- text the new tokens do not touch (English) gets the very same ids as from the base;
- each new token is reached by the extended BPE from its own string: model.tokenize(token) == [id];
  where its text is a whole word (a pre-token), encode(text) == [id];
- its pieces are how the base segments its string: base model.tokenize(token) == pieces, and the
  pieces spell the token's bytes exactly (so decode agrees, bytes-wise);
- decode([id]) is its text (under Llama's decoder less the one leading space it strips).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer

from lrmerge.data import vocab
from lrmerge.data.vocab import BYTE_FALLBACK, BYTE_LEVEL, RECORD, SPACE, VocabError

ENGLISH = ["All human beings are born free and equal in dignity and rights.",
           "They are endowed with reason and conscience and should act towards one another.",
           "Everyone has the right to life, liberty and security of person.",
           "No one shall be held in slavery or servitude; slavery shall be prohibited."]
OL_CHIKI = [chr(c) for c in range(0x1C5A, 0x1C78)]  # letters no tiny base has


def made_up_language(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of a made-up language: a Zipf-distributed lexicon of Ol Chiki words, some
    Latin punctuation and digits between them."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(OL_CHIKI) for _ in range(rng.randint(2, 7))) for _ in range(60)]
    weights = [1 / (r + 1) for r in range(len(lexicon))]
    docs = []
    for _ in range(n_docs):
        words = rng.choices(lexicon, weights, k=rng.randint(8, 20))
        docs.append(" ".join(words) + rng.choice([".", ",", " 12.", "!"]))
    return docs


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
    # text without new tokens: the same ids
    for text in untouched:
        assert ext.encode(text).ids == base.encode(text).ids, text
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
    docs = made_up_language(200)
    k = 40
    record = vocab.extend_tokenizer(base_dir, docs, k, tmp_path / "ext")
    check_extension(base_dir, tmp_path / "ext", k, family, ENGLISH + ["12, 12."])
    corpus = record["corpus"]
    assert corpus["documents"] == 200 and corpus["characters"] == sum(map(len, docs))
    assert corpus["tokens_extended"] < corpus["tokens_base"]
    before = vocab.chars_per_token(base_dir, docs)
    after = vocab.chars_per_token(tmp_path / "ext", docs)
    assert after["tokens"] == corpus["tokens_extended"]
    assert after["chars_per_token"] > 2 * before["chars_per_token"]
    if family == BYTE_FALLBACK:
        # Ol Chiki is 3 bytes a letter, all byte fallback in the base
        assert before["byte_fallback_share"] > 0.8 > after["byte_fallback_share"]
        chars = [t for t in record["tokens"] if len(t["token"]) == 1]
        assert chars and all(len(t["pieces"]) == 3 for t in chars)
    else:
        assert "byte_fallback_share" not in before


def test_merges_need_their_characters(tmp_path):
    """Under byte fallback a new merge's parts are base tokens or earlier new tokens, and a new
    single character comes before any merge that uses it."""
    base_dir = write_byte_fallback_base(tmp_path / "base")
    record = vocab.extend_tokenizer(base_dir, made_up_language(200), 60, tmp_path / "ext")
    ext_json = json.loads((tmp_path / "ext" / "tokenizer.json").read_text(encoding="utf-8"))
    base_merges = len(json.loads((base_dir / "tokenizer.json").read_text())["model"]["merges"])
    new_merges = ext_json["model"]["merges"][base_merges:]
    order = {t["token"]: t["id"] for t in record["tokens"]}
    base_vocab = json.loads((base_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(new_merges) == sum(1 for t in record["tokens"] if len(t["token"]) > 1)
    for a, b in new_merges:
        for part in (a, b):
            assert part in base_vocab or order[part] < order[a + b]


def test_deterministic(base, tmp_path):
    family, base_dir = base
    docs = made_up_language(120)
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
    record = vocab.extend_tokenizer(base_dir, made_up_language(100), 10, tmp_path / "ext")
    assert record["base_vocab_size"] == pad + 1
    assert _load(tmp_path / "ext").token_to_id("<pad>") == pad
    check_extension(base_dir, tmp_path / "ext", 10, BYTE_LEVEL, ENGLISH)


def test_output_loads_with_transformers(tmp_path):
    from transformers import AutoTokenizer

    base_dir = write_byte_fallback_base(tmp_path / "base")
    record = vocab.extend_tokenizer(base_dir, made_up_language(100), 20, tmp_path / "ext")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    assert len(hf) == record["base_vocab_size"] + 20
    assert hf.convert_tokens_to_ids(record["tokens"][-1]["token"]) == record["tokens"][-1]["id"]


def test_refusals(tmp_path):
    docs = made_up_language(50)
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
    docs = made_up_language(80)
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
