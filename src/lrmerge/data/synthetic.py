"""The mini preset's synthetic languages: a small English grammar over four topics, and for each
target language the *same* grammar with every English word mapped to a made-up word in a real
low-resource script (Bengali, Tibetan, ...), with some code-switching. Everything is a pure function
of the config seed, so reruns give identical text and nothing is downloaded."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from lrmerge.config import FAMILIES, language_entry

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
    if family == "classification":
        topic = r.choice(topics)
        doc = g.topic_doc(topic, r.randint(2, 4), label_sentence=False)
        query = ["text", ":"] + doc + ["topic", ":"]
        return query, [[t] for t in topics], topics.index(topic)
    if family == "reading_comprehension":
        story, facts = g.ownership()
        p, a, n = r.choice(facts)
        others = [x for x in NAMES if x not in {f[0] for f in facts}]
        choices = [f[0] for f in facts] + r.sample(others, 4 - len(facts))
        r.shuffle(choices)
        query = (["context", ":"] + story + ["question", ":", "who", "has", "the", a, n, "?",
                                               "answer", ":"])
        return query, [[c] for c in choices], choices.index(p)
    if family == "response_selection":
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


def lexicon(cfg: dict, lang: str) -> Lexicon:
    """The generated word map of a language (English: identity)."""
    if lang == "en":
        return Lexicon("en", None, cfg["seed"])
    entry = language_entry(cfg, lang)
    text = entry.get("based_on") or lang  # a vocabulary variant writes its base's words
    script = (entry.get("corpus") or {}).get("script") or DEFAULT_SCRIPTS.get(text)
    if not script:
        raise ValueError(f"config key languages.{lang}.corpus.script is required for a "
                         f"generated language (one of {', '.join(sorted(SCRIPTS))})")
    return Lexicon(text, script, cfg["seed"])


def extension_words(cfg: dict) -> list[str]:
    """Words of the generated target languages `mini.vocab_extension` names (true: all but the
    vocabulary variants), for the tokenizer's vocabulary extension."""
    chosen = cfg["mini"]["vocab_extension"]
    words: list[str] = []
    for lang, entry in (cfg.get("languages") or {}).items():
        wanted = lang in chosen if isinstance(chosen, list) else "based_on" not in entry
        if wanted and (entry.get("corpus") or {}).get("kind") == "generated":
            words.extend(lexicon(cfg, lang).words())
    return list(dict.fromkeys(words))


def documents(cfg: dict, lang: str, purpose: str = "ct") -> Iterator[str]:
    """An endless, seeded stream of documents of a generated language (English: lang "en")."""
    lex = lexicon(cfg, lang)
    seed, text = cfg["seed"], lex.lang  # a vocabulary variant reads its base's documents
    g = Grammar(random.Random(f"corpus:{seed}:{text}:{purpose}"))
    cs_rng = random.Random(f"codeswitch:{seed}:{text}:{purpose}")
    cs = cfg["mini"]["code_switch"] if lang != "en" else 0.0
    while True:
        yield lex.render(g.corpus_doc(), cs_rng, cs)


def mc_item(family: str, g: Grammar, lex: Lexicon) -> dict:
    query, choices, gold = make_task_item(family, g)
    return {"query": lex.render(query), "choices": [lex.render(c) for c in choices],
            "gold": gold, "family": family}


def task_rows(cfg: dict, lang: str, task: str, family: str, split: str, n: int) -> list[dict]:
    """The mini's benchmark items of a task: the generated language's prompts, scored over four
    candidate answers, as normalised rows (`lrmerge.evaluate.benchmarks`). The evaluate stage
    reads them as test and shot items; the SFT data holds the English test items out."""
    seed = int(cfg["seed"])
    # The split is in the RNG key, so test items are drawn independently of few-shot items.
    g = Grammar(random.Random(f"eval:{seed}:{task}:{split}"))
    lex = lexicon(cfg, lang)
    out = []
    for i in range(n):
        item = mc_item(family, g, lex)
        answer = item["choices"][item["gold"]]
        out.append({"id": i, "query": item["query"], "choices": item["choices"],
                    "gold": item["gold"], "target": answer,
                    "answer": answer.replace(" ", "") if family == "math" else answer,
                    "answer_kind": "number" if family == "math" else "label"})
    return out
