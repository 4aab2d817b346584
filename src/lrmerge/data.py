"""Data stage: CT corpora, the English instruction data ("FLAN") and evaluation sets.

Two sources:

* ``kind: generated`` (the mini preset): a synthetic English (a small grammar over four topics) and,
  for each target language, the *same* grammar with every English word mapped to a made-up word in
  a real low-resource script (Bengali, Tibetan, ...), with some code-switching. Everything is a pure
  function of the config seed, so reruns give identical files and nothing is downloaded.
* ``kind: hf`` (the paper preset): any ``datasets.load_dataset`` source; corpora are mixed with
  English at the configured ratio up to what the largest token budget needs.

Commands: ``lrmerge data corpus|sft|eval``; see docs/design.md for paths.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from lrmerge import fsutil

FAMILIES = ("topic", "mrc", "response", "math")

# --------------------------------------------------------------------------------------------
# The synthetic English. Words are lower case and punctuation is a separate word, so a target
# language is a word-for-word relabelling of it (same grammar, different surface forms).
# Topic words are disjoint so the topic of a document is recoverable from its content words.
# --------------------------------------------------------------------------------------------
TOPICS: dict[str, dict[str, list[str]]] = {
    "sports": {
        "nouns": ["ball", "team", "game", "goal", "coach", "match", "field", "player"],
        "verbs": ["plays", "wins", "kicks", "throws", "loses", "trains"],
        "adjs": ["fast", "strong", "tired", "quick", "proud", "young"],
    },
    "food": {
        "nouns": ["bread", "soup", "rice", "apple", "cake", "fish", "tea", "cheese"],
        "verbs": ["cooks", "eats", "bakes", "tastes", "cuts", "buys"],
        "adjs": ["sweet", "hot", "fresh", "salty", "ripe", "tasty"],
    },
    "weather": {
        "nouns": ["rain", "wind", "cloud", "storm", "snow", "sun", "sky", "fog"],
        "verbs": ["watches", "feels", "fears", "expects", "notices", "enjoys"],
        "adjs": ["cold", "warm", "dark", "wet", "bright", "grey"],
    },
    "music": {
        "nouns": ["song", "drum", "guitar", "piano", "band", "singer", "concert", "tune"],
        "verbs": ["sings", "hears", "records", "hums", "writes", "loves"],
        "adjs": ["loud", "soft", "slow", "happy", "sad", "gentle"],
    },
}
NAMES = ["anna", "ben", "clara", "david", "emma", "frank", "grace", "henry", "iris", "jack",
         "kate", "leo"]
FUNCTION_WORDS = ["the", "a", "is", "very", "and", "with", "today", "then", "has", "gets", "gives",
                  "more", "to", "how", "many", "does", "have", "who", "says", "about", "this",
                  "text", "topic", "question", "answer", "context", "message", "reply", "."]
# Punctuation and digits stay as they are in every language (shared anchors, as numbers in
# real low-resource text usually are), except the full stop, which takes the script's own mark.
SHARED = ["?", ":"] + [str(i) for i in range(10)]


def english_words() -> list[str]:
    """Every word the grammar can emit, in a fixed order (the lexicon's domain)."""
    words: list[str] = []
    for topic, parts in TOPICS.items():
        words.append(topic)
        for key in ("nouns", "verbs", "adjs"):
            words.extend(parts[key])
    words.extend(NAMES)
    words.extend(FUNCTION_WORDS)
    seen = set()
    out = []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


# script -> (consonants, vowel signs or vowel letters, syllable joiner, full stop)
def _chars(a: int, b: int, skip: Iterable[int] = ()) -> list[str]:
    skip = set(skip)
    return [chr(c) for c in range(a, b + 1) if c not in skip]


SCRIPTS: dict[str, tuple[list[str], list[str], str, str]] = {
    # Bengali: consonants U+0995..U+09B9 (minus unassigned), dependent vowel signs, danda.
    "bengali": (_chars(0x0995, 0x09B9, [0x09A9, 0x09B1, 0x09B3, 0x09B4, 0x09B5]),
                _chars(0x09BE, 0x09C4, [0x09C5, 0x09C6]) + ["\u09c7", "\u09c8", "\u09cb", "\u09cc"],
                "", "\u0964"),
    # Tibetan: base consonants, vowel signs, syllables joined by tsheg, shad as full stop.
    "tibetan": (_chars(0x0F40, 0x0F6A, [0x0F48]), ["\u0f72", "\u0f74", "\u0f7a", "\u0f7c", ""],
                "\u0f0b", "\u0f0d"),
    "odia": (_chars(0x0B15, 0x0B39, [0x0B29, 0x0B31, 0x0B34]),
             ["\u0b3e", "\u0b3f", "\u0b40", "\u0b41", "\u0b47", "\u0b4b", ""], "", "\u0964"),
    "tamil": (["\u0b95", "\u0b99", "\u0b9a", "\u0b9e", "\u0b9f", "\u0ba3", "\u0ba4", "\u0ba8",
               "\u0baa", "\u0bae", "\u0baf", "\u0bb0", "\u0bb2", "\u0bb5", "\u0bb4", "\u0bb3"],
              ["\u0bbe", "\u0bbf", "\u0bc0", "\u0bc1", "\u0bc6", "\u0bca", ""], "", "."),
    "telugu": (_chars(0x0C15, 0x0C28, [0x0C29]) + _chars(0x0C2A, 0x0C39, [0x0C34]),
               ["\u0c3e", "\u0c3f", "\u0c40", "\u0c41", "\u0c46", "\u0c4a", ""], "", "."),
    # Traditional Mongolian: consonant letters followed by a vowel letter, Mongolian full stop.
    "mongolian": (_chars(0x1828, 0x1842), _chars(0x1820, 0x1826), "", "\u1803"),
    # Uyghur (Arabic script): consonants followed by a long-vowel letter, Arabic full stop.
    "arabic": (["\u0628", "\u067e", "\u062a", "\u062c", "\u0686", "\u062e", "\u062f", "\u0631",
                "\u0632", "\u0633", "\u0634", "\u063a", "\u0641", "\u0642", "\u0643", "\u06af",
                "\u0644", "\u0645", "\u0646", "\u06be", "\u064a"],
               ["\u0627", "\u0648", "\u06cc", "\u06d5", ""], "", "\u06d4"),
}


# The script a generated language is written in when its corpus entry names none.
DEFAULT_SCRIPTS = {"bn": "bengali", "bo": "tibetan", "or": "odia", "ta": "tamil", "te": "telugu",
                   "mn": "mongolian", "ug": "arabic"}


class Lexicon:
    """The word map English -> language. English maps every word to itself."""

    def __init__(self, lang: str, script: str | None, seed: int):
        self.lang = lang
        self.script = script
        vocab = english_words()
        if script is None:
            self.map = {w: w for w in vocab}
        else:
            if script not in SCRIPTS:
                raise ValueError(f"unknown script {script!r} for language {lang!r}; "
                                 f"known: {', '.join(sorted(SCRIPTS))}")
            consonants, vowels, joiner, stop = SCRIPTS[script]
            rng = random.Random(f"lexicon:{seed}:{lang}:{script}")
            used: set[str] = set()
            self.map = {}
            for w in vocab:
                if w == ".":
                    self.map[w] = stop
                    continue
                # Longer English words get longer made-up words, loosely (as real vocabularies do).
                n_syll = 1 + min(2, len(w) // 4)
                while True:
                    word = joiner.join(rng.choice(consonants) + rng.choice(vowels)
                                       for _ in range(n_syll))
                    if word not in used and word not in vocab:
                        break
                    n_syll += rng.random() < 0.2  # escape collisions in small scripts
                used.add(word)
                self.map[w] = word
        for s in SHARED:
            self.map.setdefault(s, s)

    def words(self) -> list[str]:
        """The language's own words (not the shared digits and punctuation)."""
        return [v for k, v in self.map.items() if k not in SHARED]

    def render(self, tokens: list[str], rng: random.Random | None = None,
               code_switch: float = 0.0) -> str:
        """Translate English word tokens; with probability `code_switch` a word stays English."""
        out = []
        for t in tokens:
            if t.isdigit() or t in SHARED:
                out.append(t)
            elif code_switch and t != "." and rng is not None and rng.random() < code_switch:
                out.append(t)
            else:
                out.append(self.map[t])
        return " ".join(out)


class Grammar:
    """Generates English sentences (as word lists) from a seeded RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def _pick(self, topic: str, part: str) -> str:
        return self.rng.choice(TOPICS[topic][part])

    def sentence(self, topic: str) -> list[str]:
        r = self.rng
        name = r.choice(NAMES)
        n, v, a = self._pick(topic, "nouns"), self._pick(topic, "verbs"), self._pick(topic, "adjs")
        form = r.randrange(5)
        if form == 0:
            return [name, v, "the", a, n, "."]
        if form == 1:
            return ["the", n, "is", "very", a, "."]
        if form == 2:
            return ["today", "the", n, "is", a, "."]
        if form == 3:
            return [name, v, "the", n, "with", r.choice(NAMES), "."]
        return ["then", name, v, "a", a, n, "."]

    def topic_doc(self, topic: str, n_sent: int, label_sentence: bool) -> list[str]:
        words: list[str] = []
        for _ in range(n_sent):
            words += self.sentence(topic)
        if label_sentence:
            # Ties the topic word (the classification label) to its content words in the corpus.
            label = ["this", "text", "is", "about", topic, "."]
            words = label + words if self.rng.random() < 0.5 else words + label
        return words

    def ownership(self) -> tuple[list[str], list[tuple[str, str, str]]]:
        """A story of who has what: 2-3 people, each with an adjective + noun."""
        r = self.rng
        people = r.sample(NAMES, r.choice([2, 3]))
        facts, words, used = [], [], set()
        for p in people:
            while True:
                topic = r.choice(list(TOPICS))
                n, a = self._pick(topic, "nouns"), self._pick(topic, "adjs")
                if n not in used:
                    break
            used.add(n)
            facts.append((p, a, n))
            words += [p, "has", "the", a, n, "."]
        return words, facts

    def arithmetic(self) -> tuple[list[str], list[str], int, tuple[int, int]]:
        """A one-step word problem: (story, question, answer, operands)."""
        r = self.rng
        name, other = r.sample(NAMES, 2)
        topic = r.choice(list(TOPICS))
        noun = self._pick(topic, "nouns")
        a = r.randint(2, 9)
        if r.random() < 0.5:
            b = r.randint(1, 9)
            story = [name, "has", str(a), noun, ".", name, "gets", str(b), "more", noun, "."]
            ans = a + b
        else:
            b = r.randint(1, a - 1)
            story = [name, "has", str(a), noun, ".", name, "gives", str(b), noun, "to", other, "."]
            ans = a - b
        question = ["how", "many", noun, "does", name, "have", "?"]
        return story, question, ans, (a, b)

    def utterance(self, topic: str, name: str | None = None) -> list[str]:
        name = name or self.rng.choice(NAMES)
        return [name, "says", "the", self._pick(topic, "nouns"), "is", self._pick(topic, "adjs"),
                "."]

    def corpus_doc(self) -> list[str]:
        """A pre-training document: mostly topical prose, some stories, problems and dialogue,
        so every word the tasks use is ordinary vocabulary."""
        r = self.rng
        kind = r.random()
        topic = r.choice(list(TOPICS))
        if kind < 0.6:
            return self.topic_doc(topic, r.randint(3, 6), label_sentence=r.random() < 0.3)
        if kind < 0.75:
            words, facts = self.ownership()
            p, a, n = r.choice(facts)
            return words + ["who", "has", "the", a, n, "?", "the", "answer", "is", p, "."]
        if kind < 0.9:
            story, question, ans, _ = self.arithmetic()
            return story + question + ["the", "answer", "is", str(ans), "."]
        a, b = r.sample(NAMES, 2)
        return (["message", ":"] + self.utterance(topic, a) + ["reply", ":"]
                + self.utterance(topic, b))


def make_task_item(family: str, g: Grammar) -> tuple[list[str], list[list[str]], int]:
    """One multiple-choice item of a task family, in English words: (query, choices, gold)."""
    r = g.rng
    topics = list(TOPICS)
    if family == "topic":
        topic = r.choice(topics)
        doc = g.topic_doc(topic, r.randint(2, 4), label_sentence=False)
        query = ["text", ":"] + doc + ["topic", ":"]
        return query, [[t] for t in topics], topics.index(topic)
    if family == "mrc":
        story, facts = g.ownership()
        p, a, n = r.choice(facts)
        others = [x for x in NAMES if x not in {f[0] for f in facts}]
        choices = [f[0] for f in facts] + r.sample(others, 4 - len(facts))
        r.shuffle(choices)
        query = (["context", ":"] + story + ["question", ":", "who", "has", "the", a, n, "?",
                                               "answer", ":"])
        return query, [[c] for c in choices], choices.index(p)
    if family == "response":
        topic = r.choice(topics)
        speaker, replier = r.sample(NAMES, 2)
        query = ["message", ":"] + g.utterance(topic, speaker) + ["reply", ":"]
        wrong = r.sample([t for t in topics if t != topic], 3)
        choices = [g.utterance(t, replier) for t in [topic] + wrong]
        order = list(range(4))
        r.shuffle(order)
        return query, [choices[i] for i in order], order.index(0)
    if family == "math":
        story, question, ans, (a, b) = g.arithmetic()
        cands = {ans}
        for c in (a, b, a + b, abs(a - b), ans + 1, ans - 1, ans + 2):
            if len(cands) == 4:
                break
            if c >= 0:
                cands.add(c)
        while len(cands) < 4:
            cands.add(r.randint(0, 18))
        choices = sorted(cands)
        r.shuffle(choices)
        query = ["question", ":"] + story + question + ["answer", ":"]
        return query, [[str(c)] for c in choices], choices.index(ans)
    raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")


# --------------------------------------------------------------------------------------------
# Config access
# --------------------------------------------------------------------------------------------
def language_entry(cfg: dict, lang: str) -> dict:
    """The config entry of a language code ("en" is the `english` section)."""
    if lang == "en":
        return cfg["english"]
    langs = cfg.get("languages") or {}
    if lang not in langs:
        raise KeyError(f"language {lang!r} is not in config key 'languages' "
                       f"(configured: {', '.join(langs) or 'none'})")
    return langs[lang]


def lexicon(cfg: dict, lang: str) -> Lexicon:
    """The generated word map of a language (English: identity)."""
    if lang == "en":
        return Lexicon("en", None, int(cfg.get("seed", 0)))
    corpus = language_entry(cfg, lang).get("corpus") or {}
    script = corpus.get("script") or DEFAULT_SCRIPTS.get(lang)
    if not script:
        raise ValueError(f"config key languages.{lang}.corpus.script is required for a "
                         f"generated language (one of {', '.join(sorted(SCRIPTS))})")
    return Lexicon(lang, script, int(cfg.get("seed", 0)))


def extension_words(cfg: dict) -> list[str]:
    """Words of every generated target language, for the tokenizer's vocabulary extension."""
    words: list[str] = []
    for lang, entry in (cfg.get("languages") or {}).items():
        if (entry.get("corpus") or {}).get("kind") == "generated":
            words.extend(lexicon(cfg, lang).words())
    return list(dict.fromkeys(words))


def task_family(cfg: dict, task: str) -> str:
    """The task family of a task name: `evaluate.sources[task].family`, else the name's prefix."""
    src = (cfg.get("evaluate", {}).get("sources") or {}).get(task)
    if src and src.get("family"):
        fam = src["family"]
    else:
        fam = task.split("_", 1)[0]
    if fam not in FAMILIES:
        raise ValueError(f"task {task!r}: cannot tell its family (expected a name starting with "
                         f"one of {', '.join(FAMILIES)}, or evaluate.sources.{task}.family)")
    return fam


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------
def _generated_docs(cfg: dict, lang: str, purpose: str) -> Iterator[str]:
    """An endless, seeded stream of documents of a generated language."""
    mini = cfg.get("mini") or {}
    lex = lexicon(cfg, lang)
    seed = int(cfg.get("seed", 0))
    g = Grammar(random.Random(f"corpus:{seed}:{lang}:{purpose}"))
    cs_rng = random.Random(f"codeswitch:{seed}:{lang}:{purpose}")
    cs = float(mini.get("code_switch", 0.0)) if lang != "en" else 0.0
    while True:
        yield lex.render(g.corpus_doc(), cs_rng, cs)


def load_hf(spec: dict, where: str):
    """`datasets.load_dataset` from a config entry: path, name, split, data_files, revision,
    streaming, plus free-form `args` passed through."""
    import datasets

    if not spec.get("path"):
        raise ValueError(f"config key {where}.path is required for kind: hf")
    args = {k: spec[k] for k in ("path", "name", "split", "data_files", "revision", "streaming")
            if spec.get(k) is not None}
    args.setdefault("split", "train")
    args.update(spec.get("args") or {})
    try:
        return datasets.load_dataset(**args)
    except Exception as e:  # name the config entry: datasets' own errors do not
        raise RuntimeError(f"{where}: load_dataset({args}) failed: {e}") from e


def _hf_docs(spec: dict, where: str) -> Iterator[str]:
    field = spec.get("text_field", "text")
    ds = load_hf(spec, where)
    for i, row in enumerate(ds):
        if field not in row:
            raise KeyError(f"{where}: row {i} has no text field {field!r} "
                           f"(fields: {', '.join(row)}); set {where}.text_field")
        text = row[field]
        if text and text.strip():
            yield text


def _estimate_tokens(text: str, spec: dict) -> float:
    # Before a tokenizer exists (mini) or is loaded (data jobs run without the model), the budget
    # is met by an estimate: words for generated text (one token per word with the vocabulary
    # extension), characters / chars_per_token for real corpora.
    if spec.get("kind", "generated") == "generated":
        return float(len(text.split()))
    return len(text) / float(spec.get("chars_per_token", 4.0))


def _take_tokens(docs: Iterator[str], need: float, spec: dict, where: str,
                 max_docs: int | None = None) -> Iterator[str]:
    """Documents in order until their estimated tokens reach `need` (streamed: a paper-scale
    corpus never sits in memory)."""
    n, have = 0, 0.0
    for doc in docs:
        if have >= need or (max_docs is not None and n >= max_docs):
            return
        yield doc
        n += 1
        have += _estimate_tokens(doc, spec)
    if have < need:
        print(f"warning: {where} ran out after ~{int(have)} of {int(need)} estimated tokens; "
              "training will repeat it", file=sys.stderr)


def _docs(cfg: dict, lang: str, purpose: str) -> tuple[Iterator[str], dict, str]:
    entry = language_entry(cfg, lang)
    where = "english.corpus" if lang == "en" else f"languages.{lang}.corpus"
    spec = entry.get("corpus")
    if not spec:
        raise ValueError(f"config key {where} is missing")
    kind = spec.get("kind")
    if kind == "generated":
        return _generated_docs(cfg, lang, purpose), spec, where
    if kind == "hf":
        return _hf_docs(spec, where), spec, where
    raise ValueError(f"{where}.kind: {kind!r} is not one of generated, hf")


def iter_corpus(cfg: dict, lang: str) -> Iterator[dict]:
    """Rows {"text", "lang"}: a language's CT text (its share of the largest budget; training
    mixes in English from the English corpus), or the English corpus (lang "en"), which serves
    both pre-training (mini) and the English part of every CT mix. Config errors raise here;
    the rows are produced as they are consumed."""
    mini = cfg.get("mini") or {}
    ct = cfg.get("continual_pretrain") or {}
    ratio = float(ct.get("english_ratio", 0.2))
    margin = float(ct.get("data_margin", 1.05))
    if lang == "en":
        docs, spec, where = _docs(cfg, "en", "pretrain")
        if spec.get("kind") == "generated":
            texts = itertools.islice(docs, int(mini.get("english_docs", 5000)))
        else:
            budgets = [max(e.get("budgets") or [0]) for e in (cfg.get("languages") or {}).values()]
            need = float(spec.get("max_tokens") or max(budgets + [0]) * ratio * margin)
            texts = _take_tokens(docs, need, spec, where, spec.get("max_docs"))
    else:
        budgets = language_entry(cfg, lang).get("budgets") or []
        if not budgets:
            raise ValueError(f"config key languages.{lang}.budgets is empty")
        docs, spec, where = _docs(cfg, lang, "ct")
        need = float(spec.get("max_tokens") or max(budgets) * (1 - ratio) * margin)
        texts = _take_tokens(docs, need, spec, where, spec.get("max_docs"))
    return ({"text": t, "lang": lang} for t in texts)


def build_corpus(cfg: dict, lang: str) -> list[dict]:
    """`iter_corpus` as a list."""
    return list(iter_corpus(cfg, lang))


# --------------------------------------------------------------------------------------------
# Instruction data (the mini FLAN, or a real FLAN collection)
# --------------------------------------------------------------------------------------------
def _mc_item(family: str, g: Grammar, lex: Lexicon) -> dict:
    query, choices, gold = make_task_item(family, g)
    return {"query": lex.render(query), "choices": [lex.render(c) for c in choices],
            "gold": gold, "family": family}


def build_sft(cfg: dict) -> list[dict]:
    """Rows {"prompt", "response"}: English task data in instruction form."""
    spec = (cfg.get("sft") or {}).get("data") or {"kind": "generated"}
    kind = spec.get("kind", "generated")
    if kind == "generated":
        mini = cfg.get("mini") or {}
        n = int(mini.get("sft_examples", 2000))
        g = Grammar(random.Random(f"sft:{int(cfg.get('seed', 0))}"))
        lex = Lexicon("en", None, 0)
        # The English test items stay unseen: an SFT prompt equal to one is drawn again.
        held_out = set()
        for task in (cfg.get("english") or {}).get("tasks") or []:
            if task.split("_", 1)[0] in FAMILIES:
                held_out |= {r["query"] for r in _generated_task_rows(
                    cfg, "en", task, task_family(cfg, task), "test",
                    int(mini.get("eval_examples", 100)))}
        rows = []
        for i in range(n):
            while True:
                item = _mc_item(FAMILIES[i % len(FAMILIES)], g, lex)
                if item["query"] not in held_out:
                    break
            rows.append({"prompt": item["query"], "response": item["choices"][item["gold"]],
                         "family": item["family"]})
        return rows
    if kind == "hf":
        pf, rf = spec.get("prompt_field", "inputs"), spec.get("response_field", "targets")
        limit = spec.get("max_examples")
        rows = []
        for i, row in enumerate(load_hf(spec, "sft.data")):
            if limit is not None and len(rows) >= int(limit):
                break
            if pf not in row or rf not in row:
                raise KeyError(f"sft.data: row {i} lacks {pf!r} or {rf!r} (fields: "
                               f"{', '.join(row)}); set sft.data.prompt_field/response_field")
            if str(row[rf]).strip():
                rows.append({"prompt": str(row[pf]), "response": str(row[rf])})
        if not rows:
            raise ValueError("sft.data: the source gave no examples")
        return rows
    raise ValueError(f"sft.data.kind: {kind!r} is not one of generated, hf")


# --------------------------------------------------------------------------------------------
# Evaluation sets and lm-eval task YAMLs
# --------------------------------------------------------------------------------------------
ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def mc_task_yaml(task: str, files: dict[str, str], fewshot: bool) -> dict:
    """A declarative lm-eval multiple-choice task (scored by log-likelihood of each choice)."""
    y = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": ACC,
        "metadata": {"version": 1.0},
    }
    if fewshot:
        y["fewshot_split"] = "train"
        y["fewshot_delimiter"] = "\n\n"
    return y


def gen_task_yaml(task: str, files: dict[str, str], fewshot: bool, max_gen_toks: int) -> dict:
    """A generative lm-eval task: greedy decoding, first line, first number compared."""
    y = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "query",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": int(max_gen_toks),
                              "do_sample": False},
        "filter_list": [{"name": "first_number", "filter": [
            {"function": "regex", "regex_pattern": r"(-?[0-9]+(?:\.[0-9]+)?)", "group_select": 0},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True, "ignore_case": True,
                         "ignore_punctuation": False}],
        "metadata": {"version": 1.0},
    }
    if fewshot:
        y["fewshot_split"] = "train"
        y["fewshot_delimiter"] = "\n\n"
    return y


