"""A task mixture as pure arithmetic over counts: how many examples each task gives, which
ones, and in what order (`lrmerge.data.sft` reads and writes them).

FLAN 2021's recipe: each task contributes its examples up to a cap (examples-proportional
mixing with a maximum), optionally scaled by a weight. Which examples is a seeded uniform sample
of the task's own, never its first rows. The order is a stratified shuffle: example j of a task
of n examples (in a seeded random order) gets the key (j + u) / n with u uniform in [0, 1), and
all examples are sorted by key. Any prefix of the order, up to a key x, then holds between
floor(x n) and ceil(x n) examples of every task, so its shares are the final ones within one
example per task, while the sequence of tasks stays random (a plain permutation would leave a
small task's share in the first tenth of a run to chance: +-2 standard deviations of a task of
1% in 10,000 examples is +-0.6 percentage points).
"""

from __future__ import annotations

import hashlib

import numpy as np


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator keyed by the seed and names (a task's own stream, stable whatever the other
    tasks are; Python's hash() of a string changes between processes, blake2b does not)."""
    words = [int(seed)]
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        words += np.frombuffer(digest, dtype=np.uint32).tolist()
    return np.random.default_rng(words)


def task_counts(available: np.ndarray, cap: int | None, weights: np.ndarray) -> np.ndarray:
    """Examples each task gives: round(weight x min(available, cap)) (cap None: no cap). A
    weight above 1 can ask for more than a task holds: `draw` then repeats it."""
    base = np.asarray(available, dtype=np.int64)
    if cap is not None:
        base = np.minimum(base, int(cap))
    return np.rint(base * np.asarray(weights, dtype=np.float64)).astype(np.int64)


def draw(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of the n items 0..n-1, in a random order: a uniform sample without replacement when
    k <= n; otherwise every item k // n times (each pass in a fresh order, so a repeat comes
    only after all items), then a sample of the rest."""
    if k <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(int(k), int(n))
    parts = [rng.permutation(n) for _ in range(full)]
    if rest:
        parts.append(rng.choice(n, size=rest, replace=False))
    return np.concatenate(parts).astype(np.int64)


def stratified_order(counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """The mixture's order: (task, j) at each position, j the example's place in its task's
    own random order. Every prefix holds each task within one example of its share."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    task = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    j = (np.arange(total, dtype=np.int64) - np.repeat(starts, counts)).astype(np.int32)
    key = (j + rng.random(total)) / np.repeat(counts, counts)
    order = np.argsort(key, kind="stable")
    del key
    return task[order], j[order]

