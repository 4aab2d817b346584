"""The data stage's token shards: tokenize once, exact sizing in real tokens, manifests, errors,
atomic output, SFT examples with their prompt lengths."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from stage_helpers import quiet, tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import ConfigError
from lrmerge.data import budget, sft, tokenize
from lrmerge.data.shards import ShardWriter, TokenShards
from lrmerge.data.sources import corpus_documents


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tokenize.train_tokenizer(tiny_config(), root / "tokenizer", log=quiet)
    return root / "tokenizer"


def _jsonl(path, rows):
    fsutil.write_jsonl(path, rows)
    return str(path)


def _reference(tok_dir, texts):
    """Token ids of `texts` as the plain Hugging Face call gives them, EOS after each."""
    tok = tokenize.load_tokenizer(str(tok_dir))
    return [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]


def test_corpus_is_tokenized_once_to_exactly_what_the_largest_budget_needs(tmp_path, tok_dir):
    cfg = tiny_config()
    m = tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    ct = cfg["continual_pretrain"]
    # 9000 tokens = 282 blocks of 32; English takes floor(282 x 0.2) = 56 of them
    assert m["need"] == (282 - 56) * 32 == budget.ct_need(cfg, "bn")
    goal = m["goal_with_margin"]
    assert goal == int(np.ceil(m["need"] * ct["data_margin"]))
    shards = TokenShards(tmp_path / "bn")
    lengths = np.diff(np.concatenate([[0], shards.doc_ends]))
    # the documents read are the first ones in order, and the last is the one completing the goal
    assert shards.tokens >= goal > shards.tokens - int(lengths[-1])
    docs = [d for _, d in zip(range(m["documents"]), corpus_documents(cfg, "bn"), strict=False)]
    ref = _reference(tok_dir, docs)
    assert [len(r) for r in ref] == lengths.tolist()
    assert shards.slice(0, shards.tokens).tolist() == [t for r in ref for t in r]
    assert m["dtype"] == "uint16" and m["documents"] == len(docs)
    assert m["tokenizer"]["name"] == str(tok_dir) and len(m["tokenizer"]["xxh3_128"]) == 32
    assert m["source"] == cfg["languages"]["bn"]["corpus"] and m["passes_needed"] == 1.0
    shards.verify()
    # reproducible: the same hashes on a rerun, the old folder replaced whole
    again = tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    assert again["shards"] == m["shards"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn"]


def test_english_is_sized_for_every_reader(tmp_path, tok_dir):
    cfg = tiny_config()
    need, readers = budget.english_need(cfg)
    assert readers == {"continual_pretrain.bn": 56 * 32, "continual_pretrain.bo": 56 * 32,
                       "continual_pretrain.bo-v90": 56 * 32, "pretrain": 6 * 4 * 32}
    m = tokenize.prepare_corpus(cfg, "en", str(tok_dir), tmp_path / "en", workers=2, log=quiet)
    assert m["need"] == need == 56 * 32 and m["tokens"] >= need


def test_shards_split_at_document_edges_and_switch_to_uint32(tmp_path):
    w = ShardWriter(tmp_path / "t", vocab_size=70000, shard_tokens=10)
    # with each document's characters and UTF-8 bytes
    w.add(np.array([1, 2, 3, 66000, 5, 6, 7, 8, 9]), np.array([3, 4, 2]),
          text=np.array([[2, 6], [3, 3], [1, 4]]))
    w.add(np.array([10] * 5), np.array([5]), text=np.array([[4, 12]]))  # does not fit beside
    w.add(np.array([11] * 12), np.array([12]), text=np.array([[11, 11]]))  # a shard of its own
    m = w.finish({"tokenizer": {"xxh3_128": "x"}})
    assert m["dtype"] == "uint32" and m["tokens"] == 26 and m["documents"] == 5
    assert [s["tokens"] for s in m["shards"]] == [9, 5, 12]
    assert [(s["characters"], s["bytes"]) for s in m["shards"]] == [(6, 13), (4, 12), (11, 11)]
    assert (m["characters"], m["bytes"], m["characters_per_token"]) == (21, 36, round(21 / 26, 6))
    s = TokenShards(tmp_path / "t")
    assert s.slice(2, 16).tolist() == [3, 66000, 5, 6, 7, 8, 9] + [10] * 5 + [11, 11]
    assert s.doc_ends.tolist() == [3, 7, 9, 14, 26]
    assert s.text.tolist() == [[2, 6], [5, 9], [6, 13], [10, 25], [21, 36]]


def test_a_corpus_too_small_fails_with_language_and_counts(tmp_path, tok_dir):
    src = _jsonl(tmp_path / "c.jsonl", [{"content": f"the ball is fast {i} ."} for i in range(20)])
    langs = tiny_config()["languages"]
    langs["bn"]["corpus"] = {"kind": "jsonl", "path": src, "text_field": "content"}
    cfg = tiny_config(languages=langs)
    with pytest.raises(tokenize.DataShortError,
                       match=r"language 'bn' has \d+ tokens in 20 documents, but its largest "
                             r"budget needs 7232 .*allow_repeat"):
        tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    assert not (tmp_path / "bn").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]  # nothing half-written left
    langs["bn"]["corpus"]["allow_repeat"] = True
    m = tokenize.prepare_corpus(tiny_config(languages=langs), "bn", str(tok_dir), tmp_path / "bn",
                                log=quiet)
    assert m["documents"] == 20 and m["passes_needed"] == round(7232 / m["tokens"], 4) > 1


@pytest.mark.parametrize("kind", ["jsonl", "hf"])
def test_real_corpus_formats_read_as_a_seeded_sample(tmp_path, tok_dir, kind):
    rows = [{"text": f"doc {i:03d} the ball is fast ."} for i in range(3000)]
    src = _jsonl(tmp_path / "c.jsonl", rows)
    langs = tiny_config()["languages"]
    langs["bn"]["corpus"] = ({"kind": "jsonl", "path": src} if kind == "jsonl" else
                             {"kind": "hf", "path": "json", "data_files": src})
    cfg = tiny_config(languages=langs)
    m = tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    shards = TokenShards(tmp_path / "bn")
    docs = [d for _, d in zip(range(m["documents"]), corpus_documents(cfg, "bn"), strict=False)]
    ref = _reference(tok_dir, docs)
    assert shards.slice(0, shards.tokens).tolist() == [t for r in ref for t in r]
    assert m["documents"] < 3000 and m["tokens"] >= m["goal_with_margin"]
    # drawn from across the file, not its first rows: about a third of it, spread evenly
    taken = np.array(sorted(int(d.split()[1]) for d in docs))
    assert len(set(taken)) == len(taken)
    assert np.histogram(taken, bins=5, range=(0, 3000))[0].min() > 0.6 * len(taken) / 5
    assert m["sampling"]["order"] == "permutation" and m["sampling"]["documents"] == 3000


def test_unreadable_corpora_name_file_line_and_key(tmp_path, tok_dir):
    def run(corpus):
        langs = tiny_config()["languages"]
        langs["bn"]["corpus"] = corpus
        tokenize.prepare_corpus(tiny_config(languages=langs), "bn", str(tok_dir),
                                tmp_path / "out", log=quiet)

    with pytest.raises(ValueError, match=r"languages\.bn\.corpus\.path: file .*none\.jsonl not found"):
        run({"kind": "jsonl", "path": str(tmp_path / "none.jsonl")})
    good = [json.dumps({"text": "a"})] * 1000  # 2 tokens each: a first batch is written
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good + ["{not json"] + good) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1001 is not JSON"):
        run({"kind": "jsonl", "path": str(bad)})
    with pytest.raises(ValueError, match=r"bad\.jsonl: line \d+ has no text field 'body'.*text_field"):
        run({"kind": "jsonl", "path": str(bad), "text_field": "body"})
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ValueError, match=r"languages\.bn\.corpus: the corpus holds no documents"):
        run({"kind": "jsonl", "path": str(empty)})
    with pytest.raises(ValueError, match=r"languages\.bn\.corpus: row 0 has no text field 'body'"):
        run({"kind": "hf", "path": "json", "data_files": str(empty), "text_field": "body"})
    # an interrupted job (here: the bad line after the first batches) leaves no manifest
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_sft_examples_keep_their_prompt_length(tmp_path, tok_dir):
    flan = _jsonl(tmp_path / "flan.jsonl", [{"inputs": f"how many ball ? {i}", "targets": "3"}
                                            for i in range(40)])
    cfg = tiny_config(sft__data={"kind": "jsonl", "path": flan})
    m = sft.prepare_sft(cfg, str(tok_dir), tmp_path / "sft", log=quiet)
    tok = tokenize.load_tokenizer(str(tok_dir))
    s = TokenShards(tmp_path / "sft")
    a = tok(cfg["sft"]["join"] + "3", add_special_tokens=False)["input_ids"]
    # the mixture's shuffled order (lrmerge.data.sft): any example may come first
    first = s.slice(0, int(s.doc_ends[0])).tolist()
    p = next(p for p in tok([f"how many ball ? {i}" for i in range(40)])["input_ids"]
             if first == p + a + [tok.eos_token_id])
    assert int(s.prompts[0]) == len(p) and m["documents"] == 40
    lengths = np.diff(np.concatenate([[0], s.doc_ends]))
    assert m["sequences"] == len(budget.pack(lengths, cfg["sft"]["seq_len"])) - 1
    few = tiny_config(sft__data={"kind": "jsonl", "path": flan, "max_examples": 3})
    with pytest.raises(tokenize.DataShortError, match=r"3 examples pack into \d+ sequences of 32 tokens.*needs 16"):
        sft.prepare_sft(few, str(tok_dir), tmp_path / "few", log=quiet)


def test_packing_keeps_examples_whole():
    assert budget.pack(np.array([10, 10, 10, 25, 40, 5]), 32).tolist() == [0, 3, 4, 5, 6]
    assert budget.longer_than(np.array([10, 40]), 32) == 1


def test_cli_tokenizer_corpus_sft_verify(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    tok = str(tmp_path / "tok")
    assert cli(["data", "tokenizer", "--config", str(cfg_path), "--out", tok]) == 0
    assert cli(["data", "corpus", "--config", str(cfg_path), "--lang", "bo", "--tokenizer", tok,
                "--out", str(tmp_path / "bo"), "--threads", "2"]) == 0
    assert cli(["data", "sft", "--config", str(cfg_path), "--tokenizer", tok,
                "--out", str(tmp_path / "sft")]) == 0
    assert cli(["data", "verify", str(tmp_path / "bo")]) == 0
    assert "hashes match" in capsys.readouterr().out
    m = json.loads((tmp_path / "bo" / "manifest.json").read_text())
    assert m["lang"] == "bo" and m["workers"] == 2
    with open(tmp_path / "bo" / m["shards"][0]["file"], "r+b") as fh:
        fh.write(b"\x00\x00")
    assert cli(["data", "verify", str(tmp_path / "bo")]) == 2
    assert "content hash" in capsys.readouterr().err
    assert cli(["data", "corpus", "--config", str(cfg_path), "--lang", "xx", "--tokenizer", tok,
                "--out", str(tmp_path / "xx")]) == 2
    assert "'xx' is not in config key 'languages'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# What frames each document: data.document_separator, data.add_bos, data.pad
# --------------------------------------------------------------------------------------------
WORDS = ["the", "ball", "is", "fast", "red", "how", "many", "?", "3", "answer", ":"]


def _word_tokenizer(folder, single: str | None = "<s> $A", bos: str | None = "<s>"):
    """A word-level tokenizer with Llama-like specials (<unk> 0, <s> 1, </s> 2) plus
    <|endoftext|> 3, and `single` as its template (None: it adds nothing)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(specials)
    if single:
        t.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(s, vocab[s]) for s in specials if s in single])
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token=bos, eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return str(folder)