def _as_generative(row: dict) -> dict:
    return {"query": row["query"], "answer": str(row["choices"][row["gold"]]).replace(" ", "")}


def _generated_task_rows(cfg: dict, lang: str, task: str, family: str, split: str,
                         n: int) -> list[dict]:
    seed = int(cfg.get("seed", 0))
    # The split is in the RNG key, so test items are drawn independently of few-shot items.
    g = Grammar(random.Random(f"eval:{seed}:{task}:{split}"))
    return [_mc_item(family, g, lexicon(cfg, lang)) for _ in range(n)]


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise KeyError(f"{where}: a row has no field {name!r} (fields: {', '.join(row)})")
    return row[name]


def _source_task_rows(spec: dict, split_key: str, where: str) -> list[dict]:
    """Task rows from a dataset on disk or the hub, normalised to {query, choices, gold}.

    `spec` maps the source's fields: `text_field` (the query), `choices_field` (a list) or
    `choices` (a fixed label list), `label_field` (an index, or the label text), optional
    `question_field` appended to the query, and `template` (a str.format over the row)."""
    load = dict(spec)
    load.update(spec.get(split_key) or {})
    ds = load_hf(load, f"{where}.{split_key}")
    rows = []
    limit = spec.get("max_examples")
    for row in ds:
        if limit is not None and len(rows) >= int(limit):
            break
        if spec.get("template"):
            try:
                query = spec["template"].format(**row)
            except KeyError as e:
                raise KeyError(f"{where}.template names field {e} not in the data "
                               f"(fields: {', '.join(row)})") from None
        else:
            query = str(_field(row, spec.get("text_field", "text"), where))
            if spec.get("question_field"):
                query += "\n" + str(_field(row, spec["question_field"], where))
        if spec.get("choices") is not None:
            choices = [str(c) for c in spec["choices"]]
        else:
            choices = [str(c) for c in _field(row, spec.get("choices_field", "choices"), where)]
        label = _field(row, spec.get("label_field", "label"), where)
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in choices:
                raise ValueError(f"{where}: label {label!r} is not among the choices {choices}")
            gold = choices.index(label)
        else:
            gold = int(label) - int(spec.get("label_offset", 0))
        if not 0 <= gold < len(choices):
            raise ValueError(f"{where}: label {label!r} out of range for {len(choices)} choices")
        rows.append({"query": query + spec.get("prompt_suffix", ""), "choices": choices,
                     "gold": gold})
    if not rows:
        raise ValueError(f"{where}.{split_key}: no examples")
    return rows


