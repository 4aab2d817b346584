"""The data stage with the two real tokenizer families (`make test-real`): Llama-2's
SentencePiece-style BPE with byte fallback (BOS by its template, EOS </s>) and SmolLM2's
byte-level BPE (no BOS, EOS <|im_end|>, pre-training's separator <|endoftext|>), on real text
(the UDHR). Each CT document and SFT example is framed exactly as `data` in the config says, the
manifest records it, and budgets count the tokens the real tokenizer produces."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from llama2_tokenizer import js_encode, llama2_tokenizer_dir, smollm2_tokenizer_dir
from real_assets import udhr_corpus, udhr_paragraphs
from stage_helpers import quiet, tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import validate_config
from lrmerge.data import sft, tokenize
from lrmerge.data.shards import TokenShards
from lrmerge.data.sources import corpus_documents
from lrmerge.train.stream import Packed, data_pad_id

pytestmark = pytest.mark.real

# language code in the config -> UDHR file
UDHR_CODES = {"bn": "ben", "te": "tel", "bo": "bod", "en": "eng"}
# strings the two Llama-2 encoders are compared on, besides the UDHR paragraphs
EDGE_CASES = ["Hello world", "grabbed", " grabbed", "           grabbed", "\n", " \n", "a  b   c",
              "\ttabs\t\t\t\tout here", "ax\n####\nboo", "镇", "🦙", "🦙Ꙋ", "Ꙋ🦙",
              "emoji 👩‍👩‍👧 🇧🇩 ✊🏾 done", "mixed বাংলা and తెలుగు and བོད་ in one line",
              "trailing space ", "  two leading", "line one\nline two\n\nline four", "12,345.67%"]


@pytest.fixture(scope="module")
def toks() -> dict[str, str]:
    return {"llama2": str(llama2_tokenizer_dir()), "smollm2": str(smollm2_tokenizer_dir())}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("udhr")
    return {lang: str(udhr_corpus(code, root / f"{code}.jsonl"))
            for lang, code in UDHR_CODES.items()}


def _config(corpora: dict[str, str], budget: int = 10**6, allow_repeat: bool = True,
            **data) -> dict:
    """The tiny config with the UDHR as the corpus of bn, te, bo and English."""
    cfg = tiny_config(data=data)
    cfg["languages"] = {}
    for lang in ("bn", "te", "bo"):
        cfg["languages"][lang] = {
            "name": lang, "budgets": [budget], "tasks": [f"topic_{lang}"],
            "corpus": {"kind": "jsonl", "path": corpora[lang], "allow_repeat": allow_repeat}}
        cfg["evaluate"]["sources"][f"topic_{lang}"] = {"kind": "generated",
                                                       "family": "classification"}
    cfg["english"]["corpus"] = {"kind": "jsonl", "path": corpora["en"], "allow_repeat": True}
    return validate_config(cfg, "real tokenizer test config")


def _documents(folder) -> list[list[int]]:
    s = TokenShards(folder)
    ids = s.slice(0, s.tokens).tolist()
    return [ids[a:b] for a, b in zip([0, *s.doc_ends[:-1]], s.doc_ends, strict=True)]


def _plain(tok_dir: str, texts: list[str]) -> list[list[int]]:
    tok = tokenize.load_tokenizer(tok_dir)
    return tok(texts, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------
# The tokenizers themselves
# --------------------------------------------------------------------------------------------
def test_llama2_rebuild_gives_the_js_tokenizers_ids(toks):
    codes = ["ben", "tel", "bod", "tam", "uig_arab", "khk", "hin", "cmn_hans", "eng"]
    texts = [p for code in codes for p in udhr_paragraphs(code)] + EDGE_CASES
    assert len(texts) > 400
    tok = tokenize.load_tokenizer(toks["llama2"])
    mine = tok(texts)["input_ids"]
    reference = js_encode(texts)
    wrong = [(t, a, b) for t, a, b in zip(texts, mine, reference, strict=True) if a != b]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, first: {wrong[0]}"
    assert [tok.decode(x, skip_special_tokens=True) for x in mine] == texts


def test_the_known_facts_of_both_tokenizers(toks):
    llama = tokenize.load_tokenizer(toks["llama2"])
    assert len(llama) == 32000
    assert llama("Hello world")["input_ids"] == [1, 15043, 3186]
    assert (llama.bos_token, llama.bos_token_id, llama.eos_token, llama.eos_token_id,
            llama.unk_token_id) == ("<s>", 1, "</s>", 2, 0)
    assert llama("🦙")["input_ids"] == [1, 29871, 243, 162, 169, 156]  # bytes F0 9F A6 99 + 3
    smol = tokenize.load_tokenizer(toks["smollm2"])
    assert len(smol) == 49152
    assert (smol.eos_token, smol.eos_token_id) == ("<|im_end|>", 2)
    assert smol.convert_tokens_to_ids("<|endoftext|>") == 0
    plain = smol("Hello world", add_special_tokens=False)["input_ids"]
    assert smol("Hello world")["input_ids"] == plain  # no BOS added to plain text
    assert plain == [19556, 905]


# --------------------------------------------------------------------------------------------
# Framing: separator, BOS, pad
# --------------------------------------------------------------------------------------------
FRAMINGS = [  # tokenizer, data section, BOS id added (None: none), separator id
    ("llama2", {}, 1, 2),  # its template's <s>, its EOS </s>
    ("llama2", {"add_bos": False}, None, 2),
    ("llama2", {"document_separator": "</s>", "pad": "<unk>"}, 1, 2),
    ("smollm2", {}, None, 2),  # its EOS <|im_end|>, no BOS
    ("smollm2", {"document_separator": "<|endoftext|>"}, None, 0),  # as in its pre-training
    ("smollm2", {"document_separator": "<|endoftext|>", "add_bos": True}, 1, 0),  # <|im_start|>
]


@pytest.mark.parametrize(("name", "data", "bos", "sep"), FRAMINGS)
def test_each_document_is_framed_exactly_as_configured(tmp_path, toks, corpora, name, data, bos,
                                                       sep):
    cfg = _config(corpora, **data)
    m = tokenize.prepare_corpus(cfg, "bn", toks[name], tmp_path / "bn", log=quiet)
    texts = list(corpus_documents(cfg, "bn"))  # the data stage's seeded order
    assert sorted(texts) == sorted(udhr_paragraphs("ben"))
    docs = _documents(tmp_path / "bn")
    head = [bos] if bos is not None else []
    assert docs == [head + ids + [sep] for ids in _plain(toks[name], texts)]
    # exactly one separator, at the end; a BOS only where configured
    assert all(d.count(sep) == 1 and d[-1] == sep for d in docs)
    assert sum(d[0] == bos for d in docs) == (len(docs) if bos is not None else 0)
    tok = tokenize.load_tokenizer(toks[name])
    assert m["separator"] == {"token": tok.convert_ids_to_tokens(sep), "id": sep,
                              "config": data.get("document_separator", "eos")}
    assert m["bos"] == {"token": tok.bos_token, "id": tok.bos_token_id,
                        "added": bos is not None, "config": data.get("add_bos", "auto")}
    pad = tok.convert_tokens_to_ids(data["pad"]) if "pad" in data else sep
    assert m["pad"]["id"] == pad == data_pad_id(TokenShards(tmp_path / "bn"))
    on_disk = json.loads((tmp_path / "bn" / "manifest.json").read_text())
    assert on_disk["separator"] == m["separator"] and on_disk["bos"] == m["bos"]
    if name == "llama2" and bos is not None:  # the JS tokenizer's own ids, </s> after each
        assert docs == [ids + [2] for ids in js_encode(texts)]


def test_an_unknown_separator_is_refused_naming_the_key(tmp_path, toks, corpora, capsys):
    for name, token in [("smollm2", "<|endoftxt|>"), ("llama2", "<|endoftext|>"),
                        ("llama2", "▁the▁end")]:
        with pytest.raises(ValueError, match=r"config key data\.document_separator: "
                                             rf"'{re.escape(token)}' is not a single token"):
            tokenize.prepare_corpus(_config(corpora, document_separator=token), "bn", toks[name],
                                    tmp_path / "bn", log=quiet)
    cfg_path = write_config(tmp_path / "c.yaml", _config(corpora, document_separator="<eot>"))
    for cmd in (["corpus", "--lang", "bn"], ["sft"]):
        assert cli(["data", *cmd, "--config", str(cfg_path), "--tokenizer", toks["smollm2"],
                    "--out", str(tmp_path / "out")]) == 2
        assert "data.document_separator: '<eot>' is not a single token" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written


@pytest.mark.parametrize(("name", "data", "bos", "sep"), [FRAMINGS[0], FRAMINGS[4]])
def test_sft_examples_end_with_the_separator_and_pad_with_the_pad(tmp_path, toks, corpora, name,
                                                                  data, bos, sep):
    prompts, responses = udhr_paragraphs("eng")[:40], udhr_paragraphs("ben")[:40]
    flan = fsutil.write_jsonl(tmp_path / "flan.jsonl", (
        {"inputs": p, "targets": r} for p, r in zip(prompts, responses, strict=True)))
    assert flan == 40
    cfg = tiny_config(sft__data={"kind": "jsonl", "path": str(tmp_path / "flan.jsonl"),
                                 "allow_repeat": True}, sft__seq_len=2048, data=data)
    m = sft.prepare_sft(cfg, toks[name], tmp_path / "sft", log=quiet)
    head = [bos] if bos is not None else []
    join = cfg["sft"]["join"]
    p_ids = _plain(toks[name], prompts)
    a_ids = _plain(toks[name], [join + r for r in responses])
    # in the mixture's shuffled order (lrmerge.data.sft), each with its prompt length (the
    # loss mask)
    shards = TokenShards(tmp_path / "sft")
    got = sorted(zip(map(tuple, _documents(tmp_path / "sft")), shards.prompts.tolist(),
                     strict=True))
    assert got == sorted((tuple(head + p + a + [sep]), len(head) + len(p))
                         for p, a in zip(p_ids, a_ids, strict=True))
    assert m["separator"]["id"] == sep and m["bos"]["added"] == (bos is not None)
    # training fills the end of a packed sequence with the manifest's pad, never a target
    packed = Packed(shards, 2048, "response", data_pad_id(shards), 0, True)
    ends = np.concatenate([[0], shards.doc_ends])
    used = np.diff(ends[packed.seqs])  # tokens of the examples in each packed sequence
    k = int(np.flatnonzero(used < 2048)[0])  # the first sequence with padding
    ids, keep, _ = packed.sample(k)
    used = int(used[k])
    assert ids[used - 1] == sep
    assert set(ids[used:].tolist()) == {m["pad"]["id"]} and not keep[used:].any()


# --------------------------------------------------------------------------------------------
# Budgets count real tokens
# --------------------------------------------------------------------------------------------
def _byte_share(ids: list[int]) -> float:
    """Share of Llama-2's byte-fallback pieces <0x00>..<0xFF> (ids 3..258)."""
    a = np.asarray(ids)
    return float(((a >= 3) & (a <= 258)).mean())


