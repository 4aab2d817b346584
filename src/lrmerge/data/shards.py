"""Packed token shards: what the data stage writes and every training job reads.

A token folder holds

    tokens-00000.bin ...   the documents' token ids back to back (EOS after each), flat uint16
                           when the vocabulary is below 65,536, else uint32
    documents.bin          uint64 end offset of each document in that stream
    prompts.bin            SFT only: uint32 prompt length of each example (the loss mask)
    document_text.bin      uint64 pairs: characters and UTF-8 bytes of the text up to the end of
                           each document (cumulative, as documents.bin is for tokens)
    document_groups.bin    uint16 group of each document, when the source has groups: a
                           corpus's subsets (RedPajama's arxiv, c4, ...) or the SFT data's tasks;
                           the manifest's `groups` names them and counts each one's documents,
                           tokens, characters and bytes
    manifest.json          written last: tokens, dtype, documents, characters, bytes,
                           characters_per_token, tokenizer, source, shards (file, tokens,
                           characters, bytes, xxh3-128) and what the data stage decided (need,
                           passes)

and is read back with `np.memmap`, so every process of a job maps the same pages and reads only the
blocks it trains on. The writer fills a temporary sibling folder and renames it at the end: an
interrupted job leaves no manifest, and so nothing that looks complete.

**Text counts.** `characters` are Unicode code points and `bytes` UTF-8 bytes of each document's
text exactly as it was given to the tokenizer (before its normalizer; SFT: the prompt, then
`sft.join` + the response). The marks around a document (BOS, separator) are tokens and have no
text, so `characters_per_token` = characters / tokens counts them in the tokens. The data stage
never cuts a document (it stops after the one that completes its goal), so every count is exact;
documents never straddle shards, so the per-shard counts are exact too. A folder written before
text was counted has none of these fields and no document_text.bin: `TokenShards.text` is None
there, and training records its text as null (`lrmerge.train.summary`).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xxhash

from lrmerge import fsutil

MANIFEST = "manifest.json"
DOCUMENTS = "documents.bin"
PROMPTS = "prompts.bin"
TEXT = "document_text.bin"
GROUPS = "document_groups.bin"
TEXT_COUNTED = ("Unicode code points and UTF-8 bytes of each document's text as given to the "
                "tokenizer (SFT: prompt, join and response); BOS and separator tokens have none")
FORMAT = 1


class DataShortError(ValueError):
    """The data holds less than a job needs, and repeating it is not allowed: a corpus gives
    fewer tokens than its largest budget (data stage), or a training run reads past the end of
    its token folder (`lrmerge.train.stream`)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