# MiLiC-Eval (hub pkupie/milic-eval): files data/<task>/<lang>/{train_1..3,dev,test}.json. The
# record fields are not documented offline; these defaults are ours and each is a config key.
MILIC_DEFAULTS = {"repo": "pkupie/milic-eval", "fewshot_file": "train_1", "test_file": "test",
                  "text_field": "text", "choices_field": "options", "label_field": "answer"}


def milic_spec(spec: dict, where: str) -> dict:
    """A `kind: milic` source as `kind: hf` load arguments (json files of the MiLiC repo)."""
    s = dict(MILIC_DEFAULTS, **spec)
    for key in ("task", "lang"):
        if not s.get(key):
            raise ValueError(f"config key {where}.{key} is required for kind: milic "
                             "(the folder data/<task>/<lang>/ of the benchmark)")
    folder = f"data/{s['task']}/{s['lang']}"
    out = {k: v for k, v in s.items() if k not in ("repo", "task", "lang", "fewshot_file",
                                                    "test_file")}
    out.update(kind="hf", path=s["repo"], split="train",
               test={"data_files": f"{folder}/{s['test_file']}.json"})
    if s.get("fewshot_file"):
        out["fewshot"] = {"data_files": f"{folder}/{s['fewshot_file']}.json"}
    return out


