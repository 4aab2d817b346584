"""The evaluate stage: benchmarks in their real formats -> lm-eval tasks -> scores by the
reference protocols, one JSON per model."""

from __future__ import annotations

import json
import random
import re

import eval_fixtures as fx
import pytest
import torch
from stage_helpers import prepare_data, pretrain_base, tiny_config, write_config

from lrmerge import fsutil
from lrmerge.cli import main as cli
from lrmerge.config import ConfigError, load_config, validate_config
from lrmerge.evaluate import run, scoring, tasks
from lrmerge.evaluate.benchmarks import BenchmarkError

REPO = fx.Path(__file__).resolve().parents[1]
# Belebele items of the bench: its shots are held out of them (three sets of 5), items remain
BELEBELE_ITEMS = 24


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The mini's tiny base model (pre-trained a few steps on generated English)."""
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("evaluate")
    pretrain_base(cfg, prepare_data(cfg, root, langs=("en",), sft=False), root / "model")
    return root / "model"


def bench_config(root, sib: dict | None = None, **evaluate) -> dict:
    """The tiny config with bo evaluated on MiLiC-Eval files and bn on SIB-200, Belebele and
    MGSM files, all fixtures in the releases' formats (`sib`: fx.sources' SIB-200 options)."""
    cfg = tiny_config()
    src = fx.sources(root, **(sib or {}))
    src["belebele_ben_Beng"]["test"]["data_files"] = str(fx.belebele(root, n=BELEBELE_ITEMS))
    fx.milic(root / "milic")
    cfg["evaluate"].update(sources={**cfg["evaluate"]["sources"], **src},
                           milic_root=str(root / "milic"), protocol="generate")
    cfg["evaluate"].update(evaluate)
    cfg["languages"]["bo"]["tasks"] = [t for t in src if t.endswith("_bo")]
    cfg["languages"]["bn"]["tasks"] = [t for t in src if not t.endswith("_bo")]
    return validate_config(cfg, "bench test config")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    cfg = bench_config(root)
    for lang in ("bo", "bn"):
        tasks.build(cfg, lang, root / "tasks" / lang)
    return cfg, root


# ----------------------------------------------------------------------------------------------
# The reference scoring rules on hand-made generations


def test_letter_is_the_first_character_when_it_is_A_to_E():
    assert scoring.parse_letter("B. because the text says so") == "B"
    assert scoring.parse_letter("\n  C\nD") == "C"  # stripped, then the first line
    assert scoring.parse_letter("b") == "b"  # no case folding: b is not B
    assert scoring.parse_letter("The answer is A") == "The answer is A"


def test_number_is_the_last_number_of_the_first_line():
    cases = {
        "The answer is 18.": 18.0,
        "1,234.": 1234.0,  # thousands separator and a trailing period
        "উত্তর ১২": 12.0,  # Bengali digits
        "৩,৫০০ টাকা": 3500.0,
        "జవాబు ౪౨": 42.0,  # Telugu
        "ଉତ୍ତର ୭": 7.0,  # Odia
        "விடை ௫": 5.0,  # Tamil
        "ལན། ༡༢": 12.0,  # Tibetan
        "᠑᠒": 12.0,  # Mongolian
        "جاۋاب ٣٤": 34.0,  # Arabic-Indic (Uyghur)
        "٣٬٥٠٠": 3500.0,  # Arabic thousands separator
        "3 + 4 = 7\n8": 7.0,  # last number of the first line only
        "2.5 then 12.5.": 12.5,
        "no number here": None,
        "": None,
    }
    for text, want in cases.items():
        assert scoring.parse_number(text) == want, text


def test_label_is_a_lower_cased_exact_match():
    doc = {"answer": "Sports", "answer_kind": "label", "family": "classification"}
    assert scoring.process_generation(doc, ["  SPORTS\nand more"])["acc"] == 1.0
    assert scoring.process_generation(doc, ["sports."])["acc"] == 0.0


def test_debris_is_counted_never_crashed_on():
    doc = {"answer": "12", "answer_kind": "number", "family": "math"}
    broken = b"\xe0\xbd\x80\xe0\xbd 12".decode("utf-8", errors="replace")  # cut Tibetan bytes
    out = scoring.process_generation(doc, [broken])
    assert out == {"acc": 1.0, "debris": 1.0}
    assert scoring.process_generation(doc, ["\ufffd\ufffd"]) == {"acc": 0.0, "debris": 1.0}
    assert scoring.process_generation(doc, ["\ud800x"])["debris"] == 1.0
    assert scoring.process_generation(doc, ["12"])["debris"] == 0.0


