"""The data stage: generated languages, eval sets, and the mini FLAN rows (the token shards are
tested in test_tokens.py)."""

from __future__ import annotations

import json
import random
import re

import pytest
import yaml
from stage_helpers import tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.data import synthetic
from lrmerge.data.evalsets import build_eval
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
    rows = generated_rows(cfg)
    build_eval(cfg, "en", tmp_path)
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
        elif r["family"] == "mrc":
            story, question = p.split(" question : ")
            thing = question.split(" the ")[1].split(" ?")[0]
            assert f"{a} has the {thing} ." in story
        elif r["family"] == "topic":
            nouns = synthetic.TOPICS[a]["nouns"]
            assert any(f" {n} " in p for n in nouns)


def test_eval_sets_and_lm_eval_yamls(cfg, tmp_path):
    out = tmp_path / "eval" / "bn"
    tasks = build_eval(cfg, "bn", out)
    assert tasks == cfg["languages"]["bn"]["tasks"]
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(out), include_defaults=False)
    assert set(tasks) <= set(tm.all_tasks)
    assert "lrmerge_bn" in tm.all_tasks  # the language's group
    for task in tasks:
        y = yaml.safe_load((out / f"{task}.yaml").read_text())
        assert y["output_type"] == "multiple_choice"
        for path in y["dataset_kwargs"]["data_files"].values():
            assert path.startswith("/") and (tmp_path / "eval" / "bn") in __import__(
                "pathlib").Path(path).parents
        test = fsutil.read_jsonl(out / f"{task}.test.jsonl")
        shots = fsutil.read_jsonl(out / f"{task}.train.jsonl")
        assert len(test) == cfg["mini"]["eval_examples"]
        assert all(0 <= r["gold"] < len(r["choices"]) == 4 for r in test)
        assert len({r["query"] for r in test} & {r["query"] for r in shots}) <= 1
    # rerun: identical files, written over the old folder
    before = (out / "topic_bn.test.jsonl").read_text()
    build_eval(cfg, "bn", out)
    assert (out / "topic_bn.test.jsonl").read_text() == before
    assert not list(tmp_path.glob("eval/.*"))  # no temporary folders left


def test_math_as_generation(tmp_path):
    cfg = tiny_config(evaluate__math_format="generate")
    build_eval(cfg, "en", tmp_path)
    y = yaml.safe_load((tmp_path / "math_en.yaml").read_text())
    assert y["output_type"] == "generate_until"
    assert y["generation_kwargs"]["max_gen_toks"] == cfg["evaluate"]["max_gen_toks"]
    row = fsutil.read_jsonl(tmp_path / "math_en.test.jsonl")[0]
    n = [int(x) for x in re.findall(r"\d+", row["query"])]
    assert int(row["answer"]) in (n[0] + n[1], n[0] - n[1])