def _data(**keys) -> dict:
    return tiny_config(data=keys)["data"]


def test_document_marks_follow_the_config_and_the_template(tmp_path):
    tok = tokenize.load_tokenizer(_word_tokenizer(tmp_path / "llama_like"))
    # defaults: the EOS separates, the template's BOS is kept, the separator pads
    d = _data()
    assert (d["document_separator"], d["add_bos"], d["pad"]) == ("eos", "auto", "separator")
    m = tokenize.document_marks(tok, d)
    assert (m.head, m.tail) == ([1], [2])
    assert m.manifest == {"separator": {"token": "</s>", "id": 2, "config": "eos"},
                          "bos": {"token": "<s>", "id": 1, "added": True, "config": "auto"},
                          "pad": {"token": "</s>", "id": 2, "config": "separator"}}
    m = tokenize.document_marks(tok, _data(document_separator="<|endoftext|>", add_bos=False,
                                           pad="eos"))
    assert (m.head, m.tail) == ([], [3]) and m.manifest["bos"]["added"] is False
    assert m.manifest["separator"] == {"token": "<|endoftext|>", "id": 3,
                                       "config": "<|endoftext|>"}
    assert m.manifest["pad"] == {"token": "</s>", "id": 2, "config": "eos"}
    # a template without BOS (the mini's byte-level BPE, SmolLM2): auto adds none, true forces
    plain = tokenize.load_tokenizer(_word_tokenizer(tmp_path / "plain", single=None))
    assert tokenize.document_marks(plain, _data()).head == []
    assert tokenize.document_marks(plain, _data(add_bos=True)).head == [1]


