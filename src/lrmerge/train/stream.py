"""The data a training job reads: token shards (`lrmerge.data.shards`) cut into position-indexed
samples. Sample i of a run is a pure function of i, so a resumed run (any number of processes)
sees exactly what the uninterrupted run would have seen, and each process reads only its own
samples through the memory maps.

A sample is (ids, keep, pos): token ids of one sequence, which tokens count as prediction
targets, and position ids (None: 0..n-1). CT packs documents back to back (the data stage's
separator between them, `data.document_separator`) into blocks of seq_len, as pre-training does;
SFT packs whole examples into sequences and restarts the position ids at each example, which
transformers turns into attention kept inside each example.
"""

from __future__ import annotations

import bisect

import numpy as np

from lrmerge.data import budget
from lrmerge.data.order import Permutation
from lrmerge.data.shards import DataShortError, TokenShards


class _Repeating:
    """Index j past the end of n items -> a seeded permutation per pass (only if allowed)."""

    def __init__(self, name: str, n: int, seed: int, allow_repeat: bool, what: str):
        self.name, self.n, self.seed, self.allow, self.what = name, n, seed, allow_repeat, what
        self._perm: dict[int, np.ndarray] = {}

    def index(self, j: int) -> int:
        if j < self.n:
            return j
        if self.n == 0:
            raise DataShortError(f"{self.name}: the data holds less than one {self.what}")
        if not self.allow:
            raise DataShortError(
                f"{self.name}: the run needs {self.what} {j + 1} but the data holds {self.n}; "
                "prepare more data or allow repeating it (allow_repeat)")
        epoch, k = divmod(j, self.n)
        return int(self.order(epoch)[k])

    def order(self, epoch: int) -> np.ndarray:
        """The items in the order pass `epoch` (>= 1) reads them."""
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm[epoch]

    def usage(self, read: int) -> dict:
        """How much of the data the first `read` items of the run take (over all processes)."""
        return {f"{self.what}s": self.n, f"{self.what}s_read": read,
                "passes": round(read / self.n, 4) if self.n else 0.0}


def _marks(shards: TokenShards) -> dict:
    """What frames the documents of a token folder: separator id, BOS id (None: no BOS), pad id."""
    m = shards.manifest
    if "separator" not in m:
        # Written before the data stage recorded its marks: then the tokenizer's EOS (recorded
        # with it) followed each document and padded, and the template decided the BOS.
        eos = m["tokenizer"]["eos_token_id"]
        return {"separator": eos, "bos": "template", "pad": eos}
    return {"separator": m["separator"]["id"],
            "bos": m["bos"]["id"] if m["bos"]["added"] else None, "pad": m["pad"]["id"]}


def data_pad_id(*folders: TokenShards) -> int:
    """The pad id of the token folders one run reads, from their manifests. They must frame
    documents alike (separator, BOS, pad): a stream mixing two framings would teach both."""
    first = _marks(folders[0])
    for other in folders[1:]:
        if _marks(other) != first:
            raise ValueError(
                f"{other.folder} frames documents as {_marks(other)}, but {folders[0].folder} as "
                f"{first}; prepare both with the same data.document_separator, data.add_bos and "
                "data.pad")
    return int(first["pad"])


