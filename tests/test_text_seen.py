"""The text behind the tokens: token manifests count the characters (code points) and UTF-8 bytes
of the documents they hold, and a CT run's summary the text it saw (issue 17: budgets are in
tokens, and a language may train with an extended tokenizer that needs fewer tokens per
character). Bengali and Tibetan documents (3 UTF-8 bytes a character, byte tokens under the mini's
byte-level BPE) through the real data stage; every figure checked against counts made here from
the documents themselves."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from stage_helpers import prepare_data, pretrain_base, quiet, tiny_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.data import sft, tokenize
from lrmerge.data.shards import TEXT, ShardWriter, TokenShards
from lrmerge.data.sources import corpus_documents
from lrmerge.train.loop import train
from lrmerge.train.stream import Blocks

BENGALI = ["আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।", "বল দ্রুত চলে।", "কতগুলো বল আছে?",
           "সব মানুষ স্বাধীনভাবে সমান মর্যাদা এবং অধিকার নিয়ে জন্মগ্রহণ করে।"]
TIBETAN = ["བོད་ཡིག་ནི་", "འགྲོ་བ་མིའི་རིགས་ཡོངས་རྫོགས་ལ་", "སྐྱེས་ཙམ་ཉིད་ནས་རང་དབང་ཡོད་པ།",
           "ཀ་ཁ་ག་ང་།"]
CAP = 2600  # the corpus' max_tokens: the data stage stops after the document that crosses it


def _documents() -> list[str]:
    """Known documents: Bengali and Tibetan of varied lengths, some with ASCII digits, an emoji
    (one code point, four bytes) or a combining sign, none empty."""
    docs = []
    for i in range(400):
        text = " ".join((BENGALI if i % 3 else TIBETAN)[(i + j) % 4] for j in range(1 + i % 4))
        if i % 5 == 0:
            text += f" {i}"
        if i % 7 == 0:
            text += " 🙂"
        docs.append(text)
    return docs


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def _cfg(src, **corpus) -> dict:
    langs = tiny_config()["languages"]
    langs["bn"]["corpus"] = {"kind": "jsonl", "path": str(src), "allow_repeat": True, **corpus}
    return tiny_config(languages=langs, data={"shard_tokens": 700})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The mini tokenizer, English tokens, a pre-trained tiny base, and the known documents as
    the Bengali token folder (capped at CAP tokens, several shards); `docs` in the order the
    data stage draws them."""
    root = tmp_path_factory.mktemp("text_seen")
    docs = _documents()
    src = root / "corpus.jsonl"
    fsutil.write_jsonl(src, [{"text": d} for d in docs])
    cfg = _cfg(src, max_tokens=CAP)
    paths = prepare_data(cfg, root, langs=("en",), sft=False)
    torch.set_num_threads(1)
    paths["base"] = root / "base"
    pretrain_base(cfg, paths, paths["base"])
    paths["bn"] = root / "tokens" / "bn"
    manifest = tokenize.prepare_corpus(cfg, "bn", str(paths["tokenizer"]), paths["bn"],
                                       log=quiet)
    docs = list(corpus_documents(cfg, "bn"))  # the data stage's seeded order
    tok = tokenize.load_tokenizer(str(paths["tokenizer"]))
    head = int(manifest["bos"]["added"])
    # each document's framed token length, from the tokenizer called here
    lengths = [head + len(ids) + 1
               for ids in tok(docs, add_special_tokens=False)["input_ids"]]
    return {"cfg": cfg, "paths": paths, "docs": docs, "manifest": manifest, "head": head,
            "lengths": lengths, "src": src}


def _text_before(world, t: int) -> tuple[int, int]:
    """Characters and bytes of the text of tokens [0, t) of the folder, counted document by
    document: whole documents exactly, the one cut at t as floor(its text x its text tokens
    before t / its text tokens) (BOS and separator have no text)."""
    chars = nbytes = start = 0
    head = world["head"]
    for doc, n in zip(world["docs"], world["lengths"], strict=False):
        if start + n <= t:
            chars, nbytes, start = chars + len(doc), nbytes + _utf8(doc), start + n
            continue
        n_text = n - head - 1
        k = min(max(t - start - head, 0), n_text)
        return chars + len(doc) * k // n_text, nbytes + _utf8(doc) * k // n_text
    return chars, nbytes


