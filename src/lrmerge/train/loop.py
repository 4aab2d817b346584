"""The training loop shared by pre-training (mini), continual pre-training (CT) and SFT.

`train` reads top to bottom: the job (`_start_job`), where the run starts (a previous CT budget,
`_previous_budget`; CT from the base with an extended tokenizer first grows the model's
vocabulary, `_extend_vocabulary`), the data (token shards through memory maps, `_open_stream`),
the schedule, the backend, then resume (`_resume`: this job's own checkpoint, else the previous
budget's state), the loop (`_run_steps`) and the end (`_finish`). Each step (`_step`) takes its
token range of the position-indexed stream, gives each process every world_size-th sample,
normalises the loss by the step's target tokens over all processes, and steps the optimizer. The
first `embedding_warmup_steps` steps train only the input embeddings and the output layer.
Checkpoints every `checkpoint_every` steps, and on SIGTERM/SIGUSR1 (SLURM's warning before the
time limit, or preemption) at the next step boundary, after which the job exits with
PREEMPTED_EXIT so that a re-run continues from there. At the end: a CT budget's state for the next
budget, the Hugging Face folder in `save_dtype`, then `train_summary.json`
(`lrmerge.train.summary`), written last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Before torch starts OpenMP: threads that sleep when idle instead of spinning. Spinning threads
# make a job 10x slower when the cores are shared with other jobs (measured here: 0.34 s/step
# with 1 thread, 4.1 s with 2 spinning, 0.53 s with 2 passive, on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lrmerge import fsutil  # noqa: E402
from lrmerge.data import budget  # noqa: E402
from lrmerge.data.shards import TokenShards  # noqa: E402
from lrmerge.train import state  # noqa: E402
from lrmerge.train.backend import all_max, all_sum, barrier, device_of, make_backend, world  # noqa: E402
from lrmerge.train.model import (  # noqa: E402
    EXTENSION_FILE,
    extend_embeddings,
    flops_per_token,
    load_model,
    peak_flops,
    prepare_for_training,
    read_extension,
    saved_weights,
    train_only_embeddings,
)
from lrmerge.train.schedule import Schedule, make_schedule  # noqa: E402
from lrmerge.train.stream import Blocks, Mix, Packed, data_pad_id  # noqa: E402
from lrmerge.train.summary import SUMMARY_FILE, now, record_attempt, train_summary  # noqa: E402

STAGES = {"pretrain": "pretrain", "ct": "continual_pretrain", "sft": "sft"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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


def log_line(*args) -> None:
    """A log line written through at once: a job's log is a file, and one tailed for days."""
    print(*args, flush=True)


@dataclass
class Job:
    """One training job as asked, and this process's place in it."""

    stage: str  # pretrain | ct | sft
    cfg: dict
    tc: dict  # the stage's config section
    seed: int
    out: Path
    init: str | None
    tokens: int | None  # CT: the cumulative budget
    lang: str | None
    device: torch.device
    rank: int
    world_size: int
    log: Callable  # process 0's; the others' log nothing
    slurm_job: str | None
    started: float  # time.time() at the start
    vocab_extension: dict | None = None  # the summary's record (_extend_vocabulary)

    @property
    def budgets(self) -> list:
        """The language's CT budgets (the schedule's cuts; its cosine spans the largest)."""
        return self.cfg["languages"][self.lang]["budgets"] if self.stage == "ct" else []

    @property
    def embedding_warmup_steps(self) -> int:
        """The first steps (counted over the whole CT chain) train only the input embeddings
        and the output layer (continual_pretrain.embedding_warmup_steps; 0 for a config dict
        built without the schema's defaults)."""
        return int(self.tc.get("embedding_warmup_steps", 0))


@dataclass
class Data:
    """The run's samples: the position-indexed stream, and what frames it."""

    stream: Mix
    seq_len: int
    pad_id: int
    english_ratio: float
    data_identity: list  # what the run reads of its token folders (English: None), in the
    # fingerprint (`TokenShards.identity`)