def test_macro_f1_matches_sklearn_over_the_gold_labels():
    from sklearn.metrics import f1_score

    rng = random.Random(0)
    labels = ["politics", "sports", "economy"]
    pairs = [(rng.choice(labels), rng.choice(labels + ["???", ""])) for _ in range(200)]
    golds, preds = zip(*pairs, strict=True)
    ref = f1_score(golds, preds, labels=sorted(set(golds)), average="macro", zero_division=0)
    assert scoring.macro_f1(pairs) == pytest.approx(ref)
    # an unparsable answer is a miss, never a class of its own
    assert scoring.macro_f1([("a", "a"), ("b", "junk")]) == pytest.approx((1.0 + 0.0) / 2)


# ----------------------------------------------------------------------------------------------
# Tasks built from the releases' formats


def _contexts(folder, name: str) -> list:
    """The requests lm-eval builds for a task: (context, doc) per test item."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(folder), include_defaults=False)
    task = tm.load([name])["tasks"][name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [(inst.args[0], inst.doc) for inst in task.instances if inst.idx == 0]


def _milic(root, family_folder, name):
    path = root / "milic" / "data" / family_folder / "bo" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_milic_prompts_are_the_reference_prompts(bench):
    """The prompt lm-eval sends is the one MiLiC-Eval's infer.py builds (English wording)."""
    cfg, root = bench
    folder = root / "tasks" / "bo"
    # reading comprehension, shot set 2: the first five records of train_2.json, then the item
    shots, test = _milic(root, "reading_comprehension", "train_2"), _milic(
        root, "reading_comprehension", "test")

    def mrc(r, answer):
        s = "Please read the following Tibetan dialogue and answer the question.\nContext:\n"
        s += "".join(f"{t}\n" for t in r["context"]) + f"Question: {r['question']}\nOptions:\n"
        s += "".join(f"{'ABCDE'[j]}. {o}\n" for j, o in enumerate(r["options"]))
        return s + (f"Answer: {r['answer']}\n\n" if answer else "Answer:")

    want = "".join(mrc(r, True) for r in shots[:5]) + mrc(test[0], False)
    got = {doc["id"]: ctx for ctx, doc in _contexts(folder, "milic_mrc_bo_shots2")}
    assert got[test[0]["id"]] == want

    # response selection: no question line
    shots, test = _milic(root, "response_selection", "train_1"), _milic(
        root, "response_selection", "test")

    def rs(r, answer):
        s = "Please select an appropriate response for the following Tibetan dialogue.\n"
        s += "Context:\n" + "".join(f"{t}\n" for t in r["context"]) + "Options:\n"
        s += "".join(f"{'ABCDE'[j]}. {o}\n" for j, o in enumerate(r["options"]))
        return s + (f"Answer: {r['answer']}\n\n" if answer else "Answer:")

    got = {doc["id"]: ctx for ctx, doc in _contexts(folder, "milic_response_bo_shots1")}
    assert got[test[3]["id"]] == "".join(rs(r, True) for r in shots[:5]) + rs(test[3], False)

    # math: worked solutions in the shots, a trailing space after the last "solution:"
    shots, test = _milic(root, "math", "train_3"), _milic(root, "math", "test")

    def math(r, answer):
        s = ("Please solve the following Tibetan math problem step by step.\n"
             f"Problem: {r['question']}\nStep-by-step solution: ")
        return s + (f"{r['cot']['en']}\n\n" if answer else "")

    got = {doc["id"]: ctx for ctx, doc in _contexts(folder, "milic_math_bo_shots3")}
    assert got[test[1]["id"]] == "".join(math(r, True) for r in shots[:5]) + math(test[1], False)

    # classification: one example per label (the first of each in train_1), shuffled with seed
    # 0; texts cut to 512 characters; candidate labels from the test set
    shots, test = _milic(root, "text_classification_sentence", "train_1"), _milic(
        root, "text_classification_sentence", "test")
    labels = sorted({r["label"]["en"] for r in test})
    chosen = [next(r for r in shots if r["label"]["en"] == lab) for lab in labels]
    random.Random(0).shuffle(chosen)

    def cls(r, answer):
        s = (f"Please classify the following Tibetan text.\nText: {r['text'][:512]}\n"
             f"Candidate labels: {', '.join(labels)}\n")
        return s + (f"Answer: {r['label']['en']}\n\n" if answer else "Answer:")

    got = {doc["id"]: ctx for ctx, doc in _contexts(folder, "milic_topic_bo_shots1")}
    assert got[test[0]["id"]] == "".join(cls(r, True) for r in chosen) + cls(test[0], False)
    assert len(test[0]["text"]) > 512


