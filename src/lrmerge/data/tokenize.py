"""Tokenize once: a corpus or the SFT data into packed token shards (`lrmerge.data.shards`).

Documents are read in the corpus's seeded sample order (`lrmerge.data.sources.Corpus`) and
encoded in batches by the `tokenizers` Rust encoder on as many threads as the rule has, and the
data stage stops at the first document that completes what the
largest budget needs, counted in the real tokens of the model's own tokenizer. Each document is
framed as the config's `data` section says (`document_marks`): a BOS before it or not, one
separator token after it; the choice is recorded in the manifest. Memory stays at a few batches,
whatever the corpus size: tokens go straight to the shard files. Beside the tokens, the manifest
counts the text they encode: characters (code points) and UTF-8 bytes of each document as given
to the tokenizer, per shard and in total (`lrmerge.data.shards`), so that a budget in tokens can
be read as an amount of text whatever the tokenizer.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import xxhash

from lrmerge.config import corpus_key, language_entry
from lrmerge.data import budget
from lrmerge.data.shards import DataShortError, ShardWriter, token_dtype

BATCH_DOCS = 1000  # documents per encoder call


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------
def load_tokenizer(name: str):
    """A fast Hugging Face tokenizer from a folder or hub id (the base model's, or the one the
    mini preset trains)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise RuntimeError(f"cannot load the tokenizer {name}: {e}") from e
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer {name} has no fast (tokenizers) version; the data stage "
                         "needs tokenizer.json")
    return tok


def tokenizer_identity(tok) -> dict:
    """Name, size and content hash: a training job checks its model's tokenizer against it."""
    # The whole tokenizer.json (vocabulary, merges, normalizer, pre- and post-processor: all that
    # decides the ids), key order normalised so that a save and reload gives the same hash.
    canonical = json.dumps(json.loads(tok.backend_tokenizer.to_str()), sort_keys=True)
    return {"name": str(tok.name_or_path), "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "xxh3_128": xxhash.xxh3_128(canonical.encode()).hexdigest()}


# --------------------------------------------------------------------------------------------
# What frames each document: BOS, separator, and the pad training fills with (config `data`)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Marks:
    """The tokens around each document (and SFT example): `head` before it (BOS or nothing),
    `tail` after it (the separator); `pad` fills the end of a training sequence."""

    head: list[int]
    tail: list[int]
    manifest: dict  # separator {token, id, config}, bos {token, id, added, config}, pad {...}

    def describe(self) -> str:
        sep, bos = self.manifest["separator"], self.manifest["bos"]
        return (f"separator {sep['token']!r} ({sep['id']}), "
                + (f"BOS {bos['token']!r} ({bos['id']})" if bos["added"] else "no BOS"))


def _one_token(tok, value: str, key: str) -> dict:
    """A config value naming one token of the vocabulary -> {token, id}."""
    if value == "eos":
        if tok.eos_token_id is None:
            raise ValueError(f"config key {key}: eos, but tokenizer {tok.name_or_path} has no EOS "
                             "token; name the token to use")
        return {"token": tok.eos_token, "id": int(tok.eos_token_id)}
    tid = tok.backend_tokenizer.token_to_id(value)
    if tid is None:
        raise ValueError(
            f"config key {key}: {value!r} is not a single token of tokenizer {tok.name_or_path}'s "
            f"vocabulary (its EOS is {tok.eos_token!r}); use eos or a token of the vocabulary")
    return {"token": value, "id": int(tid)}


def _template_bos(tok) -> bool:
    """Whether the tokenizer's own template puts its BOS before a text. A template that adds
    anything else around it (EOS after it, another token) is refused: the separator stands after
    each document, and a second mark there would be a guess at what the tokenizer means."""
    rust = tok.backend_tokenizer
    plain = rust.encode("a", add_special_tokens=False).ids
    full = rust.encode("a", add_special_tokens=True).ids
    if full == plain:
        return False
    if tok.bos_token_id is not None and full == [tok.bos_token_id, *plain]:
        return True
    raise ValueError(
        f"config key data.add_bos: auto, but tokenizer {tok.name_or_path}'s template turns "
        f"{plain} into {full}, not just a BOS before the text; set data.add_bos to true or false")


def document_marks(tok, data_cfg: dict) -> Marks:
    """Resolve `data.document_separator`, `data.add_bos` and `data.pad` against a tokenizer."""
    sep = _one_token(tok, data_cfg["document_separator"], "data.document_separator")
    setting = data_cfg["add_bos"]
    added = _template_bos(tok) if setting == "auto" else bool(setting)
    if added and tok.bos_token_id is None:
        raise ValueError(f"config key data.add_bos: {setting}, but tokenizer {tok.name_or_path} "
                         "has no BOS token")
    bos = {"token": tok.bos_token, "id": tok.bos_token_id, "added": added, "config": setting}
    pad = (dict(sep) if data_cfg["pad"] == "separator"
           else _one_token(tok, data_cfg["pad"], "data.pad"))
    manifest = {"separator": {**sep, "config": data_cfg["document_separator"]}, "bos": bos,
                "pad": {**pad, "config": data_cfg["pad"]}}
    return Marks([bos["id"]] if added else [], [sep["id"]], manifest)


# --------------------------------------------------------------------------------------------
# Parallel encoding: the Rust encoder's own thread pool (rayon) over each batch
# --------------------------------------------------------------------------------------------
def _frame(ids: list[list[int]], marks: Marks) -> None:
    """Put the marks around each document's ids, in place."""
    for x in ids:
        x[:0] = marks.head
        x.extend(marks.tail)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def text_counts(texts: Iterable[str]) -> np.ndarray:
    """(len(texts) x 2) int64: each text's characters (Unicode code points) and UTF-8 bytes."""
    texts = list(texts)
    out = np.empty((len(texts), 2), dtype=np.int64)
    out[:, 0] = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    out[:, 1] = np.fromiter(map(_utf8_len, texts), dtype=np.int64, count=len(texts))
    return out


def _encode(tok, marks: Marks, dtype, docs: list[tuple[str, int]]):
    """One batch of (text, group) -> (ids back to back, each document framed by the marks;
    framed lengths; characters and UTF-8 bytes of each document's text; groups)."""
    texts = [t for t, _ in docs]
    # The template's specials are left out: the marks put exactly what the config says.
    ids = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    _frame(ids, marks)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    groups = np.fromiter((g for _, g in docs), dtype=np.int64, count=len(docs))
    return flat, lengths, text_counts(texts), groups


def _encode_sft(tok, marks: Marks, dtype, batch: list[tuple[str, str]]):
    """(prompt, join + response) pairs -> ids, lengths, prompt lengths (BOS included), and
    the characters and UTF-8 bytes of each example's text (prompt, join and response)."""
    prompts = [marks.head + e.ids for e in tok.encode_batch_fast([p for p, _ in batch],
                                                                  add_special_tokens=False)]
    answers = [e.ids for e in tok.encode_batch_fast([a for _, a in batch],
                                                     add_special_tokens=False)]
    seqs = [p + a + marks.tail for p, a in zip(prompts, answers, strict=True)]
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(lengths.sum()))
    text = text_counts(p for p, _ in batch) + text_counts(a for _, a in batch)
    return (flat, lengths, np.fromiter(map(len, prompts), dtype=np.uint32, count=len(prompts)),
            text)


