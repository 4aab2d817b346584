"""`evaluate.limit`: a seeded random sample of a task's test items, never its first N.

Benchmark files are often grouped (SIB-200's test.tsv by category), so the first N items can be a
single class. Classification tasks are sampled per label: each label gets its proportional share
of the limit (largest remainder, ties to the label first in sorted order), and where the limit is
at least the number of labels every label keeps an item, taken from the label with the largest
share. Other tasks are a plain seeded sample. The chosen items keep the file's order.
"""

from __future__ import annotations

import random

import xxhash


def allocate(counts: dict[str, int], limit: int) -> dict[str, int]:
    """Items per label: proportional to `counts`, summing to min(limit, total)."""
    total = sum(counts.values())
    limit = min(limit, total)
    labels = sorted(counts)
    quota = {lab: limit * counts[lab] / total for lab in labels}
    share = {lab: int(quota[lab]) for lab in labels}
    by_remainder = sorted(labels, key=lambda lab: (-(quota[lab] - share[lab]), labels.index(lab)))
    for lab in by_remainder[: limit - sum(share.values())]:
        share[lab] += 1
    if limit >= len(labels):  # every label present keeps at least one item
        for lab in labels:
            if share[lab] == 0:
                donor = max(labels, key=lambda x: (share[x], -labels.index(x)))
                share[donor] -= 1
                share[lab] = 1
    return share


def sample_indices(labels: list[str] | None, n: int, limit: int, key: str) -> list[int]:
    """Sorted indices of the chosen items among `n`; `labels` (one per item) stratifies the
    sample. `key` seeds it (the seed and the task, so tasks draw independently)."""
    rng = random.Random(f"limit:{key}")
    if limit >= n:
        return list(range(n))
    if labels is None:
        return sorted(rng.sample(range(n), limit))
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    share = allocate({lab: len(ix) for lab, ix in by_label.items()}, limit)
    chosen = []
    for lab in sorted(by_label):
        chosen += rng.sample(by_label[lab], share[lab])
    return sorted(chosen)


def sample_hash(indices: list[int]) -> str:
    """xxh3_128 of the sorted indices, comma-separated: one token to compare two runs' items."""
    return xxhash.xxh3_128(",".join(str(i) for i in sorted(indices)).encode()).hexdigest()


def unsampled(n_items: int | None) -> dict:
    """The record of a task run on all its items (n_items: None where lm-eval holds them)."""
    return {"limit": None, "limit_seed": None, "n_items_full": n_items, "sample_hash": None,
            "sample_indices": None}


def sample(rows: list[dict], limit: int | None, seed: int | None, task: str,
           stratify: bool) -> tuple[list[dict], dict]:
    """(the chosen rows, the record of the choice for tasks.json and the eval file)."""
    record = unsampled(len(rows))
    if limit is None:
        return rows, record
    labels = [str(r["answer"]) for r in rows] if stratify else None
    indices = sample_indices(labels, len(rows), int(limit), f"{seed}:{task}")
    record.update(limit=int(limit), limit_seed=seed, sample_hash=sample_hash(indices),
                  sample_indices=indices)
    return [rows[i] for i in indices], record