def build_eval(cfg: dict, lang: str, out_dir: str | Path) -> list[str]:
    """Write the task data (jsonl) and lm-eval task YAMLs of a language into `out_dir`.

    Returns the task names written. Built-in lm-eval tasks (evaluate.sources.<task>.kind:
    builtin) need no files and are skipped."""
    out_dir = Path(out_dir).resolve()
    ev = cfg.get("evaluate") or {}
    entry = language_entry(cfg, lang)
    tasks = entry.get("tasks") or []
    where_tasks = "english.tasks" if lang == "en" else f"languages.{lang}.tasks"
    if not tasks:
        raise ValueError(f"config key {where_tasks} is empty")
    sources = ev.get("sources") or {}
    mini = cfg.get("mini") or {}
    math_format = ev.get("math_format", "multiple_choice")
    if math_format not in ("multiple_choice", "generate"):
        raise ValueError(f"evaluate.math_format: {math_format!r} is not multiple_choice or "
                         "generate")
    n_test = int(mini.get("eval_examples", 100))
    n_shot = int(mini.get("fewshot_examples", 20))
    written = []
    # Files are written into a temporary folder and the folder renamed at the end; the YAMLs
    # name the final (absolute) paths, since lm-eval resolves data_files against the cwd.
    with fsutil.atomic_dir(out_dir) as tmp:
        for task in tasks:
            written += _write_task(cfg, lang, task, entry, sources, where_tasks, math_format,
                                   n_test, n_shot, out_dir, tmp, ev)
        if written:
            group = {"group": f"lrmerge_{lang}", "task": written}
            fsutil.write_text(tmp / f"_group_{lang}.yaml", yaml.safe_dump(group, sort_keys=False))
    return written