def encoded_batches(tok, marks: Marks, items: Iterable, workers: int, fn: Callable = _encode,
                    batch: int = BATCH_DOCS) -> Iterator[tuple]:
    """Encode `items` ((text, group) pairs, or SFT pairs with fn=_encode_sft) batch by batch, in
    order. The
    `tokenizers` encoder spreads each batch over `workers` threads (measured here on 2 cores:
    2.5x a single-threaded `tokenizer(batch)` loop, see benchmarks/bench_data.py); one batch in
    memory at a time."""
    # tokenizers reads this on every call; the pool size only when it first starts its threads
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, workers)))
    rust = tok.backend_tokenizer
    dtype = token_dtype(len(tok))
    it = iter(items)
    while b := list(itertools.islice(it, batch)):
        yield (*fn(rust, marks, dtype, b), len(b))


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------
def prepare_corpus(cfg: dict, lang: str, tokenizer: str, out: str | os.PathLike,
                   workers: int = 1, log=print) -> dict:
    """Tokenize a corpus into `out` (token shards + manifest) up to what its largest budget needs
    plus `continual_pretrain.data_margin`, its documents drawn in the seeded, prefix-stable
    order of `lrmerge.data.sources.Corpus` (a sample, never the stored order; a larger need
    extends the same documents). Fails, naming the language and the counts, when the corpus
    holds less than the need, unless its config entry allows repeating."""
    from lrmerge.data.sources import Corpus

    spec = language_entry(cfg, lang)["corpus"]
    where = corpus_key(lang)
    need, readers = budget.corpus_tokens_needed(cfg, lang)
    goal = budget.with_margin(need, cfg["continual_pretrain"]["data_margin"])
    if spec.get("max_tokens"):
        goal = min(goal, int(spec["max_tokens"]))
    tok = load_tokenizer(tokenizer)
    ident = tokenizer_identity(tok)
    marks = document_marks(tok, cfg["data"])
    t0 = time.time()  # reading, encoding and writing (the tokenizer is loaded)
    corpus = Corpus(cfg, lang)
    groups = (corpus.subset_kind, corpus.names) if corpus.subset_kind else None
    writer = ShardWriter(out, len(tok), cfg["data"]["shard_tokens"], groups=groups)
    corpus.observe(lambda: writer.group_counts)
    read = 0
    try:
        max_docs = spec.get("max_docs")
        for flat, lengths, text, group, _ in encoded_batches(tok, marks, corpus.documents(),
                                                             workers):
            k = len(lengths) if not max_docs else min(len(lengths), int(max_docs) - read)
            ends = np.cumsum(lengths[:k])
            done = writer.tokens + int(ends[-1]) >= goal
            if done:  # the document that completes the goal is the last one read, kept whole
                k = int(np.searchsorted(ends, goal - writer.tokens, side="left")) + 1
            # whole documents only (never cut), so their text counts are exact
            writer.add(flat[:int(ends[k - 1])], lengths[:k], text=text[:k], groups=group[:k])
            read += k
            if done or (max_docs and read >= int(max_docs)):
                break
        tokens = writer.tokens
        if tokens < need and not spec["allow_repeat"]:
            raise DataShortError(
                f"{where}: language {lang!r} has {tokens} tokens in {read} documents, but its "
                f"largest budget needs {need} ({', '.join(f'{k} {v}' for k, v in readers.items())}"
                f"); add text, lower the budgets, or set {where}.allow_repeat: true to repeat it")
        _check_subsets(corpus, writer)
        passes = round(need / tokens, 4) if tokens else None
        if tokens < need:
            print(f"warning: {where}: {tokens} tokens for a need of {need}: training repeats the "
                  f"corpus ({passes} passes, recorded in the manifest)", file=sys.stderr)
        seconds = time.time() - t0
        manifest = writer.finish({
            "kind": "corpus", "lang": lang, "tokenizer": ident, **marks.manifest, "source": spec,
            "sampling": {**corpus.sampling, "seed": cfg.get("seed", 0)},
            "need": need, "need_by_reader": readers, "goal_with_margin": goal,
            "margin": cfg["continual_pretrain"]["data_margin"],
            "allow_repeat": spec["allow_repeat"], "passes_needed": max(1.0, passes or 0),
            "exhausted": tokens < goal, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / max(1e-9, seconds)), "workers": workers})
    except BaseException:
        writer.abort()
        raise
    subsets = ""
    if manifest.get("groups"):
        g = manifest["groups"]["tokens"]
        subsets = "; subsets " + ", ".join(f"{k} {v / max(1, tokens):.1%}" for k, v in g.items())
    log(f"{lang}: {manifest['tokens']} tokens in {manifest['documents']} documents, "
        f"{manifest['characters']} characters ({manifest['characters_per_token']} a token; "
        f"{len(manifest['shards'])} shards, need {need}; {marks.describe()}{subsets}) in "
        f"{manifest['seconds']} s")
    return manifest