def test_budgets_count_the_real_tokens_byte_fallback_included(tmp_path, toks, corpora):
    figures = {}
    for lang in ("en", "bn", "te", "bo"):
        texts = udhr_paragraphs(UDHR_CODES[lang])
        chars = sum(map(len, texts))
        for name in ("llama2", "smollm2"):
            m = tokenize.prepare_corpus(_config(corpora), lang, toks[name],
                                        tmp_path / name / lang, log=quiet)
            assert m["documents"] == len(texts) and m["exhausted"]  # the whole UDHR read
            head = int(m["bos"]["added"])
            marks = len(texts) * (head + 1)
            text_ids = [t for d in _documents(tmp_path / name / lang) for t in d[head:-1]]
            figures[lang, name] = {"chars_per_token": round(chars / (m["tokens"] - marks), 3)}
            if name == "llama2":  # the JS tokenizer's count: BOS + text, plus </s> per document
                assert m["tokens"] == sum(map(len, js_encode(texts))) + len(texts)
                figures[lang, name]["byte_fallback"] = round(_byte_share(text_ids), 3)
    print("\nUDHR chars per token (text tokens, BOS and separator left out):")
    for (lang, name), f in figures.items():
        print(f"  {lang} {name}: {f}")
    cpt = {k: f["chars_per_token"] for k, f in figures.items()}
    # Llama-2 on Indic scripts: byte fallback, under one character per token (Telugu ~0.4)
    assert cpt["te", "llama2"] < 0.6 < cpt["bn", "llama2"] < 1.0 < 3.5 < cpt["en", "llama2"]
    assert cpt["bo", "llama2"] < 1.0
    assert figures["te", "llama2"]["byte_fallback"] > 0.7 > figures["bn", "llama2"]["byte_fallback"]
    assert figures["en", "llama2"]["byte_fallback"] < 0.01
    # a budget stops at the document that completes it, in Llama-2 tokens
    cfg = _config(corpora, budget=3000, allow_repeat=False)
    m = tokenize.prepare_corpus(cfg, "te", toks["llama2"], tmp_path / "te", log=quiet)
    read = list(corpus_documents(cfg, "te"))[:m["documents"]]
    lengths = [len(ids) + 1 for ids in js_encode(read)]
    assert m["tokens"] == sum(lengths) >= m["goal_with_margin"] > sum(lengths) - lengths[-1]
    assert m["documents"] < len(udhr_paragraphs("tel"))