def test_document_marks_refuse_what_they_cannot_honour(tmp_path):
    tok = tokenize.load_tokenizer(_word_tokenizer(tmp_path / "t"))
    for bad in ["<|im_end|>", "the ball", "<S>"]:  # unknown, two tokens, wrong case
        with pytest.raises(ValueError, match=r"config key data\.document_separator: "
                                             rf"{re.escape(repr(bad))} is not a single token"):
            tokenize.document_marks(tok, _data(document_separator=bad))
    with pytest.raises(ValueError, match=r"config key data\.pad: '<pad>' is not a single token"):
        tokenize.document_marks(tok, _data(pad="<pad>"))
    no_bos = tokenize.load_tokenizer(_word_tokenizer(tmp_path / "nb", single=None, bos=None))
    with pytest.raises(ValueError, match=r"config key data\.add_bos: True, but tokenizer .* has "
                                         "no BOS"):
        tokenize.document_marks(no_bos, _data(add_bos=True))
    # a template that adds an EOS after the text would double the separator: auto refuses it
    eos_after = tokenize.load_tokenizer(_word_tokenizer(tmp_path / "ea", single="<s> $A </s>"))
    with pytest.raises(ValueError, match=r"data\.add_bos: auto, but tokenizer .*template turns "
                                         r"\[(\d+)\] into \[1, \1, 2\]"):
        tokenize.document_marks(eos_after, _data())
    assert tokenize.document_marks(eos_after, _data(add_bos=True)).head == [1]
    with pytest.raises(ConfigError, match=r"data\.add_bos: 'yes' is not one of"):
        _data(add_bos="yes")