def _check_subsets(corpus, writer: ShardWriter) -> None:
    """A weighted subset that gave no document is an error naming it (a value that no row
    carries, or an empty source); one that ran out before its share is a warning, and its
    shortfall is in the manifest (sampling.exhausted and the groups' tokens)."""
    if corpus.weights is None:
        return
    docs = writer.group_counts[:, 0]
    for name, w, n in zip(corpus.names, corpus.weights, docs, strict=False):
        if w > 0 and n == 0:
            seen = corpus.sampling.get("other_subsets")
            hint = (f" (values of {corpus.field} seen: {', '.join(map(str, seen))})"
                    if corpus.field and seen else "")
            raise DataShortError(f"{corpus.where}.subsets.weights.{name}: no document of subset "
                                 f"{name!r} was read{hint}")
    for name in corpus.sampling.get("exhausted", []):
        print(f"warning: {corpus.where}.subsets: subset {name!r} ran out before its share; the "
              "manifest's groups say what each subset gave", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# The mini preset's own tokenizer
# --------------------------------------------------------------------------------------------
def train_tokenizer(cfg: dict, out: str | os.PathLike, log=print):
    """Mini only: a byte-level BPE trained on the first `mini.tokenizer_docs` generated English
    documents (so other scripts fall back to bytes, as with Llama-2), plus one token per target
    word when `mini.vocab_extension` (new embedding rows that pre-training never updates)."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from lrmerge import fsutil
    from lrmerge.data import synthetic

    mini = cfg["mini"]
    texts = list(itertools.islice(synthetic.documents(cfg, "en", "pretrain"),
                                  mini["tokenizer_docs"]))
    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=mini["tokenizer_vocab"], min_frequency=2,
                            special_tokens=[eos], show_progress=False)
    extra = synthetic.extension_words(cfg) if mini["vocab_extension"] else []
    if extra:
        # Both forms: after a space (inside text) and bare (at the start of a text).
        bpe.add_tokens([AddedToken(" " + w, normalized=False) for w in extra]
                       + [AddedToken(w, normalized=False) for w in extra])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos,
                                  pad_token=eos, unk_token=None)
    with fsutil.atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
    log(f"tokenizer: {len(tok)} tokens ({len(extra)} extension words) from {len(texts)} documents")
    return tok
