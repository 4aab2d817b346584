"""The training loop shared by pre-training (mini), continual pre-training (CT) and SFT.

Read top to bottom: where the run starts (a previous CT budget's state, or this job's own
checkpoint), the data (token shards through memory maps), the schedule, then the loop: each step
takes its token range of the position-indexed stream, gives each process every world_size-th
sample, normalises the loss by the step's target tokens over all processes, and steps the
optimizer. Checkpoints every `checkpoint_every` steps, and on SIGTERM/SIGUSR1 (SLURM's warning
before the time limit, or preemption) at the next step boundary, after which the job exits with
PREEMPTED_EXIT so that a re-run continues from there. At the end: a CT budget's state for the next
budget, the Hugging Face folder in `save_dtype`, then `train_summary.json`, written last.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path

# Before torch starts OpenMP: threads that sleep when idle instead of spinning. Spinning threads
# make a job 10x slower when the cores are shared with other jobs (measured here: 0.34 s/step
# with 1 thread, 4.1 s with 2 spinning, 0.53 s with 2 passive, on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lrmerge import fsutil  # noqa: E402
from lrmerge.data.shards import TokenShards  # noqa: E402
from lrmerge.train import state  # noqa: E402
from lrmerge.train.backend import all_max, all_sum, barrier, device_of, make_backend, world  # noqa: E402
from lrmerge.train.model import (  # noqa: E402
    flops_per_token,
    load_model,
    peak_flops,
    prepare_for_training,
    saved_weights,
)
from lrmerge.train.schedule import make_schedule  # noqa: E402
from lrmerge.train.stream import Blocks, Mix, Packed, data_pad_id  # noqa: E402

STAGES = {"pretrain": "pretrain", "ct": "continual_pretrain", "sft": "sft"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_DIR = "checkpoint"
STATE_DIR = "trainer_state"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: saved, re-run to continue


class Preempted(Exception):
    """A stop signal arrived; the job saved a checkpoint and must be re-run to finish."""


class StopSignals:
    """Remembers SIGTERM / SIGUSR1 instead of dying, so the loop can save at a step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._note)
        return self

    def _note(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


ATTEMPTS_FILE = "train_attempts.jsonl"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _record_attempt(out: Path, event: dict, fresh: bool) -> None:
    """One line per start and stop of this job, kept beside its checkpoint: the log is replaced
    on every attempt, this record is not (it restarts with a run that starts afresh)."""
    with open(out / ATTEMPTS_FILE, "w" if fresh else "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_attempts(out: Path) -> list[dict]:
    path = out / ATTEMPTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def log_line(*args) -> None:
    """A log line written through at once: a job's log is a file, and one tailed for days."""
    print(*args, flush=True)


def _fingerprint(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _previous_budget(stage: str, init: str | None, lang: str | None, tokens) -> dict | None:
    """The summary of the CT budget this job continues, after checking the chain is sound."""
    if stage != "ct" or init is None or not (Path(init) / SUMMARY_FILE).exists():
        return None
    prev = json.loads((Path(init) / SUMMARY_FILE).read_text())
    if prev.get("stage") != "ct":
        return None
    if prev.get("lang") != lang:
        raise ValueError(f"--init {init} is a CT run of {prev.get('lang')!r}, not {lang!r}")
    if int(prev["tokens_seen"]) >= int(tokens):
        raise ValueError(f"--init {init} has already seen {prev['tokens_seen']} tokens; "
                         f"--tokens {tokens} must be larger")
    if not state.exists(Path(init) / STATE_DIR):
        raise FileNotFoundError(
            f"{Path(init) / STATE_DIR} missing: a CT budget continues the previous budget's "
            "optimizer and schedule, and that state was not kept or was deleted once consumed "
            "(continual_pretrain.keep_optimizer: next); re-run the previous budget, or set "
            "keep_optimizer: all")
    return prev


def _open_data(path: str, tokenizer, model, what: str) -> TokenShards:
    from lrmerge.data.tokenize import tokenizer_identity

    shards = TokenShards(path)
    mine = tokenizer_identity(tokenizer)["xxh3_128"]
    if shards.tokenizer_hash != mine:
        raise ValueError(f"{what} {path} was tokenized by {shards.manifest['tokenizer']['name']} "
                         f"(hash {shards.tokenizer_hash}), not by this model's tokenizer "
                         f"({mine}); prepare the data with the training model's tokenizer")
    rows = model.get_input_embeddings().weight.shape[0]
    if shards.manifest["tokenizer"]["vocab_size"] > rows:
        raise ValueError(f"{what} {path}: vocabulary of {shards.manifest['tokenizer']['vocab_size']}"
                         f" tokens, the model has {rows} embedding rows")
    return shards


def _batch(rows, pad_id: int):
    """Pieces (sample, lo, hi) as one batch. Pieces cut at a budget's edge are shorter: they are
    padded at the end (causal attention: padding changes nothing before it) with tokens that are
    never targets, so that every process runs one forward and backward per micro-batch, as
    DeepSpeed's per-backward collectives need."""
    n = max(hi - lo for _, lo, hi in rows)
    x = torch.full((len(rows), n), pad_id, dtype=torch.long)
    k = torch.zeros((len(rows), n), dtype=torch.bool)
    has_pos = rows[0][0][2] is not None
    pos = torch.zeros((len(rows), n), dtype=torch.long) if has_pos else None
    for r, ((ids, keep, p), lo, hi) in enumerate(rows):
        x[r, :hi - lo] = torch.from_numpy(ids[lo:hi])
        k[r, :hi - lo] = torch.from_numpy(keep[lo:hi])
        if has_pos:
            pos[r, :hi - lo] = torch.from_numpy(p[lo:hi])
            pos[r, hi - lo:] = torch.arange(n - (hi - lo))
    return x, k, pos


def _peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # KB on Linux


def _disk_gb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9, 6)


def train(*, stage: str, cfg: dict, out: str, data: str, english: str | None = None,
          init: str | None = None, tokens: int | None = None, lang: str | None = None,
          model=None, tokenizer=None, threads: int | None = None, log=log_line) -> dict | None:
    """Run one training job; return its summary (process 0; also OUT/train_summary.json).

    stage: pretrain | ct | sft. `data` is a token folder (CT: the language's; SFT: the SFT
    data; pretrain: English), `english` the English token folder mixed into CT at
    continual_pretrain.english_ratio. `init` is a model folder or hub id (CT: the base, or the
    previous budget's folder); pretrain passes the built `model` and `tokenizer` instead."""
    from transformers import AutoTokenizer

    t_start = time.time()
    tc = cfg[STAGES[stage]]
    seed = cfg["seed"]
    if threads:  # the job's threads, shared by the processes torchrun starts on this node
        torch.set_num_threads(max(1, int(threads) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    device = device_of(tc["device"])
    rank, world_size = world()
    if rank != 0:  # one log per job; errors still raise in every process
        def log(*args, **kwargs):
            pass
    job = os.environ.get("SLURM_JOB_ID")
    log(f"=== {stage}{f' {lang}' if lang else ''}{f' {tokens} tokens' if tokens else ''}: "
        f"started {_now()}" + (f", SLURM job {job}" if job else ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / SUMMARY_FILE).unlink(missing_ok=True)  # never an old summary beside new weights

    # --- where this run starts ---------------------------------------------------------------
    chain = _previous_budget(stage, init, lang, tokens)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(init)
    model = prepare_for_training(model or load_model(init, tc["attention"]), tc)

    # --- data: token shards, position-indexed ------------------------------------------------
    seq_len = tc["seq_len"]
    shards = _open_data(data, tokenizer, model, "--data")
    pad_id = data_pad_id(shards)  # the data stage's choice (data.pad), from its manifest
    allow = shards.manifest.get("allow_repeat", False)
    if stage == "sft":
        source = Packed(shards, seq_len, tc["loss_on"], pad_id, seed, allow)
    else:
        source = Blocks(shards, seq_len, lang or "en", seed, allow)
    ratio = tc["english_ratio"] if stage == "ct" else 0.0
    english_src = None
    if ratio > 0:
        if english is None:
            raise ValueError(f"continual_pretrain.english_ratio is {ratio} but no English token "
                             "folder was given (--english)")
        en = _open_data(english, tokenizer, model, "--english")
        data_pad_id(shards, en)  # one stream: both folders frame their documents alike
        english_src = Blocks(en, seq_len, "en", seed, en.manifest.get("allow_repeat", False))
    stream = Mix(source, english_src, ratio)

    budgets = cfg["languages"][lang]["budgets"] if stage == "ct" else []
    sched = make_schedule(stage, tc, tokens, budgets)
    backend = make_backend(model, tc, device)

    # --- resume: this job's own checkpoint, else the previous budget's state -----------------
    data_id = [shards.manifest["shards"], english_src and english_src.shards.manifest["shards"]]
    fingerprint = _fingerprint({"stage": stage, "init": str(init), "lang": lang, "tc": tc,
                                "tokens": tokens, "seed": seed, "data": data_id})
    ckpt = out / CHECKPOINT_DIR
    step, seen, resumed_at = 0, 0, None
    if state.exists(ckpt) and state.read_meta(ckpt).get("fingerprint") == fingerprint:
        meta = state.load(backend, ckpt)
        step, seen, resumed_at = meta["step"], meta["tokens_seen"], meta["step"]
        log(f"resuming own checkpoint at step {step}, {seen} tokens")
    else:
        if state.exists(ckpt):
            log(f"ignoring {ckpt}: written by a different configuration or data")
            barrier()
            if rank == 0:
                state.remove(ckpt)
        if chain is not None:
            meta = state.load(backend, Path(init) / STATE_DIR)
            step, seen = meta["step"], meta["tokens_seen"]
            log(f"continuing {init} at step {step}, {seen} tokens")
    start_step, start_seen = step, seen
    if rank == 0:  # a fresh run starts the record; a resumed one adds to it
        _record_attempt(out, {"event": "start", "time": _now(), "step": step, "tokens": seen,
                              "slurm_job": job}, fresh=resumed_at is None)

    fpt = flops_per_token(backend.module(), seq_len)
    peak = peak_flops(tc, device)
    micro = tc["micro_batch_size"]
    every, log_every = tc["checkpoint_every"], tc["log_every"]
    history: list[dict] = []
    step_loss, targets_this_run = None, 0

    def save_checkpoint():
        state.save(backend, ckpt, {"fingerprint": fingerprint, "step": step,
                                   "tokens_seen": seen})

    # --- the loop ----------------------------------------------------------------------------
    t_loop = time.time()
    with StopSignals() as stop:
        while seen < sched.total_tokens:
            lr = sched.lr_at(step)
            end = sched.step_end(seen)
            # The step's token range cut at sample edges: pieces (sample, start, stop).
            pieces = [(b, max(seen, b * seq_len) - b * seq_len,
                       min(end, (b + 1) * seq_len) - b * seq_len)
                      for b in range(seen // seq_len, (end - 1) // seq_len + 1)]
            mine = [(stream.sample(b), lo, hi) for b, lo, hi in pieces[rank::world_size]]
            # Targets of the whole step (all processes): the step's loss is their mean.
            n_local = sum(int(keep[lo + 1:hi].sum()) for (_, keep, _), lo, hi in mine)
            n_pred = max(1.0, all_sum(n_local, device))
            # Every process runs the same number of micro-batches (DeepSpeed's collectives must
            # match); one whose share ran out runs a zero-weight batch.
            n_micro = math.ceil(math.ceil(len(pieces) / world_size) / micro)
            backend.set_lr(lr)
            step_loss = 0.0
            for m in range(n_micro):
                sel = mine[m * micro:(m + 1) * micro]
                weight = 1.0 if sel else 0.0
                rows = sel or [(stream.sample(pieces[0][0]), pieces[0][1], pieces[0][2])]
                x, k, pos = (None if t is None else t.to(device) for t in _batch(rows, pad_id))
                logits = backend.forward(x, pos)
                labels = x[:, 1:].masked_fill(~k[:, 1:], -100)
                # Summed over tokens / targets of the whole step: accumulating the micro-batches
                # and summing over processes gives the step's mean token loss.
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                       labels.reshape(-1), ignore_index=-100,
                                       reduction="sum") * (weight / n_pred)
                backend.backward(loss, m == n_micro - 1)
                step_loss += loss.item()
            backend.step()
            step_loss = all_sum(step_loss, device)
            step += 1
            seen = end
            targets_this_run += int(n_pred)
            if step % log_every == 0 or seen >= sched.total_tokens:
                dt = time.time() - t_loop
                tps = (seen - start_seen) / max(dt, 1e-9)
                mfu = tps * fpt / (peak * world_size) if peak else None
                history.append({"step": step, "tokens": seen, "lr": lr, "loss": step_loss})
                log(f"step {step}/{sched.total_steps} tokens {seen} lr {lr:.3g} "
                    f"loss {step_loss:.4f} tok/s {tps:.0f}"
                    + (f" mfu {mfu:.3f}" if mfu is not None else ""))
            if seen < sched.total_tokens:
                if all_max(stop.received is not None, device):
                    save_checkpoint()
                    if rank == 0:
                        name = signal.Signals(stop.received).name if stop.received else "peer"
                        _record_attempt(out, {"event": "stop", "time": _now(), "step": step,
                                              "tokens": seen, "signal": name}, fresh=False)
                    raise Preempted(f"stop signal: saved {ckpt} at step {step} ({seen} tokens); "
                                    "re-run the job to continue from there")
                if every and step % every == 0:
                    save_checkpoint()
    loop_s = time.time() - t_loop

    # --- final save: the next budget's state (CT), HF folder, then the summary last ----------
    save_dtype = tc["save_dtype"]
    keep_state = stage == "ct" and (tc["keep_optimizer"] == "all" or int(tokens) < max(budgets))
    if keep_state:
        state.save(backend, out / STATE_DIR, {"step": step, "tokens_seen": seen,
                                              "fingerprint": fingerprint})
    elif rank == 0:
        state.remove(out / STATE_DIR)
    summary = None
    if rank == 0:
        module = backend.module()
        module.config.use_cache = True
        weights = saved_weights(module, DTYPES[save_dtype])
        module.save_pretrained(out, state_dict=weights, safe_serialization=True)
        conf = json.loads((out / "config.json").read_text())
        conf["dtype"] = save_dtype
        conf.pop("torch_dtype", None)
        fsutil.write_json(out / "config.json", conf)
        tokenizer.save_pretrained(out)
        shutil.rmtree(ckpt, ignore_errors=True)
        tokens_run = seen - start_seen
        tps = tokens_run / max(loop_s, 1e-9)
        summary = {
            "stage": stage,
            "lang": lang,
            "init": None if init is None else str(init),
            "resumed_from": str(init) if chain is not None else None,
            "resumed_own_checkpoint_at_step": resumed_at,
            "attempts": _read_attempts(out),
            "tokens_seen": seen,
            "tokens_this_run": seen - (int(chain["tokens_seen"]) if chain else 0),
            "steps": step,
            "steps_this_run": step - start_step,
            "target_tokens_this_job": targets_this_run,
            "tokens_per_step": sched.tokens_per_step,
            "seq_len": seq_len,
            "english_ratio": ratio,
            "lr_schedule": {"kind": "cosine", "lr": sched.lr, "min_lr": sched.min_lr,
                            "warmup_steps": sched.warmup_steps,
                            "decay_steps": sched.decay_steps, "lr_last": sched.lr_at(step - 1)},
            "final_loss": step_loss if step_loss is not None else (chain or {}).get("final_loss"),
            "loss_history": history,
            "data": stream.usage(math.ceil(seen / seq_len)),
            "save_dtype": save_dtype,
            "state_kept": keep_state,
            "backend": backend.kind,
            "device": str(device),
            "world_size": world_size,
            "threads": torch.get_num_threads(),
            "wall_time_s": round(time.time() - t_start, 2),
            "train_time_s": round(loop_s, 2),
            "tokens_per_s": round(tps, 1),
            "flops_per_token": fpt,
            "peak_tflops": peak / 1e12 if peak else None,
            "mfu": round(tps * fpt / (peak * world_size), 6) if peak else None,
            "peak_mem_gb": _peak_mem_gb(device),
            "peak_mem_kind": "device" if device.type == "cuda" else "host (max RSS)",
            "config": tc,
        }
        summary["disk_gb"] = _disk_gb(out)
        fsutil.write_json(out / SUMMARY_FILE, summary)
        if chain is not None and tc["keep_optimizer"] == "next":
            state.remove(Path(init) / STATE_DIR)  # consumed: this budget is complete
        log(f"done: {seen} tokens, {step} steps, loss {summary['final_loss']}, "
            f"{tps:.0f} tokens/s, {summary['wall_time_s']} s")
    barrier()
    return summary
