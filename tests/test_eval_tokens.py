"""Evaluation under an extended vocabulary (issue 17): eval files record what the prompts cost in
the model's own tokens, and generation decodes the new tokens.

Fixtures: a tiny Llama-2-style byte-fallback tokenizer (tests/test_vocab.py) extended by 12 tokens
learned from Telugu text, so that " తెలుగు" is one new token; tiny Llamas grown with
train.model.extend_embeddings and rigged to answer one chosen token and then EOS (every layer's
output projections zero, so the last hidden state is the last input token's embedding, which the
head maps to the answer token, or after it to EOS); one over the base tokenizer as well. The tasks
are the evaluate tests' MiLiC-Eval, SIB-200, Belebele and MGSM fixtures plus a SIB-200-format task
whose labels are Telugu words.

The counts are checked against the prompts lm-eval builds from the task folders, tokenized here
with the model folder's tokenizer directly (not through lm-eval's encoding functions)."""

from __future__ import annotations

import json
import statistics

import eval_fixtures as fx
import pytest
import torch
from test_evaluate import bench_config
from test_vocab import write_byte_fallback_base

from lrmerge.evaluate import run, tasks
from lrmerge.train.model import extend_embeddings, read_extension

WORD, OTHER = "తెలుగు", "భాష"  # Telugu: "Telugu", "language"
TELUGU_TASK = "sib200_tel_Telu"
WINDOW = 512  # the tiny models' max_position_embeddings: MiLiC-Eval's 3-shot prompts exceed it


def _rigged_llama(folder, vocab_size: int, answer: int, extension: dict | None = None):
    """A tiny Llama over `vocab_size` ids (grown by `extension`) whose greedy output is `answer`,
    then EOS, whatever the prompt; saved in `folder` beside its tokenizer files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=WINDOW,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False))
    if extension is not None:
        extend_embeddings(model, extension)
    eos = model.config.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        emb.zero_()
        emb[:, 0] = 1.0  # every token: "say the answer"
        emb[answer] = 0.0
        emb[answer, 1] = 1.0  # the answer itself: "stop"
        head = model.get_output_embeddings().weight
        head.zero_()
        head[answer, 0] = head[eos, 1] = 10.0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"extended": folder, "base": folder, "word_id": the new token's id}."""
    root = tmp_path_factory.mktemp("eval_tokens")
    base_tok = write_byte_fallback_base(root / "base")
    texts = [f"{WORD} {WORD} {OTHER} {WORD}." for _ in range(20)]
    from lrmerge.data import vocab

    record = vocab.extend_tokenizer(base_tok, texts, 12, root / "extended")
    word = next(t for t in record["tokens"] if t["text"] == " " + WORD)
    _rigged_llama(root / "extended", record["base_vocab_size"], word["id"],
                  read_extension(root / "extended"))
    dot = json.loads((base_tok / "tokenizer.json").read_text())["model"]["vocab"]["."]
    _rigged_llama(base_tok, record["base_vocab_size"], dot)
    return {"extended": root / "extended", "base": base_tok, "word_id": word["id"],
            "base_vocab_size": record["base_vocab_size"]}


