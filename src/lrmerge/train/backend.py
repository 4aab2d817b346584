"""Backends: how a step's gradients are computed and applied.

* `Plain`: torch on one device, or data parallel over `torch.distributed` (gloo on CPU, NCCL on
  GPU) when launched with WORLD_SIZE > 1 (torchrun): each process holds the model and a torch
  AdamW, gradients are summed with one all-reduce per step.
* `DeepSpeed`: the DeepSpeed engine (ZeRO 0-2, bf16/fp16) when the stage has a `deepspeed` key.

Both see the same loop: `forward`, `backward(loss, last)` for each micro-batch, `step()`.
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist


def device_of(spec: str) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process
        spec = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(spec)


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (no-op for one process)."""
    if world()[1] > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_sum(x: float | int, device: torch.device) -> float:
    if not dist.is_initialized():
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_max(x: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return x
    t = torch.tensor([int(x)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _optimizer(params, tc: dict):
    return torch.optim.AdamW(params, lr=tc["lr"], betas=tuple(tc["betas"]),
                             weight_decay=tc["weight_decay"], eps=tc["eps"],
                             fused=bool(tc["fused_adamw"]))


class Plain:
    """One process, or plain data parallel: full model and optimizer in every process."""

    kind = "torch"

    def __init__(self, model, tc: dict, device: torch.device):
        self.rank, self.world_size = world()
        self.device = device
        self.model = model.to(device)
        self.opt = _optimizer(self.model.parameters(), tc)
        self.clip = tc["grad_clip"]
        if tc["precision"] == "fp16" and device.type == "cuda":
            raise ValueError("precision fp16 needs loss scaling, which only the DeepSpeed path "
                             "does; use bf16 (or set the stage's deepspeed key)")
        # bf16 autocast on GPU only: on CPU it is slower than fp32 for small models.
        self.autocast = tc["precision"] == "bf16" and device.type == "cuda"
        self.forward_module = torch.compile(self.model) if tc["compile"] else self.model

    def forward(self, ids, pos=None):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.forward_module(input_ids=ids, position_ids=pos).logits

    def set_lr(self, lr: float):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def backward(self, loss, last: bool):
        # The loss is normalised over the whole step (all processes): summing the processes'
        # gradients gives the step's gradient.
        loss.backward()

    def step(self):
        if self.world_size > 1:
            # Frozen parameters (the embedding warm-up) are left without a gradient: a zero one
            # would still let AdamW's weight decay move them.
            params = [p for p in self.model.parameters() if p.requires_grad]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads),
                                 strict=True):
                g.copy_(synced)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def module(self):
        return self.model


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
        "gradient_clipping": float(tc["grad_clip"]),
        "zero_optimization": zero,
        "bf16": {"enabled": tc["precision"] == "bf16"},
        "fp16": {"enabled": tc["precision"] == "fp16"},
        "steps_per_print": 10 ** 9,
    }
    conf.update(ds)
    return conf


class DeepSpeed(Plain):
    """DeepSpeed engine under torchrun/deepspeed: ZeRO 0-2, bf16/fp16 from the config. Its state
    is the engine's own per-rank checkpoint (zero_pp_rank_* optimizer shards)."""

    kind = "deepspeed"

    def __init__(self, model, tc: dict, device: torch.device):
        try:
            import deepspeed
        except ImportError as e:
            raise RuntimeError("the stage's deepspeed key needs DeepSpeed: pip install "
                               "'lrmerge[gpu]'") from e
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = world()
        self.device = device
        opt = _optimizer(model.parameters(), tc)
        self.engine, self.opt, _, _ = deepspeed.initialize(
            model=model, optimizer=opt, config=deepspeed_config(tc, self.world_size))
        self.model = self.engine.module
        self.forward_module = self.engine

    def forward(self, ids, pos=None):
        return self.engine(input_ids=ids, position_ids=pos).logits

    def backward(self, loss, last: bool):
        # DeepSpeed averages gradients over processes, so the step-normalised loss is scaled by
        # the world size; the boundary is forced on the step's last micro-batch, since a budget's
        # last step may hold fewer micro-batches than the configured accumulation.
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()

    def step(self):
        pass  # done by engine.step() at the accumulation boundary


def make_backend(model, tc: dict, device: torch.device):
    if tc.get("deepspeed"):
        return DeepSpeed(model, tc, device)
    init_distributed(device)
    return Plain(model, tc, device)
