"""Seeded orders over data: which document (or block) comes i-th, as a pure function of i.

    Permutation     a keyed bijection of [0, n) (a Feistel network with cycle-walking): item i
                    of a seeded shuffle in O(1) memory, for any n, with nothing stored
    LineIndex       where each non-blank line of a set of jsonl files starts: random access to
                    the documents of a local corpus, so they can be read in a Permutation order
    buffered        a shuffle buffer over a stream (for sources that cannot be read at random)
    interleaved     several streams read at once, the next item from a seeded random one

Why a Feistel permutation rather than `rng.permutation(n)`: at the paper's scale a budget has
millions of blocks and a corpus tens of millions of documents; a stored permutation would cost
8 bytes each in every process, while this costs nothing and gives the same item for the same
(seed, i) in any process, on resume, at any world size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

_M64 = (1 << 64) - 1
ROUNDS = 6


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _mix64_int(x: int) -> int:
    """`_mix64` on one Python int (the per-sample path: no array overhead)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def seed_key(*parts) -> int:
    """One 64-bit key from a tuple of ints and strings (stable across processes and runs:
    Python's own hash of a string is salted per process)."""
    h = np.array([0x9E3779B97F4A7C15], dtype=np.uint64)
    for p in parts:
        for b in (p if isinstance(p, bytes) else str(p).encode()) + b"\x00":
            h = _mix64(h ^ np.uint64(b))
    return int(h[0])


class Permutation:
    """A seeded bijection of [0, n): `perm[i]` (an int) or `perm.take(array)` (vectorised).

    A balanced Feistel network over the smallest even number of bits covering n, with
    cycle-walking (re-encrypt while the result is >= n: fewer than 4 steps on average, as the
    bit domain holds at most 4n values). Every item of [0, n) appears exactly once."""

    def __init__(self, n: int, *key):
        if n < 0:
            raise ValueError(f"a permutation of {n} items")
        self.n = int(n)
        bits = max(2, (max(1, self.n - 1)).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.mask = np.uint64((1 << self.half) - 1)
        k = seed_key("permutation", *key)
        self.int_keys = [seed_key(k, r) for r in range(ROUNDS)]
        self.keys = [np.uint64(x) for x in self.int_keys]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << h) | right

    def take(self, idx) -> np.ndarray:
        """perm[i] for each i of `idx` (int64 array)."""
        i = np.asarray(idx, dtype=np.int64)
        if i.size and (i.min() < 0 or i.max() >= self.n):
            raise IndexError(f"index outside 0..{self.n - 1}")
        x = self._encrypt(i.astype(np.uint64))
        n = np.uint64(self.n)
        while True:
            out = x >= n
            if not out.any():
                return x.astype(np.int64)
            x[out] = self._encrypt(x[out])

    def __getitem__(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} outside 0..{self.n - 1}")
        half, mask = self.half, int(self.mask)
        while True:  # the same network as `_encrypt`, on ints
            left, right = i >> half, i & mask
            for k in self.int_keys:
                left, right = right, left ^ (_mix64_int(right ^ k) & mask)
            i = (left << half) | right
            if i < self.n:
                return i

    def __len__(self) -> int:
        return self.n


class LineIndex:
    """The non-blank lines of jsonl files, each located by (file, byte offset, length): one pass
    over the files, 12 bytes a line in memory. `line(i)` reads line i (over all files, in order)
    with one positioned read."""

    def __init__(self, paths: list[str]):
        self.paths = [str(p) for p in paths]
        starts, lengths, counts = [], [], []
        for path in self.paths:
            s, n = self._scan(path)
            starts.append(s)
            lengths.append(n)
            counts.append(len(s))
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.uint64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)
        self.file_ends = np.cumsum(counts, dtype=np.int64)
        self._fds: dict[int, int] = {}

    @staticmethod
    def _scan(path: str) -> tuple[np.ndarray, np.ndarray]:
        starts, lengths = [], []
        pos = 0
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    starts.append(pos)
                    lengths.append(len(line))
                pos += len(line)
        return np.asarray(starts, dtype=np.uint64), np.asarray(lengths, dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.starts)

    def file_of(self, i: int) -> int:
        return int(np.searchsorted(self.file_ends, i, side="right"))

    def line_number(self, i: int) -> int:
        """The 1-based line number of line i in its file (for error messages: rescans it)."""
        f = self.file_of(i)
        target = int(self.starts[i])
        with open(self.paths[f], "rb") as fh:
            return fh.read(target).count(b"\n") + 1

    def line(self, i: int) -> tuple[int, bytes]:
        """(file number, the bytes of line i)."""
        f = self.file_of(i)
        fd = self._fds.get(f)
        if fd is None:
            if len(self._fds) >= 64:  # a corpus of many files: keep few descriptors open
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[f] = os.open(self.paths[f], os.O_RDONLY)
        return f, os.pread(fd, int(self.lengths[i]), int(self.starts[i]))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def sizes(self) -> list[int]:
        """Bytes of each file."""
        return [Path(p).stat().st_size for p in self.paths]


def buffered(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer: fill `size` items, then emit a random one and put the next in its
    place; the rest in random order at the end. Prefix-stable: the first k outputs depend only
    on the first k + size inputs."""
    buf = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        buf[j], x = x, buf[j]
        yield x
    for j in rng.permutation(len(buf)):
        yield buf[int(j)]


def interleaved(streams: list[Iterable], rng: np.random.Generator) -> Iterator:
    """The items of several streams, the next from a seeded random stream still open."""
    its = [iter(s) for s in streams]
    while its:
        k = int(rng.integers(len(its)))
        try:
            yield next(its[k])
        except StopIteration:
            its.pop(k)