def test_manifest_counts_the_documents_text_per_shard_and_in_total(world):
    m, docs, lengths = world["manifest"], world["docs"], world["lengths"]
    kept = docs[:m["documents"]]
    # the cap stops after the document that crosses it, kept whole: never a cut document
    assert sum(lengths[:len(kept)]) == m["tokens"] >= CAP > m["tokens"] - lengths[len(kept) - 1]
    assert m["characters"] == sum(len(d) for d in kept)
    assert m["bytes"] == sum(_utf8(d) for d in kept)
    assert m["bytes"] > 2.5 * m["characters"]  # Bengali and Tibetan: 3 bytes a character
    assert m["characters_per_token"] == round(m["characters"] / m["tokens"], 6)
    assert m["text_file"] == TEXT and "BOS and separator" in m["text_counted"]
    # per shard: the documents it holds (documents never straddle shards)
    assert len(m["shards"]) > 2
    ends = np.cumsum(lengths[:len(kept)])
    lo = 0
    for shard in m["shards"]:
        inside = [d for d, e in zip(kept, ends, strict=True) if lo < e <= lo + shard["tokens"]]
        assert shard["characters"] == sum(map(len, inside))
        assert shard["bytes"] == sum(map(_utf8, inside))
        lo += shard["tokens"]
    # the per-document record: cumulative counts at each document's end
    s = TokenShards(world["paths"]["bn"])
    assert s.text.tolist() == np.cumsum([[len(d), _utf8(d)] for d in kept], axis=0).tolist()
    s.verify()


def test_max_docs_and_a_goal_inside_a_document_keep_whole_documents(world, tmp_path):
    docs, lengths = world["docs"], world["lengths"]
    m = tokenize.prepare_corpus(_cfg(world["src"], max_docs=37), "bn",
                                str(world["paths"]["tokenizer"]), tmp_path / "d", log=quiet)
    assert m["documents"] == 37 and m["characters"] == sum(len(d) for d in docs[:37])
    assert m["bytes"] == sum(_utf8(d) for d in docs[:37])
    # a cap one token into a document: that document is read whole, the next not at all
    cap = sum(lengths[:20]) + 1
    m = tokenize.prepare_corpus(_cfg(world["src"], max_tokens=cap), "bn",
                                str(world["paths"]["tokenizer"]), tmp_path / "c", log=quiet)
    assert m["documents"] == 21 and m["tokens"] == sum(lengths[:21])
    assert (m["characters"], m["bytes"]) == (sum(len(d) for d in docs[:21]),
                                             sum(_utf8(d) for d in docs[:21]))


def test_sft_manifest_counts_prompt_join_and_response(tmp_path, world):
    rows = [{"inputs": f"{BENGALI[i % 4]} ? {i}", "targets": TIBETAN[i % 4]} for i in range(90)]
    fsutil.write_jsonl(tmp_path / "flan.jsonl", rows)
    cfg = tiny_config(sft__data={"kind": "jsonl", "path": str(tmp_path / "flan.jsonl")})
    m = sft.prepare_sft(cfg, str(world["paths"]["tokenizer"]), tmp_path / "sft", log=quiet)
    texts = [r["inputs"] + cfg["sft"]["join"] + r["targets"] for r in rows]
    assert m["characters"] == sum(map(len, texts)) and m["bytes"] == sum(map(_utf8, texts))


def test_blocks_text_matches_a_count_from_the_documents(world):
    """Any prefix of the stream, cut inside documents or at their edges, in the first pass and
    in repeated passes (blocks in their seeded order)."""
    s = TokenShards(world["paths"]["bn"])
    L, seed = 32, world["cfg"]["seed"]
    blocks = Blocks(s, L, "bn", seed, allow_repeat=True)
    n = blocks.rep.n
    assert n == s.tokens // L
    ends = np.cumsum(world["lengths"][:s.manifest["documents"]]).tolist()
    for t in [0, 1, 31, 32, 500, ends[3], ends[3] + 1, ends[3] - 1, n * L]:
        assert s.text_before([t])[0].tolist() == list(_text_before(world, t)), t
    for read, extra in [(0, 0), (1, 0), (5, 7), (n - 1, 32), (n, 0)]:
        assert blocks.text(read, extra).tolist() == list(_text_before(world, read * L + extra))
    one_pass = np.array(_text_before(world, n * L))
    for read, extra in [(2 * n, 0), (n + 9, 0), (2 * n + 5, 11)]:
        passes, k = divmod(read, n)
        order = np.random.default_rng([seed, passes]).permutation(n)
        want = passes * one_pass
        for j, b in enumerate(order[:k + 1]):
            stop = b * L + (L if j < k else extra)
            want = want + np.array(_text_before(world, stop)) - np.array(
                _text_before(world, b * L))
        assert blocks.text(read, extra).tolist() == want.tolist(), (read, extra)