def test_cli_errors_name_the_key(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    assert cli(["data", "eval", "--config", str(cfg_path), "--lang", "en",
                "--out-dir", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "topic_en.yaml").exists()
    # input errors: one line naming the key, exit 2
    assert cli(["data", "eval", "--config", str(cfg_path), "--lang", "xx",
                "--out-dir", str(tmp_path / "xx")]) == 2
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
        assert rows[:2] == [{"prompt": "q0", "response": "a0"}, {"prompt": "q1", "response": "a1"}]
        assert len(rows) == 8
    cfg = tiny_config(sft__data={"kind": "jsonl", "path": flan, "prompt_field": "question"})
    with pytest.raises(ValueError, match=r"flan\.jsonl: line 1 has no key 'question'"):
        list(sft_rows(cfg))


def test_eval_from_local_files_like_milic_and_sib(tmp_path):
    # MiLiC-Eval style: data/<task>/<lang>/{train_1,test}.json with the answer as an index
    root = tmp_path / "data" / "topic" / "bo"
    root.mkdir(parents=True)
    _jsonl(root / "test.json", [{"text": f"t{i}", "options": ["a", "b", "c"], "answer": i % 3}
                                for i in range(9)])
    _jsonl(root / "train_1.json", [{"text": "s", "options": ["a", "b", "c"], "answer": 1}])
    # SIB-200 style: a fixed label set, the label given as text
    sib = _jsonl(tmp_path / "sib.jsonl", [{"index_id": i, "category": c, "text": f"s{i}"}
                                          for i, c in enumerate(["sports", "health", "travel"])])
    langs = tiny_config()["languages"]
    langs["bo"]["tasks"] = ["milic_topic_bo", "sib200_bod_Tibt", "belebele_bod_Tibt"]
    sources = {
        "milic_topic_bo": {"kind": "hf", "family": "topic", "path": "json",
                           "test": {"data_files": str(root / "test.json")},
                           "fewshot": {"data_files": str(root / "train_1.json")},
                           "text_field": "text", "choices_field": "options",
                           "label_field": "answer", "prompt_suffix": "\nTopic:"},
        "sib200_bod_Tibt": {"kind": "hf", "family": "topic", "path": "json", "data_files": sib,
                            "choices": ["science/technology", "travel", "politics", "sports",
                                        "health", "entertainment", "geography"],
                            "label_field": "category",
                            "template": "Text: {text}\nTopic:"},
        "belebele_bod_Tibt": {"kind": "builtin"},
    }
    cfg = tiny_config(languages=langs, evaluate__sources=sources)
    written = build_eval(cfg, "bo", tmp_path / "out")
    assert written == ["milic_topic_bo", "sib200_bod_Tibt"]  # built-ins need no files
    milic = fsutil.read_jsonl(tmp_path / "out" / "milic_topic_bo.test.jsonl")
    assert milic[4] == {"query": "t4\nTopic:", "choices": ["a", "b", "c"], "gold": 1}
    y = yaml.safe_load((tmp_path / "out" / "milic_topic_bo.yaml").read_text())
    assert y["fewshot_split"] == "train"
    sib_rows = fsutil.read_jsonl(tmp_path / "out" / "sib200_bod_Tibt.test.jsonl")
    assert [r["gold"] for r in sib_rows] == [3, 4, 1]
    assert sib_rows[0]["query"] == "Text: s0\nTopic:"
    sources["sib200_bod_Tibt"]["choices"] = ["travel"]
    with pytest.raises(ValueError, match="label 'sports' is not among the choices"):
        build_eval(tiny_config(languages=langs, evaluate__sources=sources), "bo",
                        tmp_path / "out2")


def test_milic_source_reads_the_benchmark_layout(tmp_path):
    repo = tmp_path / "milic"
    folder = repo / "data" / "math" / "ug"
    folder.mkdir(parents=True)
    _jsonl(folder / "test.json", [{"question": f"{i} + 1 = ?", "options": [str(i + 1), "0"],
                                   "answer": 0} for i in range(1, 4)])
    _jsonl(folder / "train_2.json", [{"question": "1 + 1 = ?", "options": ["2", "0"],
                                      "answer": 0}])
    langs = tiny_config()["languages"]
    langs["bo"]["tasks"] = ["milic_math_ug"]
    sources = {"milic_math_ug": {"kind": "milic", "repo": str(repo), "task": "math", "lang": "ug",
                                 "family": "math", "fewshot_file": "train_2",
                                 "text_field": "question", "format": "generate"}}
    build_eval(tiny_config(languages=langs, evaluate__sources=sources), "bo", tmp_path / "o")
    rows = fsutil.read_jsonl(tmp_path / "o" / "milic_math_ug.test.jsonl")
    assert rows[0] == {"query": "1 + 1 = ?", "answer": "2"}
    assert fsutil.read_jsonl(tmp_path / "o" / "milic_math_ug.train.jsonl") == [rows[0]]
    y = yaml.safe_load((tmp_path / "o" / "milic_math_ug.yaml").read_text())
    assert y["output_type"] == "generate_until"
    del sources["milic_math_ug"]["lang"]
    with pytest.raises(ValueError, match=r"evaluate\.sources\.milic_math_ug\.lang"):
        build_eval(tiny_config(languages=langs, evaluate__sources=sources), "bo",
                        tmp_path / "o2")


def test_errors_name_the_key():
    langs = tiny_config()["languages"]
    langs["bn"]["tasks"] = ["sentiment_bn"]
    with pytest.raises(ValueError, match="sentiment_bn.*evaluate.sources.sentiment_bn.family"):
        build_eval(tiny_config(languages=langs), "bn", "/tmp/never")
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