@dataclass(frozen=True)
class Throughput:
    """FLOPs per token of the model and the peak FLOPS of one device (None: unknown)."""

    flops_per_token: int
    peak: float | None

    def mfu(self, tokens_per_s: float, world_size: int) -> float | None:
        return tokens_per_s * self.flops_per_token / (self.peak * world_size) if self.peak else None


@dataclass
class Progress:
    """Where the run stands, from where it started (`_resume`) to where it ends."""

    chain: dict | None  # the summary of the CT budget this run continues
    step: int = 0
    seen: int = 0  # tokens, counted from the chain's first budget
    resumed_at: int | None = None  # the step of this job's own checkpoint it resumed
    start_step: int = 0
    start_seen: int = 0
    targets: int = 0  # target tokens of this job's steps, over all processes
    loss: float | None = None  # the last step's mean token loss
    history: list[dict] = field(default_factory=list)
    loop_s: float = 0.0

    def tokens_per_s(self, seconds: float) -> float:
        return (self.seen - self.start_seen) / max(seconds, 1e-9)


def train(*, stage: str, cfg: dict, out: str, data: str, english: str | None = None,
          init: str | None = None, tokens: int | None = None, lang: str | None = None,
          model=None, tokenizer=None, tokenizer_dir: str | None = None,
          threads: int | None = None, log=log_line) -> dict | None:
    """Run one training job; return its summary (process 0; also OUT/train_summary.json).

    stage: pretrain | ct | sft. `data` is a token folder (CT: the language's; SFT: the SFT
    data; pretrain: English), `english` the English token folder mixed into CT at
    continual_pretrain.english_ratio. `init` is a model folder or hub id (CT: the base, or the
    previous budget's folder); pretrain passes the built `model` and `tokenizer` instead.
    `tokenizer_dir` is the tokenizer folder when it is not `init`'s: an extended one (with
    vocab_extension.json) makes CT from the base grow the model's vocabulary first."""
    from transformers import AutoTokenizer

    job = _start_job(stage, cfg, out, init, tokens, lang, threads, log)

    # --- where this run starts: the CT budget it continues, the model (its vocabulary grown
    # to an extended tokenizer's) -----------------------------------------------------------------
    chain = _previous_budget(job)
    tokenizer_dir = tokenizer_dir or init
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(tokenizer_dir)
    model = model or load_model(init, job.tc["attention"])
    job.vocab_extension = _extend_vocabulary(job, model, tokenizer_dir)
    model = prepare_for_training(model, job.tc)

    # --- data, schedule, backend ---------------------------------------------------------------
    samples = _open_stream(job, data, english, tokenizer, model)
    sched = make_schedule(stage, job.tc, tokens, job.budgets)
    backend = make_backend(model, job.tc, job.device)

    # --- resume: this job's own checkpoint, else the previous budget's state -----------------
    fingerprint = _fingerprint(job, samples)
    progress = _resume(job, backend, chain, fingerprint)
    speed = Throughput(flops_per_token(backend.module(), samples.seq_len),
                       peak_flops(job.tc, job.device))

    # --- the loop, then the next budget's state (CT), HF folder and the summary last ---------
    _run_steps(job, backend, samples, sched, speed, progress, fingerprint)
    return _finish(job, backend, tokenizer, samples, sched, speed, progress, fingerprint)