def telugu_sib(root) -> dict:
    """A SIB-200-format task whose labels are Telugu words (WORD on even rows)."""
    d = root / "sib-tel"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 4), ("test", 5)):
        lines = ["index_id\tcategory\ttext"]
        lines += [f"{i}\t{WORD if i % 2 == 0 else OTHER}\t{OTHER} {WORD} {i} {WORD}"
                  for i in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tsv = {"path": "csv", "delimiter": "\t"}
    return {TELUGU_TASK: {"kind": "sib200", "family": "classification",
                          "test": dict(tsv, data_files=str(d / "test.tsv")),
                          "fewshot": dict(tsv, data_files=str(d / "train.tsv"))}}


def build(root, protocol: str, telugu_only: bool = False) -> dict:
    """The bench config (bo on MiLiC-Eval, bn on SIB-200, Belebele, MGSM) plus the Telugu task
    under bn; task folders built under root/tasks."""
    cfg = bench_config(root, protocol=protocol)
    cfg["evaluate"]["sources"].update(telugu_sib(root))
    cfg["languages"]["bn"]["tasks"] = ([] if telugu_only else cfg["languages"]["bn"]["tasks"]) \
        + [TELUGU_TASK]
    langs = ["bn"] if telugu_only else ["bo", "bn"]
    for lang in langs:
        tasks.build(cfg, lang, root / "tasks" / lang)
    return cfg


def _langs(cfg) -> list[str]:
    return [lang for lang in ("bo", "bn") if cfg["languages"][lang]["tasks"]]


def _requests(folder, name: str) -> list[tuple[int, tuple]]:
    """(doc id, request args) of every request lm-eval builds for a task of the folder."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [(inst.doc_id, inst.args) for inst in task.instances]


def _independent(tok, folder, name: str) -> dict:
    """Per item: prompt tokens and chars, candidate tokens, cut to the window, counted here with
    the Hugging Face tokenizer: its default special tokens (as lm-eval leaves them); under
    log-likelihood the context less its trailing whitespace, a candidate's tokens those of the
    whole past the context's."""
    items: dict[int, dict] = {}
    for doc_id, args in _requests(folder, name):
        item = items.setdefault(doc_id, {"choice": 0, "cut": False})
        if isinstance(args[1], dict):  # generate_until: (context, gen_kwargs)
            ids = tok(args[0])["input_ids"]
            item.update(tokens=len(ids), chars=len(args[0]), bos=ids[0] == tok.bos_token_id,
                        cut=len(ids) > WINDOW - args[1]["max_gen_toks"])
        else:  # loglikelihood: (context, continuation)
            context = args[0].rstrip()
            ctx = tok(context)["input_ids"]
            whole = tok(context + args[0][len(context):] + args[1])["input_ids"]
            item.update(tokens=len(ctx), chars=len(context), bos=ctx[0] == tok.bos_token_id)
            item["choice"] += len(whole) - len(ctx)
            item["cut"] = item["cut"] or len(whole) > WINDOW + 1
    return items


def _stats(values):
    return {"mean": round(sum(values) / len(values), 2), "median": statistics.median(values),
            "max": max(values), "total": sum(values)}


@pytest.fixture(scope="module", params=["generate", "loglik"])
def evaluated(request, models, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"tokens_{request.param}")
    cfg = build(root, request.param)
    doc = run.evaluate(cfg, str(models["extended"]), _langs(cfg), str(root / "tasks"),
                       str(root / "eval.json"), threads=1)
    return request.param, cfg, root, doc


def test_prompt_tokens_are_those_of_the_prompts_fed(evaluated, models):
    from transformers import AutoTokenizer

    protocol, cfg, root, doc = evaluated
    tok = AutoTokenizer.from_pretrained(models["extended"])
    truncated = 0
    for task, e in doc["tasks"].items():
        folder = root / "tasks" / e["language"]
        meta = json.loads((folder / tasks.MANIFEST).read_text())["tasks"][task]
        per_set = {k: _independent(tok, folder, name) for k, name in meta["lm_eval_tasks"].items()}
        every = [item for items in per_set.values() for item in items.values()]
        assert len(every) == e["n"] * max(1, len(e["shot_sets"])), task
        assert e["prompt_tokens"] == _stats([i["tokens"] for i in every]), task
        assert e["prompt_chars"] == _stats([i["chars"] for i in every]), task
        if e["shot_sets"]:
            assert e["prompt_tokens_per_set"] == {
                k: _stats([i["tokens"] for i in items.values()]) for k, items in per_set.items()}
        else:
            assert e["prompt_tokens_per_set"] is None
        if protocol == "loglik":
            assert e["choice_tokens"] == _stats([i["choice"] for i in every]), task
        else:
            assert e["choice_tokens"] is None
        assert e["prompt_bos"] == every[0]["bos"]
        assert e["prompt_truncated"] == sum(i["cut"] for i in every), task
        truncated += e["prompt_truncated"]
    # the tiny tokenizer adds no BOS (its tokenizer.json has no post-processor; Llama-2's has)
    assert not any(e["prompt_bos"] for e in doc["tasks"].values())
    # MiLiC-Eval's shots, 600 Tibetan letters each as byte-fallback tokens, exceed the window
    assert doc["tasks"]["milic_topic_bo"]["prompt_truncated"] > 0 and truncated < sum(
        e["n"] * max(1, len(e["shot_sets"])) for e in doc["tasks"].values())


def test_counts_follow_the_special_tokens_the_tokenizer_adds(models, tmp_path):
    """With a tokenizer that prepends BOS (as Llama-2's does) every prompt is one token longer
    and prompt_bos says so."""
    import shutil

    from tokenizers import Tokenizer, processors

    folder = tmp_path / "bos"
    shutil.copytree(models["extended"], folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    cfg = build(tmp_path, "generate", telugu_only=True)
    docs = {name: run.evaluate(cfg, str(path), ["bn"], str(tmp_path / "tasks"),
                               str(tmp_path / f"{name}.json"), threads=1)["tasks"][TELUGU_TASK]
            for name, path in (("plain", models["extended"]), ("bos", folder))}
    plain, bos = docs["plain"], docs["bos"]
    assert (plain["prompt_bos"], bos["prompt_bos"]) == (False, True)
    items = plain["n"] * len(plain["shot_sets"])
    assert bos["prompt_tokens"]["total"] == plain["prompt_tokens"]["total"] + items
    assert bos["prompt_tokens"]["max"] == plain["prompt_tokens"]["max"] + 1
    assert bos["prompt_chars"] == plain["prompt_chars"]
    assert bos["score"] == plain["score"] == pytest.approx(3 / 5)  # the answer is unchanged


def test_the_extended_vocabulary_shows_as_fewer_prompt_tokens(models, tmp_path):
    """The same Telugu prompts cost fewer tokens under the extended tokenizer than under its base
    (Telugu read as UTF-8 bytes there); the characters are the same."""
    from lm_eval.api.registry import get_model

    cfg = build(tmp_path, "loglik", telugu_only=True)
    # one LM passed in: counted too, and its method is its class's again afterwards
    lm = get_model("hf").create_from_arg_obj({"pretrained": str(models["base"]),
                                              "device": "cpu"}, {"batch_size": 8})
    entries = {name: run.evaluate(cfg, str(models[name]), ["bn"], str(tmp_path / "tasks"),
                                  str(tmp_path / f"{name}.json"), threads=1,
                                  lm=lm if name == "base" else None)["tasks"][TELUGU_TASK]
               for name in ("base", "extended")}
    assert not set(run.TokenCounter.WRAPPED) & set(vars(lm))
    base, ext = entries["base"], entries["extended"]
    assert ext["prompt_chars"] == base["prompt_chars"]
    assert ext["prompt_tokens"]["total"] < 0.75 * base["prompt_tokens"]["total"]
    assert ext["choice_tokens"]["total"] < base["choice_tokens"]["total"] / 3
    chars_per_token = ext["prompt_chars"]["total"] / ext["prompt_tokens"]["total"]
    assert chars_per_token > base["prompt_chars"]["total"] / base["prompt_tokens"]["total"]


def test_generation_decodes_a_new_token(models, tmp_path):
    """The model answers the new token " తెలుగు" (one id past the base vocabulary), then EOS: the
    generate protocol reads it as the Telugu label, so items labelled WORD are right and the
    predictions count WORD on every item of every shot set, none unparsed or debris."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models["extended"])
    assert models["word_id"] >= models["base_vocab_size"]
    assert tok.encode(" " + WORD, add_special_tokens=False) == [models["word_id"]]
    # under the base tokenizer the same text is 18 byte tokens: a decoder would have to fuse them
    base = AutoTokenizer.from_pretrained(models["base"])
    assert len(base.encode(" " + WORD, add_special_tokens=False)) == 1 + len(WORD.encode())
    cfg = build(tmp_path, "generate", telugu_only=True)
    doc = run.evaluate(cfg, str(models["extended"]), ["bn"], str(tmp_path / "tasks"),
                       str(tmp_path / "eval.json"), threads=1)
    e = doc["tasks"][TELUGU_TASK]
    assert e["predictions"] == {OTHER: 0, WORD: 5 * 3, run.UNPARSED: 0}
    assert e["score"] == pytest.approx(3 / 5) and e["debris"] == 0


def test_samples_logged_once_per_filter_are_counted_once():
    """lm-eval logs an item once per filter (MGSM's built-in task has two); without a tokenizer
    (a scripted LM) only the characters are recorded."""
    meta = {"task": "mgsm", "lm_eval_tasks": {"0": "mgsm_direct_bn"}, "shot_sets": []}
    gen = {"until": [], "max_gen_toks": 5}
    samples = [{"doc_id": i, "filter": f, "arguments": [("x" * (i + 1), gen)]}
               for f in ("strict-match", "flexible-extract") for i in range(3)]
    assert run.TokenCounter.of(fx.ScriptedLM()) is None

    class Renamed:  # a tokenizer, but not the methods the counter wraps
        tokenizer, max_length = object(), 512
    with pytest.raises(RuntimeError, match="Renamed has no _loglikelihood_tokens, tok_batch_enc"):
        run.TokenCounter.of(Renamed())
    out = run.prompt_lengths(meta, {"mgsm_direct_bn": samples}, None)
    assert out["prompt_chars"] == {"mean": 2.0, "median": 2, "max": 3, "total": 6}
    assert all(out[k] is None for k in ("prompt_tokens", "prompt_tokens_per_set",
                                        "choice_tokens", "prompt_bos", "prompt_truncated"))
    with pytest.raises(RuntimeError, match="no samples for .'mgsm_direct_bn'.+prompt lengths"):
        run.prompt_lengths(meta, {}, None)
