"""Resumable training state: fp32 master weights, optimizer moments, step, tokens seen, RNG.

The same folder format serves a job's own checkpoints (OUT/checkpoint/) and the state a CT budget
hands to the next (OUT/trainer_state/):

    meta.json                         written last: step, tokens_seen, backend, world_size, ...
    rank00000-of-00002.safetensors    plain torch: each process writes the parameters it owns
    ...                               (index % world), with their AdamW moments, in parallel
    state/ , latest                   DeepSpeed: the engine's own per-rank files (zero_pp_rank_*)

Plain state is read back at any process count (every process reads every shard). A state is
written into a temporary sibling folder and renamed once complete, so a job killed while saving
keeps its previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lrmerge import fsutil
from lrmerge.train.backend import DeepSpeed, barrier

META = "meta.json"
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


def exists(folder: Path) -> bool:
    return (Path(folder) / META).is_file()


def read_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / META).read_text(encoding="utf-8"))


def _rank_file(rank: int, world: int) -> str:
    return f"rank{rank:05d}-of-{world:05d}.safetensors"


def save(backend, folder: Path, meta: dict) -> None:
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.partial")
    if backend.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    meta = dict(meta, backend=backend.kind, world_size=backend.world_size)
    if isinstance(backend, DeepSpeed):
        backend.engine.save_checkpoint(str(tmp), tag="state")
    else:
        tensors = {}
        opt_state = backend.opt.state
        for i, (name, p) in enumerate(backend.model.named_parameters()):
            if i % backend.world_size != backend.rank:
                continue
            tensors[f"param.{name}"] = p.detach().float().cpu().contiguous()
            for key, value in opt_state.get(p, {}).items():
                tensors[f"{key}.{name}"] = value.detach().cpu().reshape(value.shape).contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        path = tmp / _rank_file(backend.rank, backend.world_size)
        save_file(tensors, str(path))
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    barrier()
    if backend.rank == 0:
        fsutil.write_json(tmp / META, meta)
        fsutil.replace_dir(tmp, folder)
    barrier()


def load(backend, folder: Path) -> dict:
    """Load a state into the backend; returns its meta."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta["backend"] != backend.kind:
        raise ValueError(f"{folder}: written by the {meta['backend']} backend, this job runs "
                         f"{backend.kind}; use the same `deepspeed` setting to continue it")
    if isinstance(backend, DeepSpeed):
        if meta["world_size"] != backend.world_size:
            raise ValueError(f"{folder}: DeepSpeed state of {meta['world_size']} processes, this "
                             f"job has {backend.world_size}")
        backend.engine.load_checkpoint(str(folder), tag="state")
        return meta
    tensors: dict[str, torch.Tensor] = {}
    for r in range(meta["world_size"]):
        path = folder / _rank_file(r, meta["world_size"])
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: the state in {folder} is incomplete")
        part = load_file(str(path))
        if r == backend.rank % meta["world_size"]:
            torch.set_rng_state(part["rng.torch"])
        tensors.update(part)
    params = dict(backend.model.named_parameters())
    missing = [n for n in params if f"param.{n}" not in tensors]
    if missing:
        raise ValueError(f"{folder}: no saved weights for {missing[0]} (and {len(missing) - 1} "
                         "more): the state is of another model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
    # Optimizer moments in the layout torch's AdamW.state_dict() uses (parameters by index).
    sd = backend.opt.state_dict()
    state = {}
    for i, n in enumerate(params):
        entry = {k: tensors[f"{k}.{n}"] for k in ADAM_KEYS if f"{k}.{n}" in tensors}
        if entry:
            state[i] = entry
    sd["state"] = state
    backend.opt.load_state_dict(sd)
    return meta


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