class Blocks:
    """A token folder as blocks of seq_len tokens (CT, pre-training); all tokens are targets.

    `segments` (block counts, increasing: where each CT budget of the run ends in this folder's
    blocks) make the first pass read each budget's increment in a seeded order: blocks
    [s_k, s_k+1) in a permutation of their own (`lrmerge.data.order.Permutation`), so that
    neighbouring blocks (one long document, one region of the corpus) are spread over the
    increment instead of filling the same steps. The blocks of a budget are still exactly the
    folder's first s_k blocks -- a prefix of the data stage's seeded sample -- so a larger
    budget added later leaves the smaller ones' data as it was, and a chain reads no block
    twice. Blocks past the last segment are read in order."""

    def __init__(self, shards: TokenShards, seq_len: int, name: str, seed: int,
                 allow_repeat: bool, segments: list[int] | None = None):
        self.shards, self.seq_len, self.name, self.seed = shards, seq_len, name, seed
        self.rep = _Repeating(name, shards.tokens // seq_len, seed, allow_repeat, "block")
        n = self.rep.n
        bounds = sorted({min(int(b), n) for b in (segments or []) if b > 0})
        self.bounds = [0, *bounds]  # segment k = blocks [bounds[k], bounds[k + 1])
        self._perms: dict[int, Permutation] = {}

    def _segment(self, j: int) -> int | None:
        """The segment of first-pass block j (None: past the last segment)."""
        k = bisect.bisect_right(self.bounds, j) - 1
        return k if k < len(self.bounds) - 1 else None

    def _perm(self, k: int) -> Permutation:
        if k not in self._perms:
            lo, hi = self.bounds[k], self.bounds[k + 1]
            self._perms[k] = Permutation(hi - lo, "blocks", self.seed, self.name, lo, hi)
        return self._perms[k]

    def block(self, j: int) -> int:
        """The folder block that sample j reads."""
        if j >= self.rep.n:
            return self.rep.index(j)
        k = self._segment(j)
        return j if k is None else self.bounds[k] + self._perm(k)[j - self.bounds[k]]

    def sample(self, j: int):
        s = self.block(j) * self.seq_len
        ids = self.shards.slice(s, s + self.seq_len)
        return ids, np.ones(len(ids), dtype=bool), None

    def usage(self, read: int) -> dict:
        return {"folder": str(self.shards.folder), **self.rep.usage(read),
                "segments": self.bounds[1:]}

    def _blocks_text(self, blocks: np.ndarray, first_from: int = 0) -> np.ndarray:
        """Text of whole blocks (the first one from token `first_from` of it on)."""
        if not len(blocks):
            return np.zeros(2, dtype=np.int64)
        L = self.seq_len
        starts = blocks.astype(np.int64) * L
        starts[0] += first_from
        edges = self.shards.text_before(np.concatenate([starts, blocks.astype(np.int64) * L
                                                        + L]))
        return (edges[len(blocks):] - edges[:len(blocks)]).sum(axis=0)

    def _first_pass_text(self, read: int, extra: int) -> np.ndarray:
        """Text of first-pass blocks [0, read) plus `extra` tokens of block `read`."""
        L = self.seq_len
        k = self._segment(read) if read < self.rep.n else None
        if k is None:  # whole segments, then blocks in order: one stretch of the stream
            return self.shards.text_before([read * L + extra])[0]
        lo, hi = self.bounds[k], self.bounds[k + 1]
        before = self.shards.text_before([lo * L, hi * L])
        inside, m, perm = read - lo, hi - lo, self._perm(k)
        if 2 * inside < m:  # the blocks read so far of this segment
            got = self._blocks_text(lo + perm.take(np.arange(inside)))
            if extra:
                b = lo + perm[inside]
                got += self.shards.text_before([b * L + extra])[0] - \
                    self.shards.text_before([b * L])[0]
            return before[0] + got
        # most of the segment: its whole text less the blocks not (yet wholly) read
        unread = self._blocks_text(lo + perm.take(np.arange(inside, m)), first_from=extra)
        return before[1] - unread

    def text(self, read: int, extra: int = 0) -> np.ndarray | None:
        """Characters and UTF-8 bytes (int64 pair) of the text in the first `read` blocks this
        source gives plus the first `extra` tokens of the next; None when the token folder has
        no text counts (prepared before they were recorded). Exact at document edges; a
        document cut by a block edge or by the end is prorated over its text tokens
        (`TokenShards.text_before`). Repeated passes read the blocks in their seeded order."""
        if self.shards.text is None:
            return None
        L, n = self.seq_len, self.rep.n
        if not 0 <= extra <= L:
            raise ValueError(f"{self.name}: {extra} tokens of a block of {L}")
        total = np.zeros(2, dtype=np.int64)
        if n == 0:
            return total
        passes, k = divmod(read, n)
        if passes == 0:
            return self._first_pass_text(k, extra)
        total += passes * self.shards.text_before([n * L])[0]
        blocks = self.rep.order(passes)[:k + (1 if extra else 0)].astype(np.int64) * L
        stops = blocks + L
        if extra:
            stops[-1] = blocks[-1] + extra
        edges = self.shards.text_before(np.concatenate([blocks, stops]))
        return total + (edges[len(blocks):] - edges[:len(blocks)]).sum(axis=0)


class Packed:
    """SFT examples packed whole, in order, into sequences of seq_len (`budget.pack`), padded
    with `pad_id` (`data_pad_id`), never a target. Targets: every token but each example's first
    (it would be predicted across the boundary), or with loss_on "response" only the response and
    the separator."""

    def __init__(self, shards: TokenShards, seq_len: int, loss_on: str, pad_id: int, seed: int,
                 allow_repeat: bool):
        if shards.prompts is None:
            raise ValueError(f"{shards.folder}: not SFT data (no prompt lengths)")
        self.shards, self.seq_len, self.loss_on, self.pad = shards, seq_len, loss_on, pad_id
        ends = np.asarray(shards.doc_ends, dtype=np.int64)
        self.starts = np.concatenate([[0], ends[:-1]])
        self.lengths = ends - self.starts
        self.seqs = budget.pack(self.lengths, seq_len)
        self.rep = _Repeating("sft", len(self.seqs) - 1, seed, allow_repeat, "sequence")

    def sample(self, j: int):
        k = self.rep.index(j)
        S = self.seq_len
        ids = np.full(S, self.pad, dtype=np.int64)
        keep = np.zeros(S, dtype=bool)
        pos = np.zeros(S, dtype=np.int64)
        at = 0
        for e in range(int(self.seqs[k]), int(self.seqs[k + 1])):
            n = min(int(self.lengths[e]), S - at)  # an example longer than seq_len is cut
            s = int(self.starts[e])
            ids[at:at + n] = self.shards.slice(s, s + n)
            first = int(self.shards.prompts[e]) if self.loss_on == "response" else 1
            keep[at + min(first, n):at + n] = True
            pos[at:at + n] = np.arange(n)
            at += n
        pos[at:] = np.arange(S - at)  # padding: a segment of its own
        return ids, keep, pos

    def usage(self, read: int) -> dict:
        return {"folder": str(self.shards.folder), **self.rep.usage(read)}


class Mix:
    """CT: sample i -> target or English. English takes the samples where floor(i * r) steps up,
    so every prefix of the run holds round-down(r * i) English samples: the ratio is exact at
    every step (`lrmerge.data.budget.mix_counts`)."""

    def __init__(self, target, english=None, english_ratio: float = 0.0):
        self.target, self.english = target, english
        self.r = english_ratio if english is not None else 0.0

    def counts(self, i: int) -> tuple[int, int]:
        return budget.mix_counts(i, self.r)

    def sample(self, i: int):
        t_before, e_before = self.counts(i)
        if self.english is not None and self.counts(i + 1)[1] > e_before:
            return self.english.sample(e_before)
        return self.target.sample(t_before)

    def target_text(self, tokens: int) -> dict:
        """What the first `tokens` tokens of the run (all its budgets so far; a budget that is
        not a whole number of blocks reads the start of its last block) took from the target
        folder: its tokens and the characters and UTF-8 bytes of their text (None: the folder
        has no text counts). Blocks sources only (CT, pre-training)."""
        L = self.target.seq_len
        full, extra = divmod(int(tokens), L)
        t, _ = self.counts(full)
        if extra and self.english is not None and self.counts(full + 1)[1] > self.counts(full)[1]:
            extra = 0  # the block cut by the end is English
        text = self.target.text(t, extra)
        return {"tokens": t * L + extra,
                "characters": None if text is None else int(text[0]),
                "bytes": None if text is None else int(text[1])}

    def usage(self, n_samples: int) -> dict:
        """Data taken by the first n_samples samples of the run (all its budgets so far)."""
        t, e = self.counts(n_samples)
        return {"target": self.target.usage(t),
                "english": self.english.usage(e) if self.english is not None else None}