def _target_tokens(tokens: int, seq_len: int, ratio: float) -> int:
    """Target tokens among the first `tokens` of a CT run: sample i is English where
    floor((i + 1) r) steps up; the sample cut by the end counts its first tokens."""
    r = Fraction(ratio).limit_denominator(1000)
    full, extra = divmod(tokens, seq_len)
    english = [(i + 1) * r // 1 > i * r // 1 for i in range(full + 1)]
    return (full - sum(english[:full])) * seq_len + (0 if english[full] else extra)


def _ct(world, out, tokens, data=None, init=None):
    p = world["paths"]
    return train(stage="ct", cfg=world["cfg"], init=str(init or p["base"]), out=str(out),
                 data=str(data or p["bn"]), english=str(p["en"]), tokens=tokens, lang="bn",
                 threads=1, log=quiet)


def test_ct_summary_records_the_target_text_it_consumed(world, tmp_path):
    cfg = world["cfg"]["continual_pretrain"]
    L, ratio = cfg["seq_len"], cfg["english_ratio"]
    n = TokenShards(world["paths"]["bn"]).tokens // L
    first = _ct(world, tmp_path / "ct3000", 3000)
    T = _target_tokens(3000, L, ratio)
    assert 3000 % L and T % L  # the run ends inside a target block...
    assert T < n * L  # ...in the first pass over the corpus
    assert first["target_tokens_seen"] == T
    assert (first["target_characters"], first["target_bytes"]) == _text_before(world, T)
    # the chain continues: cumulative, into the second pass (blocks in their seeded order)
    second = _ct(world, tmp_path / "ct5000", 5000, init=tmp_path / "ct3000")
    T = _target_tokens(5000, L, ratio)
    assert second["target_tokens_seen"] == T and T > n * L
    k, extra = divmod(T - n * L, L)
    order = np.random.default_rng([world["cfg"]["seed"], 1]).permutation(n)
    want = np.array(_text_before(world, n * L))
    for j, b in enumerate(order[:k + (1 if extra else 0)]):
        stop = b * L + (L if j < k else extra)
        want += np.array(_text_before(world, stop)) - np.array(_text_before(world, b * L))
    assert [second["target_characters"], second["target_bytes"]] == want.tolist()
    assert second["target_characters"] > first["target_characters"]
    saved = json.loads((tmp_path / "ct5000" / "train_summary.json").read_text())
    assert saved["target_characters"] == second["target_characters"]


def _strip_text_counts(folder) -> None:
    """Make `folder` look as the data stage wrote it before it counted text."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for key in ("characters", "bytes", "characters_per_token", "text_counted", "text_file"):
        del m[key]
    for shard in m["shards"]:
        del shard["characters"], shard["bytes"]
    path.write_text(json.dumps(m))
    (folder / TEXT).unlink()


def test_a_folder_prepared_before_text_counts_still_verifies_and_trains(world, tmp_path,
                                                                         capsys):
    old = tmp_path / "old_bn"
    shutil.copytree(world["paths"]["bn"], old)
    _strip_text_counts(old)
    s = TokenShards(old)
    assert s.text is None and s.text_before([10]) is None
    assert Blocks(s, 32, "bn", 0, True).text(3, 5) is None
    assert cli(["data", "verify", str(old)]) == 0
    assert "hashes match" in capsys.readouterr().out
    summary = _ct(world, tmp_path / "ct", 3000, data=old)
    assert summary["tokens_seen"] == 3000
    assert summary["target_tokens_seen"] == _target_tokens(3000, 32, 0.2)
    assert summary["target_characters"] is None and summary["target_bytes"] is None


def test_a_writer_without_text_counts_writes_none(tmp_path):
    w = ShardWriter(tmp_path / "t", vocab_size=20, shard_tokens=4)
    w.add(np.array([5, 6, 2, 7, 2]), np.array([3, 2]), text=np.array([[4, 12], [1, 1]]))
    w.add(np.array([8, 2]), np.array([2]))  # a batch without counts: the folder has none
    m = w.finish({"tokenizer": {"xxh3_128": "x"}})
    assert "characters" not in m and "text_file" not in m
    assert "characters" not in m["shards"][0] and not (tmp_path / "t" / TEXT).exists()
    assert TokenShards(tmp_path / "t").text is None