def test_chinese_prompts(tmp_path):
    cfg = bench_config(tmp_path, prompt_language="zh")
    tasks.build(cfg, "bo", tmp_path / "tasks" / "bo")
    ctx, doc = _contexts(tmp_path / "tasks" / "bo", "milic_topic_bo_shots1")[0]
    assert ctx.startswith("请判断以下藏语文本的类别：\n文本：")
    assert ctx.endswith("\n候选类别：体育、政治、经济\n答案：")
    # the shots' answers follow the colon directly, in the prompt language
    assert len(re.findall(r"答案：(体育|政治|经济)\n\n", ctx)) == 3
    assert doc["answer"] in {"政治", "体育", "经济"}


def test_other_benchmarks_read_in_their_formats(bench):
    cfg, root = bench
    folder = root / "tasks" / "bn"
    manifest = json.loads((folder / "tasks.json").read_text())["tasks"]
    # SIB-200: CSV quoting keeps a tab and doubled quotes inside one text
    sib = fsutil.read_jsonl(folder / "sib200_ben_Beng.test.jsonl")
    assert len(sib) == 7 and sib[0]["text"] == 'বাংলা বাক্য 0 (science/technology)\tসে বলল "হ্যাঁ"'
    assert sib[0]["candidates"] == sorted(fx.SIB_LABELS)
    assert manifest["sib200_ben_Beng"]["n_shot"] == 7  # one per label
    # MGSM: no header, a bare quote inside a question, numeric answers
    mgsm = fsutil.read_jsonl(folder / "mgsm_bn.test.jsonl")
    assert len(mgsm) == 5 and '"মা" বললেন' in mgsm[1]["question"]
    assert [r["answer"] for r in mgsm] == ["1012", "1013", "1014", "1015", "1016"]
    # Belebele: the shots are held out of the test items, recorded
    bele = manifest["belebele_ben_Beng"]
    assert bele["held_out_for_shots"] + bele["n_items"] == BELEBELE_ITEMS
    assert 5 <= bele["held_out_for_shots"] <= 15 and bele["n_items"] >= BELEBELE_ITEMS - 15
    ctx, doc = _contexts(folder, "belebele_ben_Beng_shots1")[0]
    assert ctx.endswith(f"Passage:\n{doc['context'][0]}\nQuestion: {doc['question']}\n"
                        "Options:\nA. এক\nB. দুই\nC. তিন\nD. চার\nAnswer:")
    assert ctx.count("Answer: ") == 5


# ----------------------------------------------------------------------------------------------
# End to end


ScriptedLM = fx.ScriptedLM


def _expected_acc(rows):
    evens = [r for r in rows if fx.is_even(r)]
    return len(evens) / len(rows)


def _expected_predictions(rows, protocol: str, sets: int) -> dict:
    """ScriptedLM's answers counted per candidate label: the gold label on even items; on odd
    ones an unparsable "zzz" (generate) or the first wrong candidate (loglik)."""
    counts = dict.fromkeys(sorted(rows[0]["choices"]) + [run.UNPARSED], 0)
    for r in rows:
        if fx.is_even(r):
            answer = r["answer"]
        elif protocol == "generate":
            answer = run.UNPARSED
        else:
            answer = r["choices"][1 if r["gold"] == 0 else 0]
        counts[answer] += sets
    return counts


