"""The data stage: generated languages, eval sets, and the mini FLAN rows (the token shards are
tested in test_tokens.py)."""

from __future__ import annotations

import json
import random
import re

import pytest
from stage_helpers import tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.data import synthetic
from lrmerge.data.sft import generated_rows, sft_rows


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


def _in_block(word: str, lo: int, hi: int) -> bool:
    # U+0964 (danda) is the full stop of Bengali, though it lies in the Devanagari block
    return all(lo <= ord(c) <= hi or c == "\u0964" for c in word)


def test_lexicon_is_a_seeded_bijection_into_the_script(cfg):
    bn, bo = synthetic.lexicon(cfg, "bn"), synthetic.lexicon(cfg, "bo")
    assert synthetic.lexicon(cfg, "bn").map == bn.map  # deterministic
    other = dict(cfg, seed=cfg["seed"] + 1)
    assert synthetic.lexicon(other, "bn").map != bn.map  # the seed matters
    words = bn.words()
    assert len(set(words)) == len(words) == len(synthetic.english_words())
    assert all(_in_block(w, 0x0980, 0x09FF) for w in bn.words())  # Bengali block
    assert all(_in_block(w, 0x0F00, 0x0FFF) for w in bo.words())  # Tibetan block


def test_target_text_is_english_grammar_relabelled_with_some_code_switching(cfg):
    lex = synthetic.lexicon(cfg, "bo")
    inverse = {v: k for k, v in lex.map.items()}
    g = synthetic.Grammar(random.Random(1))
    rng = random.Random(2)
    total = switched = 0
    for _ in range(300):
        english = g.corpus_doc()
        target = lex.render(english, rng, code_switch=0.15).split(" ")
        assert len(target) == len(english)
        for e, t in zip(english, target, strict=True):
            total += 1
            if e.isdigit():  # numbers are written with shared digits
                assert t == e
            elif t == e and e in lex.map and lex.map[e] != e:
                switched += 1  # kept in English
            else:
                assert inverse[t] == e
    assert 0.10 < switched / total < 0.20


def test_sft_holds_out_the_english_test_items(tmp_path):
    # 400 examples: drawn without the hold-out, 2 of them would be test items (checked)
    cfg = tiny_config(mini__sft_examples=400)
    from lrmerge.evaluate.tasks import build

    rows = generated_rows(cfg)
    build(cfg, "en", tmp_path)
    tests = {r["query"] for t in cfg["english"]["tasks"]
             for r in fsutil.read_jsonl(tmp_path / f"{t}.test.jsonl")}
    assert len(rows) == 400 and not tests & {r["prompt"] for r in rows}


def test_sft_data_answers_are_right(cfg):
    rows = generated_rows(cfg)
    assert len(rows) == cfg["mini"]["sft_examples"]
    fams = [r["family"] for r in rows]
    assert {f: fams.count(f) for f in synthetic.FAMILIES} == {f: len(rows) // 4 for f in synthetic.FAMILIES}
    for r in rows:
        p, a = r["prompt"], r["response"]
        if r["family"] == "math":
            n = [int(x) for x in re.findall(r"\d+", p)]
            assert int(a) == (n[0] + n[1] if " gets " in p else n[0] - n[1])
        elif r["family"] == "reading_comprehension":
            story, question = p.split(" question : ")
            thing = question.split(" the ")[1].split(" ?")[0]
            assert f"{a} has the {thing} ." in story
        elif r["family"] == "classification":
            nouns = synthetic.TOPICS[a]["nouns"]
            assert any(f" {n} " in p for n in nouns)


def test_cli_errors_name_the_key(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    # input errors: one line naming the key, exit 2
    assert cli(["tasks", "--config", str(cfg_path), "--lang", "xx",
                "--write", str(tmp_path / "xx")]) == 2
    assert "'xx' is not in config key 'languages'" in capsys.readouterr().err
    bad = tiny_config()
    bad["mini"]["code_switch"] = 2
    write_config(cfg_path, bad)
    assert cli(["data", "tokenizer", "--config", str(cfg_path), "--out", str(tmp_path / "t")]) == 2
    assert "mini.code_switch" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "xx").exists()


# ------------------------------------------------------------------------------------------
# The paper's loading paths, on local files (load_dataset("json", data_files=...))


def _jsonl(path, rows):
    fsutil.write_jsonl(path, rows)
    return str(path)


def test_flan_rows_from_local_files(tmp_path):
    flan = _jsonl(tmp_path / "flan.jsonl", [{"inputs": f"q{i}", "targets": f"a{i}"}
                                            for i in range(10)] + [{"inputs": "q", "targets": ""}])
    for kind in ("hf", "jsonl"):
        spec = {"kind": kind, "path": "json", "data_files": flan, "max_examples": 8}
        if kind == "jsonl":
            spec = {"kind": "jsonl", "path": flan, "max_examples": 8}
        rows = list(sft_rows(tiny_config(sft__data=spec)))
        # a seeded sample of 8 of the 9 examples (the empty response is none), not the first 8
        assert len(rows) == len({r["prompt"] for r in rows}) == 8
        assert all(r == {"prompt": f"q{r['prompt'][1:]}", "response": f"a{r['prompt'][1:]}",
                         "task": "flan"} for r in rows)
    cfg = tiny_config(sft__data={"kind": "jsonl", "path": flan, "prompt_field": "question"})
    with pytest.raises(ValueError, match=r"flan\.jsonl: line 1 has no key 'question'"):
        list(sft_rows(cfg))


def test_errors_name_the_key():
    langs = tiny_config()["languages"]
    langs["kk"] = dict(langs["bn"], corpus={"kind": "generated"})
    with pytest.raises(ValueError, match=r"languages\.kk\.corpus\.script"):
        synthetic.lexicon(tiny_config(languages=langs), "kk")


def test_outputs_are_atomic(tmp_path):
    target = tmp_path / "x.jsonl"
    fsutil.write_jsonl(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fsutil.write_jsonl(target, rows())
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
