"""Packed token shards: what the data stage writes and every training job reads.

A token folder holds

    tokens-00000.bin ...   the documents' token ids back to back (EOS after each), flat uint16
                           when the vocabulary is below 65,536, else uint32
    documents.bin          uint64 end offset of each document in that stream
    prompts.bin            SFT only: uint32 prompt length of each example (the loss mask)
    manifest.json          written last: tokens, dtype, documents, tokenizer, source, shards
                           (file, tokens, xxh3-128) and what the data stage decided (need, passes)

and is read back with `np.memmap`, so every process of a job maps the same pages and reads only the
blocks it trains on. The writer fills a temporary sibling folder and renames it at the end: an
interrupted job leaves no manifest, and so nothing that looks complete.
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
                 with_prompts: bool = False):
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

    def _open_shard(self):
        name = f"tokens-{len(self.shards):05d}.bin"
        self._fh = open(self.tmp / name, "wb")
        self._hash = xxhash.xxh3_128()
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0})

    def _close_shard(self):
        if self._fh is not None:
            self._fh.close()
            self.shards[-1].update(tokens=self._in_shard, xxh3_128=self._hash.hexdigest())
            self._fh = None

    def add(self, ids: np.ndarray, lengths: np.ndarray, prompts: np.ndarray | None = None):
        """Append a batch: `ids` the documents' tokens back to back, `lengths` one per document.
        Documents never straddle shards."""
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        ends = np.cumsum(lengths, dtype=np.uint64)
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
            start = stop
        (ends + np.uint64(self.tokens)).astype(np.uint64).tofile(self._docs)
        if self._prompts is not None:
            np.asarray(prompts, dtype=np.uint32).tofile(self._prompts)
        self.tokens += int(ends[-1]) if len(ends) else 0
        self.documents += len(lengths)

    def finish(self, manifest: dict) -> dict:
        """Close the files, write the manifest last and move the folder into place."""
        self._close_shard()
        self._docs.close()
        if self._prompts is not None:
            self._prompts.close()
        doc = {"format": FORMAT, "tokens": self.tokens, "dtype": self.dtype.name,
               "documents": self.documents, **manifest, "shards": self.shards,
               "documents_file": DOCUMENTS}
        if self._prompts is not None:
            doc["prompts_file"] = PROMPTS
        fsutil.write_json(self.tmp / MANIFEST, doc)
        fsutil.replace_dir(self.tmp, self.out)  # a rerun replaces the old folder only now
        return doc

    def abort(self):
        for fh in (self._fh, self._docs, self._prompts):
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

    def verify(self) -> None:
        """Recompute every shard's content hash (slow: reads everything)."""
        for shard, m in zip(self.manifest["shards"], self._maps, strict=True):
            h = xxhash.xxh3_128(np.ascontiguousarray(m).tobytes()).hexdigest()
            if h != shard["xxh3_128"]:
                raise ValueError(f"{self.folder / shard['file']}: content hash {h} differs from "
                                 f"the manifest's {shard['xxh3_128']}")