def _write_task(cfg, lang, task, entry, sources, where_tasks, math_format, n_test, n_shot,
                out_dir: Path, tmp: Path, ev: dict) -> list[str]:
    """Write one task's data and YAML into `tmp` (paths in the YAML under `out_dir`)."""
    spec = sources.get(task)
    if spec is None and (entry.get("corpus") or {}).get("kind") != "generated":
        raise ValueError(f"task {task!r} ({where_tasks}) has no evaluate.sources.{task} "
                         "entry and the language is not generated")
    if spec is not None and spec.get("kind") == "builtin":
        return []
    family = task_family(cfg, task)
    where = f"evaluate.sources.{task}"
    if spec is None:
        test = _generated_task_rows(cfg, lang, task, family, "test", n_test)
        shots = _generated_task_rows(cfg, lang, task, family, "train", n_shot)
    else:
        if spec.get("kind") == "milic":
            spec = milic_spec(spec, where)
        if spec.get("kind", "hf") != "hf":
            raise ValueError(f"{where}.kind: {spec.get('kind')!r} is not one of hf, milic, "
                             "builtin")
        test = _source_task_rows(spec, "test", where)
        shots = _source_task_rows(spec, "fewshot", where) if spec.get("fewshot") else []
    generative = family == "math" and math_format == "generate"
    if spec is not None and spec.get("format"):
        generative = spec["format"] == "generate"
    if generative:
        test = [_as_generative(r) for r in test]
        shots = [_as_generative(r) for r in shots]
    files = {"test": str(out_dir / f"{task}.test.jsonl")}
    fsutil.write_jsonl(tmp / f"{task}.test.jsonl", test)
    if shots:
        files["train"] = str(out_dir / f"{task}.train.jsonl")
        fsutil.write_jsonl(tmp / f"{task}.train.jsonl", shots)
    if generative:
        y = gen_task_yaml(task, files, bool(shots), int(ev.get("max_gen_toks", 16)))
    else:
        y = mc_task_yaml(task, files, bool(shots))
    fsutil.write_text(tmp / f"{task}.yaml", yaml.safe_dump(y, allow_unicode=True,
                                                            sort_keys=False))
    return [task]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _load(path: str) -> dict:
    from lrmerge.config import load_config

    return load_config(path)