class ShardWriter:
    """Appends documents' tokens to shard files of at most `shard_tokens` tokens each."""

    def __init__(self, out: str | os.PathLike, vocab_size: int, shard_tokens: int,
                 with_prompts: bool = False, groups: tuple[str, list[str]] | None = None):
        """`groups`: (what they are, e.g. "subset" or "task"; their names): every batch then
        brings each document's group (an index into the names)."""
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial",
                                         dir=self.out.parent))
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = int(shard_tokens)
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._fh = None
        self._hash = None
        self._in_shard = 0
        self._docs = open(self.tmp / DOCUMENTS, "wb")
        self._prompts = open(self.tmp / PROMPTS, "wb") if with_prompts else None
        # text counts: kept only if every batch brings them (`add(..., text=...)`)
        self._text = open(self.tmp / TEXT, "wb")
        self._text_ok = True
        self.text_total = np.zeros(2, dtype=np.int64)  # characters, bytes
        self._shard_text: list[np.ndarray] = []
        self.group_kind, self.group_names = groups if groups else (None, [])
        self._groups = open(self.tmp / GROUPS, "wb") if groups else None
        # per group: documents, tokens, characters, bytes
        self.group_counts = np.zeros((len(self.group_names), 4), dtype=np.int64)

    def _open_shard(self):
        name = f"tokens-{len(self.shards):05d}.bin"
        self._fh = open(self.tmp / name, "wb")
        self._hash = xxhash.xxh3_128()
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0})
        self._shard_text.append(np.zeros(2, dtype=np.int64))

    def _close_shard(self):
        if self._fh is not None:
            self._fh.close()
            self.shards[-1].update(tokens=self._in_shard, xxh3_128=self._hash.hexdigest())
            self._fh = None

    def add(self, ids: np.ndarray, lengths: np.ndarray, prompts: np.ndarray | None = None,
            text: np.ndarray | None = None, groups: np.ndarray | None = None):
        """Append a batch: `ids` the documents' tokens back to back, `lengths` one per document,
        `text` (documents x 2) the characters and UTF-8 bytes of each document's text (without
        it the folder gets no text counts), `groups` each document's group (a writer made with
        groups needs it). Documents never straddle shards."""
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        if self._groups is not None:
            self._add_groups(groups, lengths, text)
        ends = np.cumsum(lengths, dtype=np.uint64)
        if text is None:
            self._text_ok = False
        elif self._text_ok:
            text = np.asarray(text, dtype=np.int64).reshape(len(lengths), 2)
        start = 0
        while start < len(lengths):
            if self._fh is None or self._in_shard >= self.shard_tokens:
                self._close_shard()
                self._open_shard()
            # as many whole documents as fit; one too long for any shard gets a shard of its own
            room = self.shard_tokens - self._in_shard
            base = int(ends[start - 1]) if start else 0
            stop = int(np.searchsorted(ends, base + room, side="right"))
            if stop == start:
                if self._in_shard:
                    self._close_shard()
                    continue
                stop = start + 1
            hi = int(ends[stop - 1])
            chunk = ids[base:hi].tobytes()
            self._fh.write(chunk)
            self._hash.update(chunk)
            self._in_shard += hi - base
            if self._text_ok:
                self._shard_text[-1] += text[start:stop].sum(axis=0)
            start = stop
        (ends + np.uint64(self.tokens)).astype(np.uint64).tofile(self._docs)
        if self._text_ok:
            (np.cumsum(text, axis=0) + self.text_total).astype(np.uint64).tofile(self._text)
            self.text_total += text.sum(axis=0)
        if self._prompts is not None:
            np.asarray(prompts, dtype=np.uint32).tofile(self._prompts)
        self.tokens += int(ends[-1]) if len(ends) else 0
        self.documents += len(lengths)

    def _add_groups(self, groups, lengths, text) -> None:
        if groups is None or len(groups) != len(lengths):
            raise ValueError(f"a batch of {len(lengths)} documents needs its {self.group_kind} "
                             "of each document")
        g = np.asarray(groups, dtype=np.int64)
        n = len(self.group_names)  # the caller may have named more groups since the last batch
        if len(g) and (g.min() < 0 or g.max() >= n):
            raise ValueError(f"{self.group_kind} index outside 0..{n - 1}")
        if n > 65535:
            raise ValueError(f"{n} {self.group_kind}s: at most 65,535")
        if n > len(self.group_counts):
            grown = np.zeros((n, 4), dtype=np.int64)
            grown[:len(self.group_counts)] = self.group_counts
            self.group_counts = grown
        self.group_counts[:, 0] += np.bincount(g, minlength=n)
        self.group_counts[:, 1] += np.bincount(g, weights=lengths, minlength=n).astype(np.int64)
        if text is not None:
            t = np.asarray(text, dtype=np.int64).reshape(len(lengths), 2)
            for k in (0, 1):
                self.group_counts[:, 2 + k] += np.bincount(
                    g, weights=t[:, k], minlength=n).astype(np.int64)
        g.astype(np.uint16).tofile(self._groups)

    def _groups_manifest(self) -> dict:
        c = self.group_counts
        names = self.group_names
        return {"kind": self.group_kind, "names": list(names), "file": GROUPS,
                "documents": {k: int(v) for k, v in zip(names, c[:, 0], strict=True)},
                "tokens": {k: int(v) for k, v in zip(names, c[:, 1], strict=True)},
                "characters": ({k: int(v) for k, v in zip(names, c[:, 2], strict=True)}
                               if self._text_ok else None),
                "bytes": ({k: int(v) for k, v in zip(names, c[:, 3], strict=True)}
                          if self._text_ok else None)}

    def finish(self, manifest: dict) -> dict:
        """Close the files, write the manifest last and move the folder into place."""
        self._close_shard()
        self._docs.close()
        self._text.close()
        if self._prompts is not None:
            self._prompts.close()
        if self._groups is not None:
            self._groups.close()
        doc = {"format": FORMAT, "tokens": self.tokens, "dtype": self.dtype.name,
               "documents": self.documents}
        if self._text_ok:
            chars, nbytes = (int(x) for x in self.text_total)
            doc.update(characters=chars, bytes=nbytes,
                       characters_per_token=round(chars / self.tokens, 6) if self.tokens else None,
                       text_counted=TEXT_COUNTED)
            for shard, counts in zip(self.shards, self._shard_text, strict=True):
                shard["characters"], shard["bytes"] = (int(x) for x in counts)
        else:
            (self.tmp / TEXT).unlink()
        doc.update({**manifest, "shards": self.shards, "documents_file": DOCUMENTS})
        if self._text_ok:
            doc["text_file"] = TEXT
        if self._prompts is not None:
            doc["prompts_file"] = PROMPTS
        if self._groups is not None:
            doc["groups"] = self._groups_manifest()
        fsutil.write_json(self.tmp / MANIFEST, doc)
        fsutil.replace_dir(self.tmp, self.out)  # a rerun replaces the old folder only now
        return doc

    def abort(self):
        for fh in (self._fh, self._docs, self._prompts, self._text, self._groups):
            if fh is not None:
                fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class TokenShards:
    """A token folder read through memory maps: a flat stream of `tokens` ids."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {self.folder} is not a finished token folder "
                "(the data stage writes the manifest last)")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        self.dtype = np.dtype(self.manifest["dtype"])
        self.tokens = int(self.manifest["tokens"])
        self._maps = []
        self._starts = [0]
        for shard in self.manifest["shards"]:
            f = self.folder / shard["file"]
            n = int(shard["tokens"])
            if not f.is_file() or f.stat().st_size != n * self.dtype.itemsize:
                raise ValueError(f"{f}: missing or not {n} tokens of {self.dtype.name} as "
                                 f"{path} says")
            self._maps.append(np.memmap(f, dtype=self.dtype, mode="r", shape=(n,)) if n else
                              np.zeros(0, self.dtype))
            self._starts.append(self._starts[-1] + n)
        if self._starts[-1] != self.tokens:
            raise ValueError(f"{path}: shards hold {self._starts[-1]} tokens, manifest says "
                             f"{self.tokens}")
        self.doc_ends = np.memmap(self.folder / self.manifest["documents_file"], dtype=np.uint64,
                                  mode="r")
        self.prompts = (np.memmap(self.folder / self.manifest["prompts_file"], dtype=np.uint32,
                                  mode="r") if self.manifest.get("prompts_file") else None)
        self.text = self._open_text()
        self.groups, self.group_names = self._open_groups()
        # the marks around each document's text: BOS (if added) before, the separator after
        self._head = 1 if (self.manifest.get("bos") or {}).get("added") is True else 0
        self._tail = 1

    def _open_text(self) -> np.ndarray | None:
        """(documents x 2) uint64: characters and UTF-8 bytes up to each document's end. None
        for a folder written before the data stage counted text (no text_file in its manifest):
        then nothing is known of its text, and nothing is made up."""
        name = self.manifest.get("text_file")
        if not name:
            return None
        f, n = self.folder / name, int(self.manifest["documents"])
        if not f.is_file() or f.stat().st_size != n * 16:
            raise ValueError(f"{f}: missing or not {n} documents' text counts as "
                             f"{self.folder / MANIFEST} says")
        if n == 0:
            return np.zeros((0, 2), dtype=np.uint64)
        return np.memmap(f, dtype=np.uint64, mode="r", shape=(n, 2))

    def _open_groups(self) -> tuple[np.ndarray | None, list[str]]:
        """Each document's group (uint16 memmap) and the group names; (None, []) without."""
        g = self.manifest.get("groups")
        if not g:
            return None, []
        f, n = self.folder / g["file"], int(self.manifest["documents"])
        if not f.is_file() or f.stat().st_size != n * 2:
            raise ValueError(f"{f}: missing or not {n} documents' {g['kind']}s as "
                             f"{self.folder / MANIFEST} says")
        arr = (np.memmap(f, dtype=np.uint16, mode="r", shape=(n,)) if n
               else np.zeros(0, np.uint16))
        return arr, list(g["names"])

    def group_tokens(self, stop: int, start: int = 0, chunk: int = 1 << 22) -> dict | None:
        """Tokens of each group in the stream's tokens [start, stop) (None: no groups). A
        document cut by either edge counts the tokens of it that fall inside. Reads the
        document index in chunks, so memory stays flat however many documents there are."""
        if self.groups is None:
            return None
        if not 0 <= start <= stop <= self.tokens:
            raise IndexError(f"{self.folder}: tokens [{start}, {stop}) outside 0..{self.tokens}")
        out = np.zeros(len(self.group_names), dtype=np.int64)
        lo = int(np.searchsorted(self.doc_ends, np.uint64(start), side="right"))
        hi = min(len(self.doc_ends),
                 int(np.searchsorted(self.doc_ends, np.uint64(stop), side="left")) + 1)
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            ends = np.asarray(self.doc_ends[a:b], dtype=np.int64)
            starts = np.concatenate([[int(self.doc_ends[a - 1]) if a else 0], ends[:-1]])
            inside = np.clip(ends, start, stop) - np.clip(starts, start, stop)
            out += np.bincount(np.asarray(self.groups[a:b], dtype=np.int64), weights=inside,
                               minlength=len(out)).astype(np.int64)
        return dict(zip(self.group_names, (int(x) for x in out), strict=True))

    def text_before(self, positions) -> np.ndarray | None:
        """Characters and UTF-8 bytes of the text of tokens [0, t) of the stream, for each t of
        `positions` (int64, len(positions) x 2; None without text counts). Exact at document
        edges; inside a document (a run that stops, or a block that starts, in the middle of
        one) its text is prorated over its text tokens (BOS and separator have none), rounded
        down: floor(characters x text tokens before t / text tokens of the document)."""
        if self.text is None:
            return None
        t = np.asarray(positions, dtype=np.int64).reshape(-1)
        if t.size and (t.min() < 0 or t.max() > self.tokens):
            raise IndexError(f"{self.folder}: token positions outside 0..{self.tokens}")
        out = np.zeros((t.size, 2), dtype=np.int64)
        if not len(self.text):
            return out
        # binary searches and row lookups in the memory maps: nothing is read whole
        n_docs = len(self.doc_ends)
        d = np.searchsorted(self.doc_ends, t.astype(np.uint64), side="right").astype(np.int64)

        def ends(i):  # token end of documents i (-1: 0)
            return np.where(i >= 0, self.doc_ends[np.maximum(i, 0)].astype(np.int64), 0)

        def upto(i):  # text up to the end of documents i (-1: none)
            return np.where((i >= 0)[:, None],
                            self.text[np.maximum(i, 0)].astype(np.int64), 0)

        out[:] = upto(d - 1)  # documents wholly before t
        part = d < n_docs  # t inside document d (or at its start)
        dp = d[part]
        start = ends(dp - 1)
        length = ends(dp) - start
        head = np.full(len(dp), self._head, dtype=np.int64)
        n_text = length - self._head - self._tail
        odd = n_text <= 0  # a document of marks only (never from the data stage): spread whole
        n_text = np.where(odd, length, n_text)
        head[odd] = 0
        k = np.clip(t[part] - start - head, 0, n_text)
        doc_text = upto(dp) - upto(dp - 1)
        out[part] += doc_text * k[:, None] // np.maximum(n_text, 1)[:, None]
        return out

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer"]["xxh3_128"]

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64 (a copy; may cross shards)."""
        if not 0 <= start <= stop <= self.tokens:
            raise IndexError(f"{self.folder}: tokens [{start}, {stop}) outside 0..{self.tokens}")
        out = np.empty(stop - start, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = 0
        while start < stop:
            s0 = self._starts[i]
            take = min(stop, self._starts[i + 1]) - start
            out[pos:pos + take] = self._maps[i][start - s0:start - s0 + take]
            self._release(i, start - s0, start - s0 + take)
            pos += take
            start += take
            i += 1
        return out

    def _release(self, i: int, lo: int, hi: int) -> None:
        """Unmap the pages just copied from this process (they stay in the page cache): touched
        pages of a mapping count as the process's resident memory, which would otherwise grow
        with every token a long run reads."""
        mm = getattr(self._maps[i], "_mmap", None)
        if mm is None:
            return
        a = lo * self.dtype.itemsize // mmap.PAGESIZE * mmap.PAGESIZE
        b = hi * self.dtype.itemsize // mmap.PAGESIZE * mmap.PAGESIZE  # whole pages only
        if b > a:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def identity(self, stop: int | None = None) -> list[dict]:
        """What the stream's tokens [0, stop) are (all: None), for a training checkpoint's
        fingerprint: the manifest entries of the shards wholly inside, and for a shard cut by
        `stop` a hash of its tokens up to there. A folder prepared again for a larger need (the
        same seeded documents, more of them) keeps the identity of what smaller budgets read,
        so their checkpoints stay valid."""
        stop = self.tokens if stop is None else min(int(stop), self.tokens)
        out = []
        for i, shard in enumerate(self.manifest["shards"]):
            lo, hi = self._starts[i], self._starts[i + 1]
            if hi <= stop:
                out.append(shard)
                continue
            if lo < stop:
                part = np.ascontiguousarray(self._maps[i][:stop - lo])
                out.append({"file": shard["file"], "tokens": stop - lo,
                            "xxh3_128": xxhash.xxh3_128(part.tobytes()).hexdigest()})
                self._release(i, 0, stop - lo)
            break
        return out

    def verify(self) -> None:
        """Recompute every shard's content hash (slow: reads everything)."""
        for shard, m in zip(self.manifest["shards"], self._maps, strict=True):
            h = xxhash.xxh3_128(np.ascontiguousarray(m).tobytes()).hexdigest()
            if h != shard["xxh3_128"]:
                raise ValueError(f"{self.folder / shard['file']}: content hash {h} differs from "
                                 f"the manifest's {shard['xxh3_128']}")
