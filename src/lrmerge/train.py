"""Train stage: pre-training (mini), continual pre-training (CT) and supervised fine-tuning (SFT).

One loop serves all three, nanoGPT style, top to bottom in `train()`:

1. tokenize with the model folder's tokenizer and pack into fixed-length blocks;
2. a *position-indexed* data stream: block i of the run is a pure function of i (target/English
   slots interleaved at the configured ratio), so a run resumed at step s sees exactly the data
   the uninterrupted run would have seen;
3. AdamW, linear warmup then a single cosine to min_lr over `decay_steps`, gradient accumulation
   of micro-batches up to the configured sequences per step;
4. periodic checkpoints (model, optimizer, step, tokens, RNG) in `OUT/checkpoint/` that a restarted
   job resumes from; at the end a Hugging Face folder in the configured dtype, then
   `train_summary.json`, written last.

A CT budget continues the previous budget's run: `--init` is the previous budget's folder, whose
`trainer_state.pt` carries the fp32 weights, optimizer and step, so budget 1 -> budget 2 equals a
straight run to budget 2 (same schedule, same data, same optimizer moments).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import time
from array import array
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

# Before torch starts OpenMP: threads that sleep when idle instead of spinning. Spinning threads
# make a job 10x slower when the cores are shared with other jobs (measured here: 0.34 s/step
# with 1 thread, 4.1 s with 2 spinning, 0.53 s with 2 passive, on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from lrmerge import fsutil

STAGES = {"pretrain": "pretrain", "ct": "continual_pretrain", "sft": "sft"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_DIR = "checkpoint"


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------
def build_tokenizer(texts: list[str], vocab_size: int, extra_words: list[str] = ()):
    """A byte-level BPE trained on `texts` (English only, so other scripts fall back to bytes,
    as with Llama-2), plus optional whole-word tokens for target words (vocabulary extension:
    new embedding rows that pre-training never updates)."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[eos],
                            show_progress=False)
    if extra_words:
        # Both forms: after a space (inside text) and bare (at the start of a text).
        bpe.add_tokens([AddedToken(" " + w, normalized=False) for w in extra_words]
                       + [AddedToken(w, normalized=False) for w in extra_words])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos,
                                  pad_token=eos, unk_token=None)
    return tok