@fsutil.cli_errors("data")
def cmd_corpus(args) -> int:
    cfg = _load(args.config)
    n = fsutil.write_jsonl(args.out, iter_corpus(cfg, args.lang))
    print(f"wrote {n} documents to {args.out}")
    return 0


@fsutil.cli_errors("data")
def cmd_sft(args) -> int:
    cfg = _load(args.config)
    n = fsutil.write_jsonl(args.out, build_sft(cfg))
    print(f"wrote {n} instruction examples to {args.out}")
    return 0


@fsutil.cli_errors("data")
def cmd_eval(args) -> int:
    cfg = _load(args.config)
    tasks = build_eval(cfg, args.lang, args.out_dir)
    print(f"wrote {len(tasks)} tasks to {args.out_dir}: {', '.join(tasks)}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="generate or prepare corpora, SFT data and eval sets")
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("corpus", help="a CT corpus (target + English mix) or the English corpus")
    c.add_argument("--config", required=True)
    c.add_argument("--lang", required=True, help="language code; en = the English corpus")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_corpus)
    s = sub.add_parser("sft", help="English instruction data (prompt/response jsonl)")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_sft)
    e = sub.add_parser("eval", help="task data and lm-eval task YAMLs of a language")
    e.add_argument("--config", required=True)
    e.add_argument("--lang", required=True)
    e.add_argument("--out-dir", required=True)
    e.set_defaults(func=cmd_eval)
    return p
