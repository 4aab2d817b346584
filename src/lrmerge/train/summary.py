"""What a training job reports, beside its weights:

    train_attempts.jsonl   one line per start and stop of the job (kept across re-runs)
    train_summary.json     written last, once the weights are saved: `train_summary` builds it

The summary is the one record later stages read (the next CT budget, the plan's calibration, the
report): where the run started, how far it went, the schedule, the data it took, throughput.

The text a CT run saw (cumulative over the chain, like `tokens_seen`), so that runs with
different tokenizers can be compared by text rather than tokens:

    target_tokens_seen   tokens of tokens_seen taken from the target-language folder
    target_characters    characters (Unicode code points) of those tokens' text: the documents
    target_bytes         as given to the tokenizer; BOS and separator tokens have none, and the
                         text of a repeated corpus counts once per pass. Exact for whole
                         documents; a document the run (or, past the first pass, a block edge)
                         cuts counts floor(its characters x its text tokens read / its text
                         tokens). null when the token folder was prepared before the data stage
                         counted text (its manifest has no `characters`): nothing is guessed.

Other stages record them as null.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lrmerge import fsutil

if TYPE_CHECKING:
    from lrmerge.train.loop import Data, Job, Progress, Throughput
    from lrmerge.train.schedule import Schedule

SUMMARY_FILE = "train_summary.json"
ATTEMPTS_FILE = "train_attempts.jsonl"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def record_attempt(out: Path, event: dict, fresh: bool) -> None:
    """One line per start and stop of this job, kept beside its checkpoint: the log is replaced
    on every attempt, this record is not (it restarts with a run that starts afresh)."""
    with open(out / ATTEMPTS_FILE, "w" if fresh else "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_attempts(out: Path) -> list[dict]:
    path = out / ATTEMPTS_FILE
    if not path.is_file():
        return []
    return fsutil.read_jsonl(path)


def peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # KB on Linux


def disk_gb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9, 6)


def target_text(job: Job, data: Data, p: Progress) -> dict:
    """{tokens, characters, bytes} the run (all its budgets) took from the target folder (CT;
    other stages: all None). See the module's docstring for what is counted."""
    if job.stage != "ct":
        return {"tokens": None, "characters": None, "bytes": None}
    return data.stream.target_text(p.seen)


def train_summary(job: Job, data: Data, sched: Schedule, backend_kind: str, speed: Throughput,
                  p: Progress, state_kept: bool) -> dict:
    """The summary of a finished job (train_summary.json), from the job, its data, schedule and
    progress; `disk_gb` is the output folder as saved, before the summary itself."""
    tc, chain = job.tc, p.chain
    tps = p.tokens_per_s(p.loop_s)
    peak_mem = peak_mem_gb(job.device)  # before the text count below touches the maps' pages
    text = target_text(job, data, p)
    return {
        "stage": job.stage,
        "lang": job.lang,
        "init": None if job.init is None else str(job.init),
        "resumed_from": str(job.init) if chain is not None else None,
        "resumed_own_checkpoint_at_step": p.resumed_at,
        "attempts": read_attempts(job.out),
        "tokens_seen": p.seen,
        "tokens_this_run": p.seen - (int(chain["tokens_seen"]) if chain else 0),
        "steps": p.step,
        "steps_this_run": p.step - p.start_step,
        "target_tokens_this_job": p.targets,
        "target_tokens_seen": text["tokens"],
        "target_characters": text["characters"],
        "target_bytes": text["bytes"],
        "tokens_per_step": sched.tokens_per_step,
        "seq_len": data.seq_len,
        "english_ratio": data.english_ratio,
        "lr_schedule": {"kind": "cosine", "lr": sched.lr, "min_lr": sched.min_lr,
                        "warmup_steps": sched.warmup_steps,
                        "decay_steps": sched.decay_steps, "lr_last": sched.lr_at(p.step - 1)},
        "final_loss": p.loss if p.loss is not None else (chain or {}).get("final_loss"),
        "loss_history": p.history,
        "data": data.stream.usage(math.ceil(p.seen / data.seq_len)),
        "save_dtype": tc["save_dtype"],
        "state_kept": state_kept,
        "backend": backend_kind,
        "device": str(job.device),
        "world_size": job.world_size,
        "threads": torch.get_num_threads(),
        "wall_time_s": round(time.time() - job.started, 2),
        "train_time_s": round(p.loop_s, 2),
        "tokens_per_s": round(tps, 1),
        "flops_per_token": speed.flops_per_token,
        "peak_tflops": speed.peak / 1e12 if speed.peak else None,
        "mfu": round(speed.mfu(tps, job.world_size), 6) if speed.peak else None,
        "peak_mem_gb": peak_mem,
        "peak_mem_kind": "device" if job.device.type == "cuda" else "host (max RSS)",
        "config": tc,
        "disk_gb": disk_gb(job.out),
    }
