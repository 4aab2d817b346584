"""A CT budget is a sample of its corpus (issue 23): the data stage draws documents in a seeded,
prefix-stable order from across the corpus (not its first rows), subsets mix at their target
shares in every budget, and training reads each budget's increment in a seeded order of its own
blocks. Fixtures: corpora sorted by source, in the layouts of the real sources (jsonl files, a
`datasets` json folder read streaming, rows naming their subset as SlimPajama's do)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stage_helpers import quiet, tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import ConfigError
from lrmerge.data import budget, tokenize
from lrmerge.data.order import Permutation
from lrmerge.data.shards import DataShortError, TokenShards
from lrmerge.data.sources import SourceError, corpus_documents
from lrmerge.train.stream import Blocks

BUDGETS = [20000, 40000, 80000]
SOURCES = {"news": 9000, "web": 6000, "wiki": 3000}  # documents of each, stored in this order


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tokenize.train_tokenizer(tiny_config(), root / "tokenizer", log=quiet)
    return root / "tokenizer"


def _sorted_corpus(path, sources=SOURCES) -> str:
    """Documents grouped by source, one source after another (as a corpus stored by site or
    crawl is), all of about the same length."""
    rows = [{"text": f"{src} doc {i} the ball is fast and red .", "meta": {"source": src}}
            for src, n in sources.items() for i in range(n)]
    fsutil.write_jsonl(path, rows)
    return str(path)


def _cfg(corpus: dict, budgets=BUDGETS, seed=0, english=None) -> dict:
    langs = tiny_config()["languages"]
    langs["bn"]["corpus"] = corpus
    langs["bn"]["budgets"] = langs["bo"]["budgets"] = list(budgets)  # bn+bo share budgets
    cfg = tiny_config(languages=langs, seed=seed)
    if english is not None:
        cfg["english"]["corpus"] = english
        cfg = tiny_config(languages=langs, seed=seed, english=cfg["english"])
    return cfg


def _shares(counts: dict) -> dict:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def test_every_budget_holds_each_source_at_its_share_of_a_sorted_corpus(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl")
    corpus = {"kind": "jsonl", "path": src, "subsets": {"field": "meta.source"}}
    cfg = _cfg(corpus)
    config = write_config(tmp_path / "c.yaml", cfg)
    assert cli(["data", "corpus", "--config", str(config), "--lang", "bn", "--tokenizer",
                str(tok_dir), "--out", str(tmp_path / "bn")]) == 0
    shards = TokenShards(tmp_path / "bn")
    m = shards.manifest
    assert m["documents"] < sum(SOURCES.values()) / 2  # the corpus is larger than the need
    assert m["sampling"]["order"] == "permutation" and m["sampling"]["seed"] == 0
    assert m["groups"]["kind"] == "subset"
    corpus_share = _shares(SOURCES)
    target, _ = budget.segments(BUDGETS, 32, 0.2)
    for t in target:  # what each CT budget reads of the folder: its first t blocks
        got = _shares(shards.group_tokens(t * 32))
        for name, share in corpus_share.items():
            assert abs(got[name] - share) < 0.04, (t, name, got)
    # without subsets the same documents come in the same order: the shares hold for it too
    plain = _cfg({"kind": "jsonl", "path": src})
    n = m["documents"]
    first = [d for _, d in zip(range(n), corpus_documents(plain, "bn"), strict=False)]
    assert first == [d for _, d in zip(range(n), corpus_documents(cfg, "bn"), strict=False)]
    # and the stored order would have given the first budget one source only
    assert {d.split()[0] for d in first[:500]} == set(SOURCES)


def test_the_sample_is_fixed_by_the_seed(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl")

    def hashes(seed, name):
        m = tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": src}, seed=seed), "bn",
                                    str(tok_dir), tmp_path / name, log=quiet)
        return [s["xxh3_128"] for s in m["shards"]]

    assert hashes(0, "a") == hashes(0, "b")
    assert hashes(0, "a") != hashes(1, "c")


def test_a_larger_budget_keeps_the_smaller_budgets_data(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl")
    small, large = BUDGETS[:2], [*BUDGETS, 160000]
    folders = {}
    for name, budgets in (("small", small), ("large", large)):
        tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": src}, budgets), "bn",
                                str(tok_dir), tmp_path / name, log=quiet)
        folders[name] = TokenShards(tmp_path / name)
    assert folders["large"].tokens > folders["small"].tokens
    seg_small, _ = budget.segments(small, 32, 0.2)
    seg_large, _ = budget.segments(large, 32, 0.2)
    assert seg_large[:2] == seg_small
    # the tokens the smaller budgets read are the same, and so is their identity (the
    # training fingerprint): their checkpoints stay valid
    upto = seg_small[-1] * 32
    assert np.array_equal(folders["small"].slice(0, upto), folders["large"].slice(0, upto))
    assert folders["small"].identity(upto) == folders["large"].identity(upto)
    a = Blocks(folders["small"], 32, "bn", 0, False, seg_small)
    b = Blocks(folders["large"], 32, "bn", 0, False, seg_large)
    for j in range(seg_small[-1]):
        assert np.array_equal(a.sample(j)[0], b.sample(j)[0])


def test_a_chain_reads_each_block_once_in_a_seeded_order_per_budget(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl")
    tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": src}), "bn", str(tok_dir),
                            tmp_path / "bn", log=quiet)
    shards = TokenShards(tmp_path / "bn")
    seg, _ = budget.segments(BUDGETS, 32, 0.2)
    blocks = Blocks(shards, 32, "bn", 0, False, seg)
    order = [blocks.block(j) for j in range(seg[-1])]
    assert sorted(order) == list(range(seg[-1]))  # no block twice, none left out
    lo = 0
    for hi in seg:  # each budget's increment: exactly its own blocks, shuffled
        part = order[lo:hi]
        assert sorted(part) == list(range(lo, hi)) and part != sorted(part)
        lo = hi
    # sample j is a pure function of j: another process, or a resumed run, reading in any
    # order gets the same blocks
    again = Blocks(TokenShards(tmp_path / "bn"), 32, "bn", 0, False, seg)
    assert [again.block(j) for j in reversed(range(seg[-1]))] == order[::-1]
    assert Blocks(shards, 32, "bn", 1, False, seg).block(0) != order[0] or \
        Blocks(shards, 32, "bn", 1, False, seg).block(1) != order[1]
    # the text a run has read, mid-increment too, counts exactly the blocks it read
    L = 32
    for read, extra in ((seg[0] + 7, 0), (seg[0] + 7, 5), (seg[1] - 3, 11), (seg[2], 0)):
        got = blocks.text(read, extra)
        picked = [blocks.block(j) for j in range(read)]
        want = sum(shards.text_before([b * L + L])[0] - shards.text_before([b * L])[0]
                   for b in picked)
        if extra:
            b = blocks.block(read)
            want = want + shards.text_before([b * L + extra])[0] - shards.text_before([b * L])[0]
        assert got.tolist() == np.asarray(want).tolist(), (read, extra)


def test_repeating_a_short_corpus_says_how_often(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl", {"news": 300, "web": 200})
    with pytest.raises(DataShortError, match=r"languages\.bn\.corpus: .*allow_repeat"):
        tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": src}), "bn", str(tok_dir),
                                tmp_path / "x", log=quiet)
    m = tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": src, "allow_repeat": True}),
                                "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    assert m["passes_needed"] > 1
    seg, _ = budget.segments(BUDGETS, 32, 0.2)
    blocks = Blocks(TokenShards(tmp_path / "bn"), 32, "bn", 0, True, seg)
    assert blocks.usage(seg[-1])["passes"] == round(seg[-1] / blocks.rep.n, 4) > 1


def test_english_subsets_mix_at_their_weights_in_every_budget(tmp_path, tok_dir):
    files = {}
    for name, n in (("arxiv", 1500), ("c4", 6000), ("github", 900)):
        files[name] = _sorted_corpus(tmp_path / f"{name}.jsonl", {name: n})
    weights = {"arxiv": 0.2, "c4": 0.5, "github": 0.3}
    english = {"kind": "jsonl", "path": files["c4"],
               "subsets": {"sources": {k: {"path": v} for k, v in files.items()},
                           "weights": weights}}
    cfg = _cfg({"kind": "jsonl", "path": files["c4"]}, english=english)
    m = tokenize.prepare_corpus(cfg, "en", str(tok_dir), tmp_path / "en", log=quiet)
    assert m["sampling"]["target_shares"] == weights
    shards = TokenShards(tmp_path / "en")
    _, english_seg = budget.segments(BUDGETS, 32, 0.2)
    for e in english_seg:  # each budget's English replay
        got = _shares(shards.group_tokens(e * 32))
        for name, w in weights.items():
            assert abs(got[name] - w) < 0.02, (e, name, got)
    assert set(m["groups"]["documents"]) == set(weights)
    # proportional: in proportion to the subsets' sizes (bytes)
    english["subsets"]["weights"] = "proportional"
    m = tokenize.prepare_corpus(_cfg({"kind": "jsonl", "path": files["c4"]}, english=english),
                                "en", str(tok_dir), tmp_path / "p", log=quiet)
    shares = m["sampling"]["target_shares"]
    assert shares["c4"] > shares["arxiv"] > shares["github"]
    assert abs(sum(shares.values()) - 1) < 1e-5


def test_rows_naming_their_subset_are_mixed_at_the_weights(tmp_path, tok_dir):
    # one source whose rows name their subset (SlimPajama's meta.redpajama_set_name), its own
    # mix far from the weights: rows of a subset above its share are passed over
    src = _sorted_corpus(tmp_path / "slim.jsonl", {"RedPajamaC4": 6000,
                                                   "RedPajamaCommonCrawl": 3000,
                                                   "RedPajamaGithub": 3000})
    rows = [json.loads(x) for x in open(src, encoding="utf-8")]
    for r in rows:
        r["meta"] = {"redpajama_set_name": r["meta"]["source"]}
    fsutil.write_jsonl(src, rows)
    weights = {"RedPajamaCommonCrawl": 72.6, "RedPajamaC4": 14.4, "RedPajamaGithub": 13.0}
    english = {"kind": "jsonl", "path": src,
               "subsets": {"field": "meta.redpajama_set_name", "weights": weights}}
    cfg = _cfg({"kind": "jsonl", "path": src}, english=english)
    m = tokenize.prepare_corpus(cfg, "en", str(tok_dir), tmp_path / "en", log=quiet)
    assert m["sampling"]["rows_passed_over"] > 0
    shards = TokenShards(tmp_path / "en")
    target = _shares(weights)
    for e in budget.segments(BUDGETS, 32, 0.2)[1]:
        got = _shares(shards.group_tokens(e * 32))
        for name, w in target.items():
            assert abs(got[name] - w) < 0.02, (e, name, got)


def test_a_streamed_corpus_reads_from_across_its_files(tmp_path, tok_dir):
    # datasets' json builder over one file per source, streamed: files in a seeded order,
    # several read at once, through a shuffle buffer
    folder = tmp_path / "stream"
    folder.mkdir()
    names = [f"site{i}" for i in range(8)]
    files = [_sorted_corpus(folder / f"{n}.jsonl", {n: 600}) for n in names]
    corpus = {"kind": "hf", "path": "json", "data_files": files, "streaming": True,
              "open_files": 8, "shuffle_buffer": 200, "subsets": {"field": "meta.source"}}
    cfg = _cfg(corpus)
    m = tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "bn", log=quiet)
    assert m["sampling"]["order"] == "stream" and m["sampling"]["open_files"] == 8
    shards = TokenShards(tmp_path / "bn")
    seg, _ = budget.segments(BUDGETS, 32, 0.2)
    got = _shares(shards.group_tokens(seg[0] * 32))  # the first budget
    assert set(got) == set(names) and min(got.values()) > 0.5 / 8
    again = tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "again", log=quiet)
    assert [s["xxh3_128"] for s in again["shards"]] == [s["xxh3_128"] for s in m["shards"]]


def test_bad_subsets_are_refused_naming_the_key(tmp_path, tok_dir):
    src = _sorted_corpus(tmp_path / "c.jsonl", {"a": 50, "b": 50})
    base = {"kind": "jsonl", "path": src}
    with pytest.raises(ConfigError, match=r"english\.corpus\.subsets\.weights.*'nope': no such "
                                          r"subset"):
        _cfg(base, english={**base, "subsets": {"sources": {"a": {"path": src}},
                                                "weights": {"a": 1, "nope": 1}}})
    with pytest.raises(ConfigError, match=r"english\.corpus\.subsets\.weights.*sum to a "
                                          r"positive number"):
        _cfg(base, english={**base, "subsets": {"field": "meta.source",
                                                "weights": {"a": 0, "b": 0}}})
    with pytest.raises(ConfigError, match=r"english\.corpus\.subsets.*either field"):
        _cfg(base, english={**base, "subsets": {"weights": "proportional"}})
    with pytest.raises(SourceError, match=r"c\.jsonl: line \d+ has no subset field "
                                          r"'meta\.site'.*subsets\.field"):
        cfg = _cfg({**base, "allow_repeat": True, "subsets": {"field": "meta.site"}})
        tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "x", log=quiet)
    with pytest.raises(DataShortError, match=r"languages\.bn\.corpus\.subsets\.weights\.c: no "
                                             r"document of subset 'c'.*values of meta\.source "
                                             r"seen"):
        cfg = _cfg({**base, "allow_repeat": True,
                    "subsets": {"field": "meta.source", "weights": {"a": 1, "c": 1}}})
        tokenize.prepare_corpus(cfg, "bn", str(tok_dir), tmp_path / "y", log=quiet)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_a_permutation_holds_every_item_once(n):
    p = Permutation(n, "test", n)
    items = p.take(np.arange(n))
    assert sorted(items.tolist()) == list(range(n))
    assert [p[i] for i in range(n)] == items.tolist()  # the scalar path is the same network
    assert Permutation(n, "test", n).take(np.arange(n)).tolist() == items.tolist()
    if n > 6:
        assert Permutation(n, "other", n).take(np.arange(n)).tolist() != items.tolist()