def _start_job(stage: str, cfg: dict, out: str, init: str | None, tokens: int | None,
               lang: str | None, threads: int | None, log: Callable) -> Job:
    """The job's threads, device and process; its first log line; an output folder without an
    old summary (never one beside new weights)."""
    started = time.time()
    tc = cfg[STAGES[stage]]
    seed = cfg["seed"]
    if threads:  # the job's threads, shared by the processes torchrun starts on this node
        torch.set_num_threads(max(1, int(threads) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    device = device_of(tc["device"])
    rank, world_size = world()
    if rank != 0:  # one log per job; errors still raise in every process
        def log(*args, **kwargs):
            pass
    slurm_job = os.environ.get("SLURM_JOB_ID")
    log(f"=== {stage}{f' {lang}' if lang else ''}{f' {tokens} tokens' if tokens else ''}: "
        f"started {now()}" + (f", SLURM job {slurm_job}" if slurm_job else ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / SUMMARY_FILE).unlink(missing_ok=True)
    return Job(stage, cfg, tc, seed, out, init, tokens, lang, device, rank, world_size, log,
               slurm_job, started)


def _previous_budget(job: Job) -> dict | None:
    """The summary of the CT budget this job continues, after checking the chain is sound."""
    init, lang, tokens = job.init, job.lang, job.tokens
    if job.stage != "ct" or init is None or not (Path(init) / SUMMARY_FILE).exists():
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


def _extend_vocabulary(job: Job, model, tokenizer_dir: str | None) -> dict | None:
    """CT with an extended tokenizer (its folder has vocab_extension.json): a model with the
    base vocabulary (CT from the base) gets the new rows, each the mean of its pieces' rows; one
    that has them already (the previous budget's) is left as it is. Returns the summary's
    record, None without an extension. Refuses the embedding warm-up under DeepSpeed first."""
    if job.embedding_warmup_steps and job.tc.get("deepspeed"):
        # ZeRO builds its flat fp32 partitions, gradient hooks and optimizer groups from the
        # parameters at engine creation; freezing them later leaves them in there (updated with
        # zero gradients: weight decay and Adam steps still move them).
        raise ValueError(f"{STAGES[job.stage]}.embedding_warmup_steps "
                         f"({job.embedding_warmup_steps}) is not supported with the deepspeed "
                         "backend; set it to 0 or drop the stage's deepspeed key")
    ext = read_extension(tokenizer_dir) if job.stage == "ct" and tokenizer_dir else None
    if ext is None:
        return None
    path = Path(tokenizer_dir) / EXTENSION_FILE
    rows = model.get_input_embeddings().weight.shape[0]
    if rows == ext["base_vocab_size"] + ext["added"]:
        record = {"added": ext["added"], "initialised": f"before: {job.init} has the rows"}
    else:  # refuses a model that has neither the base's rows nor the extended ones
        record = extend_embeddings(model, ext, str(path))
        job.log(f"vocabulary extended by {record['added']} tokens ({path}): rows "
                f"{record['base_vocab_size']} -> {record['vocab_size']}, each new row the mean "
                f"of its pieces' rows ({record['mean_pieces']} pieces a token)")
    return dict(record, tokenizer=str(tokenizer_dir),
                embedding_warmup_steps=job.embedding_warmup_steps)


def _open_data(path: str, tokenizer, model, what: str) -> TokenShards:
    from lrmerge.data.tokenize import tokenizer_identity

    shards = TokenShards(path)
    mine = tokenizer_identity(tokenizer)["xxh3_128"]
    ext = read_extension(tokenizer.name_or_path) if Path(tokenizer.name_or_path).is_dir() else None
    base = ((ext or {}).get("base_tokenizer") or {}).get("xxh3_128")
    if shards.tokenizer_hash == base:
        # an extended tokenizer keeps the base's ids: English replay and SFT data made with
        # the base are the same text (only not segmented with the new tokens)
        log_line(f"{what} {path}: tokenized by the base of {tokenizer.name_or_path}'s "
                 "extended vocabulary (same ids)")
    elif shards.tokenizer_hash != mine:
        raise ValueError(f"{what} {path} was tokenized by {shards.manifest['tokenizer']['name']} "
                         f"(hash {shards.tokenizer_hash}), not by this model's tokenizer "
                         f"({mine}); prepare the data with the training model's tokenizer")
    rows = model.get_input_embeddings().weight.shape[0]
    if shards.manifest["tokenizer"]["vocab_size"] > rows:
        raise ValueError(f"{what} {path}: vocabulary of {shards.manifest['tokenizer']['vocab_size']}"
                         f" tokens, the model has {rows} embedding rows")
    return shards


def _open_stream(job: Job, data: str, english: str | None, tokenizer, model) -> Data:
    """The token folders as one position-indexed stream: CT blocks (with English mixed in at
    english_ratio) or packed SFT sequences."""
    tc, seq_len, seed = job.tc, job.tc["seq_len"], job.seed
    shards = _open_data(data, tokenizer, model, "--data")
    pad_id = data_pad_id(shards)  # the data stage's choice (data.pad), from its manifest
    allow = shards.manifest.get("allow_repeat", False)
    ratio = tc["english_ratio"] if job.stage == "ct" else 0.0
    # each CT budget's increment read in a seeded order of its own blocks (Blocks)
    target_seg, english_seg = budget.segments(job.budgets, seq_len, ratio)
    if job.stage == "sft":
        source = Packed(shards, seq_len, tc["loss_on"], pad_id, seed, allow)
    else:
        source = Blocks(shards, seq_len, job.lang or "en", seed, allow, target_seg)
    english_src = None
    if ratio > 0:
        if english is None:
            raise ValueError(f"continual_pretrain.english_ratio is {ratio} but no English token "
                             "folder was given (--english)")
        en = _open_data(english, tokenizer, model, "--english")
        data_pad_id(shards, en)  # one stream: both folders frame their documents alike
        english_src = Blocks(en, seq_len, "en", seed, en.manifest.get("allow_repeat", False),
                             english_seg)
    # what the run reads of each folder: a CT chain its blocks up to this budget (a larger
    # budget added later leaves them as they were), anything else all of it
    k = sum(1 for b in job.budgets if b <= (job.tokens or 0))

    def read(src, seg):
        if src is None:
            return None
        if job.stage != "ct" or k == 0 or seg[k - 1] > src.rep.n:
            return src.shards.identity()
        return src.shards.identity(seg[k - 1] * seq_len)

    idents = [read(source, target_seg), read(english_src, english_seg)]
    return Data(Mix(source, english_src, ratio), seq_len, pad_id, ratio, idents)


def _fingerprint(job: Job, data: Data) -> str:
    """What a checkpoint was written by: a checkpoint of another configuration or data is
    ignored."""
    obj = {"stage": job.stage, "init": str(job.init), "lang": job.lang, "tc": job.tc,
           "tokens": job.tokens, "seed": job.seed, "data": data.data_identity}
    if job.vocab_extension is not None:  # not in older fingerprints: their checkpoints stay valid
        obj["vocab_extension"] = job.vocab_extension
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume(job: Job, backend, chain: dict | None, fingerprint: str) -> Progress:
    """Where the steps start: this job's own checkpoint (same fingerprint), else the previous
    CT budget's state, else step 0. Records the start in train_attempts.jsonl."""
    ckpt = job.out / CHECKPOINT_DIR
    p = Progress(chain)
    if state.exists(ckpt) and state.read_meta(ckpt).get("fingerprint") == fingerprint:
        meta = state.load(backend, ckpt)
        p.step, p.seen, p.resumed_at = meta["step"], meta["tokens_seen"], meta["step"]
        job.log(f"resuming own checkpoint at step {p.step}, {p.seen} tokens")
    else:
        if state.exists(ckpt):
            job.log(f"ignoring {ckpt}: written by a different configuration or data")
            barrier()
            if job.rank == 0:
                state.remove(ckpt)
        if chain is not None:
            meta = state.load(backend, Path(job.init) / STATE_DIR)
            p.step, p.seen = meta["step"], meta["tokens_seen"]
            job.log(f"continuing {job.init} at step {p.step}, {p.seen} tokens")
    p.start_step, p.start_seen = p.step, p.seen
    if job.rank == 0:  # a fresh run starts the record; a resumed one adds to it
        record_attempt(job.out, {"event": "start", "time": now(), "step": p.step,
                                 "tokens": p.seen, "slurm_job": job.slurm_job},
                       fresh=p.resumed_at is None)
    return p


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


def _step(job: Job, backend, data: Data, seen: int, end: int, lr: float) -> tuple[float, float]:
    """One optimizer step over the stream's tokens [seen, end): returns the step's mean token
    loss and its number of targets, both over all processes."""
    seq_len, micro, device = data.seq_len, job.tc["micro_batch_size"], job.device
    # The step's token range cut at sample edges: pieces (sample, start, stop).
    pieces = [(b, max(seen, b * seq_len) - b * seq_len, min(end, (b + 1) * seq_len) - b * seq_len)
              for b in range(seen // seq_len, (end - 1) // seq_len + 1)]
    mine = [(data.stream.sample(b), lo, hi) for b, lo, hi in pieces[job.rank::job.world_size]]
    # Targets of the whole step (all processes): the step's loss is their mean.
    n_local = sum(int(keep[lo + 1:hi].sum()) for (_, keep, _), lo, hi in mine)
    n_pred = max(1.0, all_sum(n_local, device))
    # Every process runs the same number of micro-batches (DeepSpeed's collectives must
    # match); one whose share ran out runs a zero-weight batch.
    n_micro = math.ceil(math.ceil(len(pieces) / job.world_size) / micro)
    backend.set_lr(lr)
    step_loss = 0.0
    for m in range(n_micro):
        sel = mine[m * micro:(m + 1) * micro]
        weight = 1.0 if sel else 0.0
        rows = sel or [(data.stream.sample(pieces[0][0]), pieces[0][1], pieces[0][2])]
        x, k, pos = (None if t is None else t.to(device) for t in _batch(rows, data.pad_id))
        logits = backend.forward(x, pos)
        labels = x[:, 1:].masked_fill(~k[:, 1:], -100)
        # Summed over tokens / targets of the whole step: accumulating the micro-batches and
        # summing over processes gives the step's mean token loss.
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                               labels.reshape(-1), ignore_index=-100,
                               reduction="sum") * (weight / n_pred)
        backend.backward(loss, m == n_micro - 1)
        step_loss += loss.item()
    backend.step()
    return all_sum(step_loss, device), n_pred


def _run_steps(job: Job, backend, data: Data, sched: Schedule, speed: Throughput, p: Progress,
               fingerprint: str) -> None:
    """Steps until the budget's tokens are seen: a log line every `log_every` steps (and the
    last), a checkpoint every `checkpoint_every`, and on a stop signal a checkpoint and
    Preempted."""
    every, log_every = job.tc["checkpoint_every"], job.tc["log_every"]
    warmup = job.embedding_warmup_steps
    t_loop = time.time()
    with StopSignals() as stop:
        while p.seen < sched.total_tokens:
            # The phase follows the step, so a job resumed inside the warm-up stays in it.
            in_warmup = p.step < warmup
            if train_only_embeddings(backend.module(), only=in_warmup):
                job.log(f"step {p.step}: training only the embeddings and the output layer "
                        f"until step {warmup}" if in_warmup else
                        f"step {p.step}: embedding warm-up over, training all parameters")
            lr = sched.lr_at(p.step)
            end = sched.step_end(p.seen)
            p.loss, n_pred = _step(job, backend, data, p.seen, end, lr)
            p.step += 1
            p.seen = end
            p.targets += int(n_pred)
            if p.step % log_every == 0 or p.seen >= sched.total_tokens:
                tps = p.tokens_per_s(time.time() - t_loop)
                mfu = speed.mfu(tps, job.world_size)
                p.history.append({"step": p.step, "tokens": p.seen, "lr": lr, "loss": p.loss})
                job.log(f"step {p.step}/{sched.total_steps} tokens {p.seen} lr {lr:.3g} "
                        f"loss {p.loss:.4f} tok/s {tps:.0f}"
                        + (f" mfu {mfu:.3f}" if mfu is not None else ""))
            if p.seen < sched.total_tokens:
                if all_max(stop.received is not None, job.device):
                    _preempt(job, backend, p, fingerprint, stop.received)
                if every and p.step % every == 0:
                    _save_checkpoint(job, backend, p, fingerprint)
    p.loop_s = time.time() - t_loop


def _save_checkpoint(job: Job, backend, p: Progress, fingerprint: str) -> None:
    state.save(backend, job.out / CHECKPOINT_DIR, {"fingerprint": fingerprint, "step": p.step,
                                                   "tokens_seen": p.seen})


def _preempt(job: Job, backend, p: Progress, fingerprint: str, received: int | None):
    """A stop signal (here or in another process): save, record the stop, raise Preempted."""
    _save_checkpoint(job, backend, p, fingerprint)
    if job.rank == 0:
        name = signal.Signals(received).name if received else "peer"
        record_attempt(job.out, {"event": "stop", "time": now(), "step": p.step,
                                 "tokens": p.seen, "signal": name}, fresh=False)
    raise Preempted(f"stop signal: saved {job.out / CHECKPOINT_DIR} at step {p.step} "
                    f"({p.seen} tokens); re-run the job to continue from there")


def _save_hf(module, tokenizer, out: Path, save_dtype: str) -> None:
    """The Hugging Face folder: weights in `save_dtype` (config.json says so), the tokenizer."""
    module.config.use_cache = True
    weights = saved_weights(module, DTYPES[save_dtype])
    module.save_pretrained(out, state_dict=weights, safe_serialization=True)
    conf = json.loads((out / "config.json").read_text())
    conf["dtype"] = save_dtype
    conf.pop("torch_dtype", None)
    fsutil.write_json(out / "config.json", conf)
    tokenizer.save_pretrained(out)


def _finish(job: Job, backend, tokenizer, data: Data, sched: Schedule, speed: Throughput,
            p: Progress, fingerprint: str) -> dict | None:
    """The next CT budget's state (or none), the HF folder, then train_summary.json last; the
    previous budget's state goes once consumed (keep_optimizer: next)."""
    tc, out = job.tc, job.out
    keep_state = job.stage == "ct" and (tc["keep_optimizer"] == "all"
                                        or int(job.tokens) < max(job.budgets))
    if keep_state:
        state.save(backend, out / STATE_DIR, {"step": p.step, "tokens_seen": p.seen,
                                              "fingerprint": fingerprint})
    elif job.rank == 0:
        state.remove(out / STATE_DIR)
    summary = None
    if job.rank == 0:
        _save_hf(backend.module(), tokenizer, out, tc["save_dtype"])
        if job.vocab_extension is not None:  # the folder says its rows (the next budget, merges)
            shutil.copyfile(Path(job.vocab_extension["tokenizer"]) / EXTENSION_FILE,
                            out / EXTENSION_FILE)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        summary = dict(train_summary(job, data, sched, backend.kind, speed, p, keep_state),
                       vocab_extension=job.vocab_extension,
                       embedding_warmup_steps=job.embedding_warmup_steps)
        fsutil.write_json(out / SUMMARY_FILE, summary)
        if p.chain is not None and tc["keep_optimizer"] == "next":
            state.remove(Path(job.init) / STATE_DIR)  # consumed: this budget is complete
        job.log(f"done: {p.seen} tokens, {p.step} steps, loss {summary['final_loss']}, "
                f"{p.tokens_per_s(p.loop_s):.0f} tokens/s, {summary['wall_time_s']} s")
    barrier()
    return summary