def test_each_family_scored_end_to_end(bench, tmp_path):
    cfg, root = bench
    out = tmp_path / "eval" / "m.json"
    doc = run.evaluate(cfg, "scripted", ["bo", "bn"], str(root / "tasks"), str(out),
                       lm=ScriptedLM())
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    assert list(doc["tasks"]) == cfg["languages"]["bo"]["tasks"] + cfg["languages"]["bn"]["tasks"]
    for task, e in doc["tasks"].items():
        lang = e["language"]
        rows = fsutil.read_jsonl(root / "tasks" / lang / f"{task}.test.jsonl")
        assert e["family"] == cfg["evaluate"]["sources"][task]["family"]
        assert e["metric"] == "acc" and e["n"] == len(rows)
        assert e["score"] == pytest.approx(_expected_acc(rows)), task
        assert e["stderr"] is not None and e["stderr"] > 0
        if e["shot_sets"]:
            assert set(e["per_set"]) == {"1", "2", "3"}
            assert all(v == pytest.approx(e["score"]) for v in e["per_set"].values())
        wrong = len(rows) - round(_expected_acc(rows) * len(rows))
        sets = max(1, len(e["shot_sets"]))
        assert e["debris"] == (wrong * sets if e["family"] == "math" else 0), task
        assert (e["macro_f1"] is not None) == (e["family"] == "classification")
        if e["family"] == "classification":  # what the model answered, per label, over the sets
            assert e["predictions"] == _expected_predictions(rows, "generate", sets), task
            assert e["predictions"][run.UNPARSED] > 0
            assert e["predictions_per_set"] == {
                k: _expected_predictions(rows, "generate", 1) for k in ("1", "2", "3")}
        else:
            assert e["predictions"] is None and e["predictions_per_set"] is None
        # run on every item: no evaluate.limit sample
        assert e["limit"] is None and e["n_items_full"] == len(rows) and e["sample_hash"] is None
    assert doc["tasks"]["mgsm_bn"]["per_set"] is None and doc["tasks"]["mgsm_bn"]["n_shot"] == 0


def test_loglik_protocol_end_to_end(tmp_path):
    cfg = bench_config(tmp_path, protocol="loglik")
    for lang in ("bo", "bn"):
        tasks.build(cfg, lang, tmp_path / "tasks" / lang)
    doc = run.evaluate(cfg, "scripted", ["bo", "bn"], str(tmp_path / "tasks"),
                       str(tmp_path / "m.json"), lm=ScriptedLM())
    for task, e in doc["tasks"].items():
        rows = fsutil.read_jsonl(tmp_path / "tasks" / e["language"] / f"{task}.test.jsonl")
        assert e["protocol"] == "loglik" and e["debris"] is None
        assert e["score"] == pytest.approx(_expected_acc(rows)), task
        if e["family"] == "classification":
            sets = max(1, len(e["shot_sets"]))
            assert e["predictions"] == _expected_predictions(rows, "loglik", sets), task
            assert e["predictions"][run.UNPARSED] == 0
    # math candidates: the gold number among other items' answers
    math = fsutil.read_jsonl(tmp_path / "tasks" / "bo" / "milic_math_bo.test.jsonl")
    assert all(r["choices"][r["gold"]] == r["answer"] and len(r["choices"]) == 4 for r in math)


@pytest.mark.parametrize("protocol", ["generate", "loglik"])
def test_a_model_answering_one_label_shows_in_its_predictions(protocol, tmp_path):
    cfg = bench_config(tmp_path, protocol=protocol)
    tasks.build(cfg, "bn", tmp_path / "tasks" / "bn")
    doc = run.evaluate(cfg, "one-label", ["bn"], str(tmp_path / "tasks"),
                       str(tmp_path / "m.json"), lm=fx.OneLabelLM("travel"))
    e = doc["tasks"]["sib200_ben_Beng"]
    rows = fsutil.read_jsonl(tmp_path / "tasks" / "bn" / "sib200_ben_Beng.test.jsonl")
    want = dict.fromkeys(sorted(fx.SIB_LABELS) + [run.UNPARSED], 0)
    want["travel"] = 3 * len(rows)  # three shot sets
    assert e["predictions"] == want
    assert e["score"] == pytest.approx(sum(r["answer"] == "travel" for r in rows) / len(rows))


def test_answers_are_never_counted_from_nothing():
    meta = {"task": "sib", "family": "classification", "kind": "sib200", "shot_sets": ["1", "2"],
            "lm_eval_tasks": {"1": "sib_shots1", "2": "sib_shots2"}}
    sample = {"doc": {"choices": ["Sports", "travel"]}, "macro_f1": ("sports", "sports")}
    with pytest.raises(RuntimeError, match=r"task sib: lm-eval logged no samples for "
                       r"\['sib_shots2'\]"):
        run.predictions(meta, {"sib_shots1": [sample]})
    junk = dict(sample, macro_f1=("sports", "sport"))
    total, per_set = run.predictions(meta, {"sib_shots1": [sample], "sib_shots2": [junk]})
    assert total == {"Sports": 1, "travel": 0, run.UNPARSED: 1}
    assert per_set["2"] == {"Sports": 0, "travel": 0, run.UNPARSED: 1}