def _word_corpus(tmp_path, docs: list[str]) -> dict:
    langs = tiny_config()["languages"]
    langs["bn"]["corpus"] = {"kind": "jsonl", "path": _jsonl(tmp_path / "c.jsonl", [
        {"text": d} for d in docs]), "allow_repeat": True}
    return langs


def _documents(folder) -> list[list[int]]:
    s = TokenShards(folder)
    ids = s.slice(0, s.tokens).tolist()
    return [ids[a:b] for a, b in zip([0, *s.doc_ends[:-1]], s.doc_ends, strict=True)]


@pytest.mark.parametrize(("data", "head", "sep"), [({}, [1], 2),
                                                   ({"add_bos": False}, [], 2),
                                                   ({"document_separator": "<|endoftext|>"}, [1], 3)])
def test_corpus_and_sft_are_framed_as_configured(tmp_path, data, head, sep):
    tok_dir = _word_tokenizer(tmp_path / "tok")
    docs = ["the ball is fast", "red", "how many ball ?"]
    cfg = tiny_config(languages=_word_corpus(tmp_path, docs), data=data)
    m = tokenize.prepare_corpus(cfg, "bn", tok_dir, tmp_path / "bn", log=quiet)
    words = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<|endoftext|>"] + WORDS)}
    # the documents in the corpus's seeded order (a sample, not the file's order)
    order = list(corpus_documents(cfg, "bn"))
    assert sorted(order) == sorted(docs)
    assert _documents(tmp_path / "bn") == [head + [words[w] for w in d.split()] + [sep]
                                           for d in order]
    assert m["separator"]["id"] == sep and m["bos"]["added"] == bool(head)
    assert m["pad"]["id"] == sep
    # the marks are tokens without text: characters are the documents' own
    assert m["characters"] == m["bytes"] == sum(map(len, docs))
    assert m["characters_per_token"] == round(sum(map(len, docs)) / m["tokens"], 6)
    flan = _jsonl(tmp_path / "flan.jsonl", [{"inputs": "how many ball ?", "targets": "3"}] * 80)
    sft_cfg = tiny_config(sft__data={"kind": "jsonl", "path": flan}, data=data)
    sm = sft.prepare_sft(sft_cfg, tok_dir, tmp_path / "sft", log=quiet)
    join = [words[w] for w in sft_cfg["sft"]["join"].split()]
    first = _documents(tmp_path / "sft")[0]
    assert first == head + [words["how"], words["many"], words["ball"], words["?"]] + join + [
        words["3"], sep]
    assert int(TokenShards(tmp_path / "sft").prompts[0]) == len(head) + 4  # the loss mask
    assert sm["separator"] == m["separator"] and sm["bos"] == m["bos"]