def build_model(mini: dict, tokenizer, seed: int):
    """A tiny LlamaForCausalLM with sizes from config `mini.model`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = mini.get("model") or {}
    hidden = int(m.get("hidden_size", 128))
    heads = int(m.get("num_attention_heads", 4))
    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(m.get("intermediate_size", 4 * hidden)),
        num_hidden_layers=int(m.get("num_hidden_layers", 4)),
        num_attention_heads=heads,
        num_key_value_heads=int(m.get("num_key_value_heads") or heads),
        max_position_embeddings=int(m.get("max_position_embeddings", 512)),
        tie_word_embeddings=bool(m.get("tie_word_embeddings", False)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(conf)


# --------------------------------------------------------------------------------------------
# Data: packed sources and the position-indexed stream
# --------------------------------------------------------------------------------------------
class Source:
    """Documents tokenized and concatenated (EOS after each), cut into blocks of `seq_len`.

    Tokenizes lazily, only as far as the run needs (`ensure(n_blocks)`), so a large corpus costs
    only its used prefix. Block j of epoch e >= 1 is drawn from a seeded permutation; epoch 0 is
    file order, so block j never depends on how far tokenization has gone."""

    def __init__(self, name: str, rows, tokenizer, seq_len: int, seed: int, mask_prompt=False,
                 join: str = " "):
        # Rows are read as tokenization needs them (a list or any iterator, e.g. a file reader).
        self.name, self.rows, self.tok, self.seq_len = name, iter(rows), tokenizer, seq_len
        self.seed, self.mask_prompt, self.join = seed, mask_prompt, join
        # Compact arrays: 5 bytes a token, where a list of ints costs about 36.
        self.ids = array("i")
        self.loss = array("b")  # per token: does it count in the loss
        self.next_row = 0
        self.exhausted = False

    def _tokenize_more(self, n_rows: int = 512) -> None:
        batch = list(itertools.islice(self.rows, n_rows))
        self.next_row += len(batch)
        if not batch:
            self.exhausted = True
            return
        eos = self.tok.eos_token_id
        if "prompt" in batch[0]:  # instruction data
            prompts = self.tok([r["prompt"] for r in batch])["input_ids"]
            answers = self.tok([self.join + r["response"] for r in batch],
                               add_special_tokens=False)["input_ids"]
            for p, a in zip(prompts, answers, strict=True):
                self.ids.extend(p + a + [eos])
                self.loss.extend([not self.mask_prompt] * len(p) + [True] * (len(a) + 1))
        else:
            for ids in self.tok([r["text"] for r in batch])["input_ids"]:
                self.ids.extend(ids + [eos])
                self.loss.extend([True] * (len(ids) + 1))

    @property
    def n_blocks(self) -> int:
        return len(self.ids) // self.seq_len

    def ensure(self, n: int) -> None:
        while self.n_blocks < n and not self.exhausted:
            self._tokenize_more()
        if self.n_blocks == 0:
            raise ValueError(f"{self.name}: corpus gives less than one block of {self.seq_len} "
                             "tokens")

    def block(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.ensure(j + 1)
        n = self.n_blocks
        if j >= n:  # past the end: repeat the corpus in a fresh seeded order per epoch
            epoch, k = divmod(j, n)
            perm = random.Random(f"{self.seed}:{self.name}:{epoch}").sample(range(n), n)
            j = perm[k]
        s = j * self.seq_len
        return (torch.tensor(self.ids[s:s + self.seq_len].tolist(), dtype=torch.long),
                torch.tensor(self.loss[s:s + self.seq_len].tolist(), dtype=torch.bool))

    def usage(self, used: int) -> dict:
        """How much of the corpus `used` blocks took (passes > 1: the corpus was repeated)."""
        out = {"rows_read": self.next_row, "blocks_used": used}
        if self.exhausted:
            out["passes"] = round(used / max(1, self.n_blocks), 4)
        return out


class Stream:
    """Global block i -> (source, index). English takes the slots where floor(i * r) steps up,
    so every prefix holds round(r * i) English blocks: an exact ratio at every step."""

    def __init__(self, target: Source, english: Source | None = None, english_ratio: float = 0.0):
        self.target, self.english = target, english
        self.r = Fraction(english_ratio).limit_denominator(1000) if english else Fraction(0)

    def counts(self, i: int) -> tuple[int, int]:
        """(target, English) blocks among the first i."""
        e = math.floor(i * self.r)
        return i - e, e

    def block(self, i: int):
        t_before, e_before = self.counts(i)
        if self.english is not None and math.floor((i + 1) * self.r) > e_before:
            return self.english.block(e_before)
        return self.target.block(t_before)

    def prefetch(self, n_blocks: int) -> None:
        t, e = self.counts(n_blocks)
        self.target.ensure(t)
        if self.english is not None and e:
            self.english.ensure(e)


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
def next_cut(seen: int, tokens_per_step: int, cuts: list[int], total: int) -> int:
    """Where the step starting at token `seen` ends: the next multiple of tokens_per_step, or
    an earlier budget edge."""
    end = (seen // tokens_per_step + 1) * tokens_per_step
    return min([end, total] + [c for c in cuts if c > seen])


def count_steps(total: int, tokens_per_step: int, cuts: list[int]) -> int:
    n, seen = 0, 0
    while seen < total:
        seen = next_cut(seen, tokens_per_step, cuts, total)
        n += 1
    return n


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup to `lr`, cosine to `min_lr` at `decay_steps`, then `min_lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_steps:
        return min_lr
    p = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


# --------------------------------------------------------------------------------------------
# Backends: plain torch (CPU / one GPU) and DeepSpeed (torchrun / deepspeed launcher)
# --------------------------------------------------------------------------------------------
def _device(spec: str) -> torch.device:
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def deepspeed_config(tc: dict, world_size: int) -> dict:
    """The DeepSpeed config of a stage section: ZeRO settings from `deepspeed`, batch sizes from
    the section (sequences per step = micro batch x accumulation x world size)."""
    ds = tc.get("deepspeed")
    if isinstance(ds, str):
        with open(ds, encoding="utf-8") as fh:
            ds = json.load(fh)
    ds = dict(ds or {})
    batch, micro = int(tc["batch_size"]), int(tc["micro_batch_size"])
    if batch % (micro * world_size):
        raise ValueError(f"batch_size {batch} is not a multiple of micro_batch_size {micro} x "
                         f"{world_size} processes")
    zero = ds.pop("zero_optimization", None) or {"stage": int(ds.pop("zero_stage", 2))}
    if int(zero.get("stage", 0)) > 2:
        raise ValueError("deepspeed: ZeRO stage 3 is not supported (final weights are saved from "
                         "the unpartitioned module); use stage 0-2")
    conf = {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": batch // (micro * world_size),
        "gradient_clipping": float(tc.get("grad_clip", 1.0)),
        "zero_optimization": zero,
        "bf16": {"enabled": tc.get("precision") == "bf16"},
        "fp16": {"enabled": tc.get("precision") == "fp16"},
        "steps_per_print": 10 ** 9,
    }
    conf.update(ds)
    return conf


class Plain:
    """Single process: the model and a torch AdamW on one device."""

    rank, world_size = 0, 1

    def __init__(self, model, tc: dict, device: torch.device):
        self.model = model.to(device)
        self.device = device
        self.opt = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]),
                                     betas=tuple(tc.get("betas", (0.9, 0.95))),
                                     weight_decay=float(tc.get("weight_decay", 0.1)),
                                     eps=float(tc.get("eps", 1e-8)))
        self.clip = float(tc.get("grad_clip", 1.0))
        prec = tc.get("precision", "fp32")
        if prec == "fp16" and device.type == "cuda":
            raise ValueError("precision fp16 needs loss scaling, which only the DeepSpeed path "
                             "does; use bf16 (or set the stage's deepspeed key)")
        # bf16 autocast on GPU only: on CPU it is slower than fp32 for small models.
        self.autocast = prec == "bf16" and device.type == "cuda"

    def forward(self, ids):
        if self.autocast:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.model(input_ids=ids).logits
        return self.model(input_ids=ids).logits

    def set_lr(self, lr: float):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def backward(self, loss, last: bool):
        loss.backward()

    def step(self):
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state(self) -> dict:
        return {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict()}

    def load(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])

    def module(self):
        return self.model


class DeepSpeed(Plain):
    """DeepSpeed engine under torchrun/deepspeed: ZeRO 0-2, bf16/fp16 from the config.

    Checkpoints are the engine's own sharded format (one folder), and optimizer state for a CT
    chain stays in that format; only rank 0 writes the final Hugging Face folder."""

    def __init__(self, model, tc: dict, device: torch.device):
        try:
            import deepspeed
        except ImportError:
            raise RuntimeError("the config asks for DeepSpeed (deepspeed key of the stage) but it "
                               "is not installed: pip install 'lrmerge[gpu]'") from None
        import torch.distributed as dist

        if not dist.is_initialized():
            deepspeed.init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        self.device = device
        conf = deepspeed_config(tc, self.world_size)
        opt = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]),
                                betas=tuple(tc.get("betas", (0.9, 0.95))),
                                weight_decay=float(tc.get("weight_decay", 0.1)))
        self.engine, self.opt, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                                           config=conf)
        self.model = self.engine.module
        self.autocast = False

    def forward(self, ids):
        return self.engine(input_ids=ids).logits

    def backward(self, loss, last: bool):
        # The loss is already normalised over the whole step, so no division by accumulation
        # steps; the boundary is forced on the step's last micro-batch, because the final step
        # of a budget may hold fewer micro-batches than the configured accumulation.
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self):
        pass  # done by engine.step() at the accumulation boundary

    def save_engine(self, folder: Path, client: dict):
        self.engine.save_checkpoint(str(folder), tag="state", client_state=client)

    def load_engine(self, folder: Path) -> dict:
        _, client = self.engine.load_checkpoint(str(folder), tag="state")
        return client or {}


def make_backend(model, tc: dict, device: torch.device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tc.get("deepspeed"):
        return DeepSpeed(model, tc, device)
    if world > 1:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but the stage has no deepspeed "
                           "config; multi-process training runs through DeepSpeed")
    return Plain(model, tc, device)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_checkpoint(backend, folder: Path, meta: dict) -> None:
    """Model, optimizer, step, tokens and RNG, so a killed job continues where it stopped."""
    meta = dict(meta, rng=_rng_state())
    if isinstance(backend, DeepSpeed):
        backend.save_engine(folder, meta)
        return
    if backend.rank == 0:
        state = dict(backend.state(), **meta)
        with fsutil.atomic_open(folder / STATE_FILE, "wb") as fh:
            torch.save(state, fh)


def _load_checkpoint(backend, folder: Path) -> dict | None:
    if isinstance(backend, DeepSpeed):
        return backend.load_engine(folder) if (folder / "latest").exists() else None
    path = folder / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    backend.load(state)
    return state


def train(*, stage: str, cfg: dict, init: str, out: str, rows: Iterable[dict],
          english_rows: Iterable[dict] | None = None, tokens: int | None = None, lang: str | None = None,
          tokenizer=None, model=None, threads: int | None = None, data_id=None,
          log=print) -> dict:
    """Run one training job and return its summary (also written to OUT/train_summary.json).

    stage: pretrain | ct | sft. `init` is a model folder (or hub id); for pretrain, `model` and
    `tokenizer` are given. For ct, `tokens` is the cumulative budget and `english_rows` the
    English replay mixed in at continual_pretrain.english_ratio. `data_id` names the data in
    the checkpoint fingerprint (a resumed job must train on the same data)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    section = STAGES[stage]
    tc = dict(cfg.get(section) or {})
    seed = int(cfg.get("seed", 0))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # never leave an old summary beside new weights
    if threads:
        torch.set_num_threads(int(threads))
    device = _device(tc.get("device", "auto"))

    # --- where this run starts: a previous CT budget continues its own run -------------------
    resumed_from, chain = None, None
    init_path = Path(init) if init else None
    if stage == "ct" and init_path is not None and (init_path / SUMMARY_FILE).exists():
        prev = json.loads((init_path / SUMMARY_FILE).read_text())
        if prev.get("stage") == "ct":
            if prev.get("lang") != lang:
                raise ValueError(f"--init {init} is a CT run of {prev.get('lang')!r}, not {lang!r}")
            if int(prev["tokens_seen"]) >= int(tokens):
                raise ValueError(f"--init {init} has already seen {prev['tokens_seen']} tokens; "
                                 f"--tokens {tokens} must be larger")
            if not (init_path / STATE_FILE).exists() and not (init_path / "ds_state").exists():
                raise FileNotFoundError(
                    f"{init_path / STATE_FILE} missing: a CT budget continues the previous "
                    "budget's optimizer and schedule (keep continual_pretrain.save_optimizer true)")
            resumed_from, chain = str(init_path), prev
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(init)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    model.train()

    # --- data --------------------------------------------------------------------------------
    seq_len, batch, micro = int(tc["seq_len"]), int(tc["batch_size"]), int(tc["micro_batch_size"])
    tokens_per_step = batch * seq_len
    mask_prompt = stage == "sft" and tc.get("loss_on", "all") == "response"
    target = Source(lang or stage, rows, tokenizer, seq_len, seed, mask_prompt,
                    tc.get("join", " "))
    english = None
    ratio = float(tc.get("english_ratio", 0.0)) if stage == "ct" else 0.0
    if ratio > 0:
        if english_rows is None:
            raise ValueError(f"continual_pretrain.english_ratio is {ratio} but no English corpus "
                             "was given (--english)")
        english = Source("en", english_rows, tokenizer, seq_len, seed)
    stream = Stream(target, english, ratio)

    if stage == "ct":
        total_tokens = int(tokens)
        budgets = ((cfg.get("languages") or {}).get(lang) or {}).get("budgets") or []
        # Steps are cut at every budget of the language, so that each budget ends on a step
        # edge and a chain of budgets is step for step the straight run to the last one.
        cuts = sorted({int(b) for b in budgets} | {total_tokens})
        total_steps = count_steps(total_tokens, tokens_per_step, cuts)
        default_decay = count_steps(max(cuts), tokens_per_step, cuts)
    else:
        total_steps = int(tc["steps"])
        total_tokens = total_steps * tokens_per_step
        cuts = [total_tokens]
        default_decay = total_steps
    decay = int(tc.get("decay_steps") or default_decay)
    warmup = int(tc.get("warmup_steps", 0))
    lr_max, lr_min = float(tc["lr"]), float(tc.get("min_lr", 0.0))

    backend = make_backend(model, tc, device)
    step, seen = 0, 0
    if data_id is None:
        data_id = len(rows) if hasattr(rows, "__len__") else None
    fingerprint = _fingerprint({"stage": stage, "init": str(init), "lang": lang, "tc": tc,
                                "tokens": tokens, "seed": seed, "data": data_id})
    ckpt = out / CHECKPOINT_DIR
    if chain is not None:  # continue the previous budget's run
        if isinstance(backend, DeepSpeed):
            st = backend.load_engine(init_path / "ds_state")
        else:
            st = torch.load(init_path / STATE_FILE, map_location="cpu", weights_only=False)
            backend.load(st)
        step, seen = int(st["step"]), int(st["tokens_seen"])
        _set_rng_state(st["rng"])
        log(f"continuing {init} at step {step}, {seen} tokens")
    if ckpt.exists():  # this job was interrupted: continue from its own checkpoint
        meta_path = ckpt / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta.get("fingerprint") == fingerprint:
            st = _load_checkpoint(backend, ckpt)
            if st is not None:
                step, seen = int(st["step"]), int(st["tokens_seen"])
                _set_rng_state(st["rng"])
                log(f"resuming own checkpoint at step {step}, {seen} tokens")
        else:
            log(f"ignoring {ckpt}: written by a different configuration")
            shutil.rmtree(ckpt, ignore_errors=True)
    start_step = step
    stream.prefetch(math.ceil(total_tokens / seq_len))

    every = int(tc.get("checkpoint_every", 0))
    log_every = max(1, int(tc.get("log_every", 10)))
    losses: list[float] = []
    history: list[dict] = []
    while seen < total_tokens:
        lr = lr_at(step, lr_max, lr_min, warmup, decay)
        end = next_cut(seen, tokens_per_step, cuts, total_tokens)
        step_tokens = end - seen
        # The step's token range cut at block edges: pieces (block, start, stop) of the stream.
        pieces = [(b, max(seen, b * seq_len) - b * seq_len, min(end, (b + 1) * seq_len) - b * seq_len)
                  for b in range(seen // seq_len, (end - 1) // seq_len + 1)]
        # Tokens whose prediction is in the loss (all processes): the step's mean divides by it.
        n_pred = max(1, sum(int(stream.block(b)[1][lo + 1:hi].sum()) for b, lo, hi in pieces))
        mine = pieces[backend.rank::backend.world_size]
        # Every process runs the same number of micro-batches (collectives must match); one
        # whose share ran out runs a zero-weight batch.
        n_micro = math.ceil(math.ceil(len(pieces) / backend.world_size) / micro)
        backend.set_lr(lr)
        step_loss = 0.0
        for m in range(n_micro):
            sel = mine[m * micro:(m + 1) * micro]
            weight = 1.0 if sel else 0.0
            batch_rows = []
            for b, lo, hi in sel or pieces[:1]:
                ids, keep = stream.block(b)
                batch_rows.append((ids[lo:hi], keep[lo:hi]))
            # Full blocks go in one batch; the partial ones at a budget's edges one by one.
            by_len: dict[int, list] = {}
            for ids, keep in batch_rows:
                by_len.setdefault(len(ids), []).append((ids, keep))
            chunks = [(torch.stack([i for i, _ in g]), torch.stack([k for _, k in g]))
                      for g in by_len.values()]
            for c, (x, k) in enumerate(chunks):
                x, k = x.to(backend.device), k.to(backend.device)
                logits = backend.forward(x)
                labels = x[:, 1:].masked_fill(~k[:, 1:], -100)
                # Sum over tokens / predicted tokens of the whole step: accumulating the micro-
                # batches (and averaging over processes) gives the step's mean token loss.
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                       labels.reshape(-1), ignore_index=-100,
                                       reduction="sum") * (weight / n_pred)
                last = m == n_micro - 1 and c == len(chunks) - 1
                backend.backward(loss * backend.world_size, last)
                step_loss += loss.item()
        backend.step()
        step += 1
        seen += step_tokens
        losses.append(step_loss)
        if step % log_every == 0 or seen >= total_tokens:
            history.append({"step": step, "tokens": seen, "lr": lr, "loss": step_loss})
            log(f"step {step}/{total_steps} tokens {seen} lr {lr:.3g} loss {step_loss:.4f}")
        if every and step % every == 0 and seen < total_tokens:
            _save_checkpoint(backend, ckpt, {"step": step, "tokens_seen": seen})
            if backend.rank == 0:
                fsutil.write_json(ckpt / "meta.json", {"fingerprint": fingerprint, "step": step})

    # --- final save: HF folder, the chain state (CT), then the summary last ------------------
    save_dtype = tc.get("save_dtype", "float32")
    if save_dtype not in DTYPES:
        raise ValueError(f"{section}.save_dtype: {save_dtype!r} is not one of {', '.join(DTYPES)}")
    if stage == "ct" and tc.get("save_optimizer", True) and seen >= total_tokens:
        meta = {"step": step, "tokens_seen": seen, "rng": _rng_state()}
        if isinstance(backend, DeepSpeed):
            backend.save_engine(out / "ds_state", meta)
        elif backend.rank == 0:
            with fsutil.atomic_open(out / STATE_FILE, "wb") as fh:
                torch.save(dict(backend.state(), **meta), fh)
    summary = None
    if backend.rank == 0:
        module = backend.module()
        module.config.use_cache = True
        # Copy weights to the saved dtype without touching the fp32 training copy.
        state = {k: v.detach().to("cpu", DTYPES[save_dtype]) for k, v in module.state_dict().items()}
        module.save_pretrained(out, state_dict=state, safe_serialization=True)
        cfg_path = out / "config.json"
        conf = json.loads(cfg_path.read_text())
        conf["dtype"] = save_dtype
        conf.pop("torch_dtype", None)
        fsutil.write_json(cfg_path, conf)
        tokenizer.save_pretrained(out)
        wall = time.time() - t0
        summary = {
            "stage": stage,
            "lang": lang,
            "init": str(init),
            "resumed_from": resumed_from,
            "tokens_seen": seen,
            "tokens_this_run": seen - (int(chain["tokens_seen"]) if chain else 0),
            "steps": step,
            "steps_this_run": step - start_step,
            "tokens_per_step": tokens_per_step,
            "seq_len": seq_len,
            "english_ratio": ratio,
            "lr_schedule": {"kind": "cosine", "lr": lr_max, "min_lr": lr_min,
                            "warmup_steps": warmup, "decay_steps": decay,
                            "lr_last": lr_at(step - 1, lr_max, lr_min, warmup, decay)},
            "final_loss": losses[-1] if losses else (chain or {}).get("final_loss"),
            "loss_history": history,
            "data": {"target": target.usage(stream.counts(math.ceil(seen / seq_len))[0]),
                     "english": english.usage(stream.counts(math.ceil(seen / seq_len))[1])
                     if english else None},
            "save_dtype": save_dtype,
            "device": str(backend.device),
            "world_size": backend.world_size,
            "threads": torch.get_num_threads(),
            "wall_time_s": round(wall, 2),
            "config": tc,
        }
        shutil.rmtree(ckpt, ignore_errors=True)
        fsutil.write_json(out / SUMMARY_FILE, summary)
        log(f"done: {seen} tokens, {step} steps, loss {summary['final_loss']}, {wall:.1f}s")
    return summary


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def pretrain(cfg: dict, corpus: str, out: str, threads: int | None = None, log=print) -> dict:
    """Mini only: an English byte-level BPE (+ target words if mini.vocab_extension) and a tiny
    Llama pre-trained on the English corpus."""
    from lrmerge import data

    mini = cfg.get("mini") or {}
    rows = fsutil.read_jsonl(corpus)
    if threads:
        torch.set_num_threads(int(threads))
    extra = data.extension_words(cfg) if mini.get("vocab_extension", True) else []
    tok = build_tokenizer([r["text"] for r in rows], int(mini.get("tokenizer_vocab", 1000)),
                          extra)
    model = build_model(mini, tok, int(cfg.get("seed", 0)))
    log(f"tokenizer: {len(tok)} tokens ({len(extra)} extension words); model: "
        f"{sum(p.numel() for p in model.parameters())} parameters")
    return train(stage="pretrain", cfg=cfg, init=None, out=out, rows=rows, tokenizer=tok,
                 model=model, threads=threads, log=log)


def _load_cfg(path):
    from lrmerge.config import load_config

    return load_config(path)


def _read(path: str, what: str, fields: tuple[str, ...] = ()) -> Iterator[dict]:
    """Rows of a jsonl file, read lazily (a paper-scale corpus never sits in memory); a line
    that is not JSON or lacks `fields` stops the run with the file and line."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path} not found")

    def rows():
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{what} {path}: line {i} is not JSON ({e.msg})") from None
                if any(f not in row for f in fields):
                    raise ValueError(f"{what} {path}: line {i} lacks {'/'.join(fields)}")
                yield row

    return rows()


def _data_id(*paths) -> list:
    return [(str(p), os.path.getsize(p)) for p in paths if p]


@fsutil.cli_errors("train")
def cmd_pretrain(args) -> int:
    pretrain(_load_cfg(args.config), args.corpus, args.out, args.threads)
    return 0


@fsutil.cli_errors("train")
def cmd_ct(args) -> int:
    cfg = _load_cfg(args.config)
    rows = _read(args.corpus, "--corpus", ("text",))
    english = _read(args.english, "--english", ("text",)) if args.english else None
    train(stage="ct", cfg=cfg, init=args.init, out=args.out, rows=rows, english_rows=english,
          tokens=args.tokens, lang=args.lang, threads=args.threads,
          data_id=_data_id(args.corpus, args.english))
    return 0


@fsutil.cli_errors("train")
def cmd_sft(args) -> int:
    cfg = _load_cfg(args.config)
    rows = _read(args.data, "--data", ("prompt", "response"))
    train(stage="sft", cfg=cfg, init=args.init, out=args.out, rows=rows, threads=args.threads,
          data_id=_data_id(args.data))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="pre-train, continually pre-train or fine-tune")
    sub = p.add_subparsers(dest="train_command", required=True)

    def common(q):
        q.add_argument("--config", required=True)
        q.add_argument("--out", required=True, help="output model folder")
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    a = sub.add_parser("pretrain", help="mini: tokenizer + tiny Llama on the English corpus")
    common(a)
    a.add_argument("--corpus", required=True)
    a.set_defaults(func=cmd_pretrain)
    b = sub.add_parser("ct", help="continual pre-training up to a cumulative token budget")
    common(b)
    b.add_argument("--lang", required=True)
    b.add_argument("--tokens", type=int, required=True, help="cumulative token budget")
    b.add_argument("--init", required=True, help="base model, or the previous budget's folder")
    b.add_argument("--corpus", required=True)
    b.add_argument("--english", default=None, help="English corpus mixed in (english_ratio)")
    b.set_defaults(func=cmd_ct)
    c = sub.add_parser("sft", help="supervised fine-tuning on prompt/response data")
    common(c)
    c.add_argument("--init", required=True)
    c.add_argument("--data", required=True)
    c.set_defaults(func=cmd_sft)
    return p


if __name__ == "__main__":  # pragma: no cover - `python -m lrmerge.train` for torchrun launches
    from lrmerge.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