def test_real_tiny_model_runs_every_family(model, tmp_path):
    """lm-eval's own hf model generates on every task (scores are chance for a tiny model), on
    task folders sampled to 2 items a task."""
    cfg = bench_config(tmp_path, limit=2)
    for lang in ("bo", "bn"):
        tasks.build(cfg, lang, tmp_path / "tasks" / lang)
    doc = run.evaluate(cfg, str(model), ["bo", "bn"], str(tmp_path / "tasks"),
                       str(tmp_path / "m.json"), threads=1)
    assert set(doc["tasks"]) == set(cfg["languages"]["bo"]["tasks"]
                                    + cfg["languages"]["bn"]["tasks"])
    for e in doc["tasks"].values():
        assert e["n"] == 2 and 0.0 <= e["score"] <= 1.0 and e["debris"] is not None
        assert e["limit"] == 2 and len(e["sample_indices"]) == 2
        if e["family"] == "classification":
            assert sum(e["predictions"].values()) == 2 * max(1, len(e["shot_sets"]))


def _own_accuracy(model_dir, rows):
    """Accuracy by summed log-likelihood of " " + choice after the query, computed here the way
    lm-eval splits context and continuation (encode the whole, cut at the context's length)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    for r in rows:
        scores = []
        for choice in r["choices"]:
            ctx = tok(r["query"], add_special_tokens=False)["input_ids"]
            whole = tok(r["query"] + " " + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            with torch.no_grad():
                logp = lm(torch.tensor([whole])).logits.log_softmax(-1)[0]
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        right += max(range(len(scores)), key=scores.__getitem__) == r["gold"]
    return right / len(rows)


def test_mini_tasks_scored_as_a_direct_computation(model, tmp_path):
    cfg = tiny_config()
    for lang in ("bn", "en"):
        tasks.build(cfg, lang, tmp_path / "tasks" / lang)
    doc = run.evaluate(cfg, str(model), ["bn", "en"], str(tmp_path / "tasks"),
                       str(tmp_path / "m.json"), threads=1)
    assert list(doc["tasks"]) == cfg["languages"]["bn"]["tasks"] + cfg["english"]["tasks"]
    for task in ("topic_bn", "math_en"):
        lang = task.rsplit("_", 1)[1]
        rows = fsutil.read_jsonl(tmp_path / "tasks" / lang / f"{task}.test.jsonl")
        assert doc["tasks"][task]["score"] == pytest.approx(_own_accuracy(model, rows))
    assert doc["tasks"]["topic_bn"]["family"] == "classification"


def test_mini_task_folder(tmp_path):
    import yaml
    from lm_eval.tasks import TaskManager

    cfg = tiny_config()
    out = tmp_path / "tasks" / "bn"
    manifest = tasks.build(cfg, "bn", out)
    assert list(manifest["tasks"]) == cfg["languages"]["bn"]["tasks"]
    tm = TaskManager(include_path=str(out), include_defaults=False)
    assert set(cfg["languages"]["bn"]["tasks"]) <= set(tm.all_tasks)
    for task, meta in manifest["tasks"].items():
        y = yaml.safe_load((out / f"{task}.yaml").read_text().replace("!function", ""))
        assert y["output_type"] == "multiple_choice" and meta["protocol"] == "loglik"
        for path in y["dataset_kwargs"]["data_files"].values():
            assert fx.Path(path).is_absolute() and fx.Path(path).parent == out
        test = fsutil.read_jsonl(out / f"{task}.test.jsonl")
        assert len(test) == meta["n_items"] == cfg["mini"]["eval_examples"]
        assert all(0 <= r["gold"] < len(r["choices"]) == 4 for r in test)
    # rerun: identical files, written over the old folder; no temporary folder left
    before = (out / "topic_bn.test.jsonl").read_text()
    tasks.build(cfg, "bn", out)
    assert (out / "topic_bn.test.jsonl").read_text() == before
    assert not list(out.parent.glob(".*"))
    # the generative protocol: greedy generation capped per family
    cfg = tiny_config(evaluate__protocol="generate")
    tasks.build(cfg, "en", tmp_path / "gen")
    y = yaml.safe_load((tmp_path / "gen" / "math_en.yaml").read_text().replace("!function", ""))
    assert y["output_type"] == "generate_until"
    assert y["generation_kwargs"]["max_gen_toks"] == 150
    row = fsutil.read_jsonl(tmp_path / "gen" / "math_en.test.jsonl")[0]
    n = [int(x) for x in re.findall(r"\d+", row["query"])]
    assert int(row["answer"]) in (n[0] + n[1], n[0] - n[1])


# ----------------------------------------------------------------------------------------------
# Failures are loud


def test_missing_milic_file_names_task_and_file(tmp_path):
    cfg = bench_config(tmp_path)
    (tmp_path / "milic" / "data" / "math" / "bo" / "train_2.json").unlink()
    with pytest.raises(BenchmarkError, match=r"task milic_math_bo .*data/math/bo/train_2\.json"):
        tasks.build(cfg, "bo", tmp_path / "tasks" / "bo")
    assert not (tmp_path / "tasks" / "bo").exists()  # nothing half-written


def test_missing_field_names_the_field_and_those_present(tmp_path):
    cfg = bench_config(tmp_path)
    path = tmp_path / "milic" / "data" / "reading_comprehension" / "bo" / "test.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    rows[2]["opts"] = rows[2].pop("options")
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"milic_mrc_bo.*test\.json: record 2 has no field "
                       r"'options' \(fields: id, context, question, answer, opts\)"):
        tasks.build(cfg, "bo", tmp_path / "tasks" / "bo")


def test_malformed_sources_fail_with_the_place(tmp_path):
    cfg = bench_config(tmp_path)
    bad = tmp_path / "milic" / "data" / "math" / "bo" / "test.json"
    bad.write_text('[{"id": 1, "question": "q", "answer": "twelve"}]', encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"data/math/bo/test\.json: record 0: answer "
                       r"'twelve' is not a number"):
        tasks.build(cfg, "bo", tmp_path / "t" / "bo")
    bad.write_text("[{not json", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"task milic_math_bo .*math/bo/test\.json"):
        tasks.build(cfg, "bo", tmp_path / "t" / "bo")
    cfg["evaluate"]["sources"]["sib200_ben_Beng"]["fields"] = {"label": "topic"}
    with pytest.raises(BenchmarkError, match=r"sib200_ben_Beng.*record 0 has no field 'topic' "
                       r"\(fields: index_id, category, text\)"):
        tasks.build(cfg, "bn", tmp_path / "t" / "bn")


def test_config_without_a_source_is_named(tmp_path):
    cfg = tiny_config()
    cfg["languages"]["bn"]["tasks"] = ["topic_bn", "belebele_ben_Beng"]
    path = write_config(tmp_path / "c.yaml", cfg)
    with pytest.raises(ConfigError, match=r"languages\.bn\.tasks: task 'belebele_ben_Beng' has "
                       r"no evaluate\.sources\.belebele_ben_Beng entry"):
        load_config(path)
    cfg["evaluate"]["sources"]["belebele_ben_Beng"] = {"kind": "belebele", "family": "math"}
    write_config(path, cfg)
    with pytest.raises(ConfigError, match=r"belebele_ben_Beng\.test: required for kind: belebele"):
        load_config(path)


def test_unreadable_hub_source_names_the_task_and_id(tmp_path):
    cfg = tiny_config()
    cfg["evaluate"]["sources"]["topic_bn"] = {
        "kind": "sib200", "family": "classification",
        "test": {"path": "Davlan/sib200", "name": "ben_Beng", "split": "test"}}
    cfg = validate_config(cfg, "t")
    with pytest.raises(BenchmarkError, match=r"task topic_bn .*path='Davlan/sib200'"):
        tasks.build(cfg, "bn", tmp_path / "bn")  # offline: the hub cannot be reached


# ----------------------------------------------------------------------------------------------
# lrmerge tasks


def test_tasks_table_of_the_paper_config(capsys):
    assert cli(["tasks", "--config", str(REPO / "config" / "config.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["LANG", "FAMILY", "TASK", "SOURCE", "N_ITEMS", "N_SHOT",
                                    "METRIC"]
    rows = [line.split("\t") for line in lines[1:] if not line.startswith("#")]
    cells = {(r[0], r[1]): r for r in rows if r[0] != "en"}
    families = ["classification", "reading_comprehension", "response_selection", "math"]
    assert set(cells) == {(lang, f) for lang in ("bo", "ug", "mn", "ta", "te", "or", "bn")
                          for f in families}
    covered = {k for k, r in cells.items() if r[2] != "-"}
    assert len(covered) == 22
    assert cells[("bo", "classification")][2:] == [
        "milic_topic_bo", "milic:pkupie/milic-eval/data/text_classification_sentence/bo",
        "432*", "1/labelx3", "acc,macro_f1/generate"]
    assert cells[("mn", "math")][2] == "milic_math_mn"
    # the source says where the data is: the test files, else the hub id
    test = load_config(REPO / "config" / "config.yaml")["evaluate"]["sources"]["mgsm_te"]["test"]
    assert cells[("te", "math")][3].startswith("mgsm:")
    assert str(test.get("data_files") or test["path"]) in cells[("te", "math")][3]
    for cell in (("bo", "reading_comprehension"), ("bo", "math"), ("te", "reading_comprehension")):
        assert cells[cell][5] == "5x3"  # MiLiC-Eval's 5 shots in three sets, Belebele's too
    assert cells[("ta", "reading_comprehension")][4] == "900*"
    assert cells[("ta", "math")] == ["ta", "math", "-",
                                     "no Tamil in MGSM nor another public math set"]


def test_tasks_write_and_count(bench, tmp_path, capsys):
    cfg, root = bench
    path = write_config(tmp_path / "c.yaml", cfg)
    assert cli(["tasks", "--config", str(path), "--count"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    counted = {r[2]: r[4] for r in rows[1:] if len(r) == 7}
    assert counted["milic_topic_bo"] == "6" and counted["sib200_ben_Beng"] == "7"
    assert cli(["tasks", "--config", str(path), "--write", str(tmp_path / "t"), "--lang", "bn"]) == 0
    assert (tmp_path / "t" / "bn" / "tasks.json").is_file()


def test_evaluate_cli(model, tmp_path):
    """lrmerge tasks --write with evaluate.limit, then lrmerge evaluate on the sample; the
    evaluate command has no limit of its own (no first-N cut anywhere)."""
    cfg = bench_config(tmp_path, limit=1)
    path = write_config(tmp_path / "c.yaml", cfg)
    assert cli(["tasks", "--config", str(path), "--write", str(tmp_path / "tasks"),
                "--lang", "bn"]) == 0
    out = tmp_path / "r.json"
    assert cli(["evaluate", "--config", str(path), "--model", str(model), "--lang", "bn",
                "--tasks-dir", str(tmp_path / "tasks"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert set(doc["tasks"]) == set(cfg["languages"]["bn"]["tasks"])
    assert all(e["n"] == 1 and e["limit"] == 1 for e in doc["tasks"].values())
    with pytest.raises(SystemExit):
        cli(["evaluate", "--config", str(path), "--model", str(model), "--lang", "bn",
             "--tasks-dir", str(tmp_path / "tasks"), "--out", str(out), "--limit", "1"])
    # a task folder older than the config is refused, naming the fix
    cfg["languages"]["bn"]["tasks"] = cfg["languages"]["bn"]["tasks"] + ["topic_bn"]
    write_config(path, cfg)
    assert cli(["evaluate", "--config", str(path), "--model", str(model), "--lang", "bn",
                "--tasks-dir", str(tmp_path / "tasks"), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_builtin_task_failing_offline_names_task_and_source(tmp_path):
    """An lm-eval built-in task (kind: builtin) that cannot reach its hub data fails the job,
    naming the task and where its data was to come from; no result file is written."""
    cfg = tiny_config()
    cfg["english"]["tasks"] = ["belebele_eng_Latn"]
    cfg["evaluate"]["sources"]["belebele_eng_Latn"] = {"kind": "builtin",
                                                       "family": "reading_comprehension"}
    cfg = validate_config(cfg, "t")
    manifest = tasks.build(cfg, "en", tmp_path / "tasks" / "en")
    assert manifest["tasks"]["belebele_eng_Latn"]["lm_eval_tasks"] == {"": "belebele_eng_Latn"}
    with pytest.raises(RuntimeError, match=r"lm-eval failed .*belebele_eng_Latn: "
                       r"lm-eval:belebele_eng_Latn"):
        run.evaluate(cfg, "scripted", ["en"], str(tmp_path / "tasks"), str(tmp_path / "x.json"),
                     lm=ScriptedLM())
    assert not (tmp_path / "x.json").exists()