def test_training_pads_with_the_manifests_pad_and_refuses_mixed_framings(tmp_path):
    from lrmerge.train.stream import Packed, data_pad_id

    tok_dir = _word_tokenizer(tmp_path / "tok")
    flan = _jsonl(tmp_path / "flan.jsonl", [{"inputs": "how many ball ?", "targets": "3"}] * 80)
    for name, pad in [("eos", "separator"), ("eot", "<|endoftext|>")]:
        cfg = tiny_config(sft__data={"kind": "jsonl", "path": flan}, data={"pad": pad})
        sft.prepare_sft(cfg, tok_dir, tmp_path / name, log=quiet)
    eos, eot = TokenShards(tmp_path / "eos"), TokenShards(tmp_path / "eot")
    assert data_pad_id(eos) == 2 and data_pad_id(eot) == 3
    n = int(eot.doc_ends[0])  # one example: <s> how many ball ? 3 </s>
    ids, keep, _ = Packed(eot, 32, "response", data_pad_id(eot), 0, True).sample(0)
    full = 32 // n * n  # whole examples, then padding that is never a target
    assert n == 7 and ids[full - 1] == 2  # the separator ends the last example
    assert ids[full:].tolist() == [3] * (32 - full) and not keep[full:].any()
    with pytest.raises(ValueError, match=r"eot frames documents as .*'pad': 3.*but .*eos as "
                                         r".*'pad': 2.*same data\.document_separator"):
        data_pad_id(eos, eot)
    # a folder written before the marks were recorded: the tokenizer's EOS separated and padded
    w = ShardWriter(tmp_path / "old", vocab_size=20, shard_tokens=100)
    w.add(np.array([5, 2]), np.array([2]))
    w.finish({"tokenizer": {"xxh3_128": "x", "eos_token_id": 2}})
    assert data_pad_id(TokenShards(tmp_path / "old")) == 2
