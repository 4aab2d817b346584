"""Test-only helpers for the merge engine tests: tiny Llama checkpoints, loaders, configs.

Nothing here imports lrmerge or transformers (building a tokenizer uses only `tokenizers`), so the
fixtures stay cheap. The reference math lives in `merge_reference.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Modules the engine's stats summarise by (the lead's list).
MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "embed",
    "lm_head",
    "norm",
)


def llama_config(
    hidden: int = 16,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 32,
    vocab: int = 64,
    dtype: str = "float32",
) -> dict:
    """A config.json that `transformers.LlamaConfig` accepts."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a LlamaForCausalLM with `cfg` (untied embeddings)."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (q, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def layer_of(name: str) -> str:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return m.group(1) if m else "other"


def module_of(name: str) -> str:
    if "embed_tokens" in name:
        return "embed"
    if name.startswith("lm_head"):
        return "lm_head"
    if "norm" in name:
        return "norm"
    for mod in MODULES[:7]:
        if f".{mod}." in name:
            return mod
    raise ValueError(f"no module for {name}")


# --------------------------------------------------------------------------------------------
# random weights


def random_base(cfg: dict, seed: int, quantized: bool = False) -> dict[str, np.ndarray]:
    """float64 base weights. quantized: multiples of 1/64 in [-1, 1] (exact in bf16 and fp32)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in llama_shapes(cfg).items():
        if quantized:
            out[name] = rng.integers(-64, 65, size=shape) / 64.0
        elif "norm" in name:
            out[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            out[name] = 0.02 * rng.standard_normal(shape)
    return out


def random_task_vector(
    base: dict[str, np.ndarray],
    seed: int,
    scale: float = 0.01,
    quantized: bool = False,
    shared: dict[str, np.ndarray] | None = None,
    shared_frac: float = 0.0,
) -> dict[str, np.ndarray]:
    """A task vector tau for each tensor. quantized: nonzero multiples of 1/8 in [-1/2, 1/2]
    (many exact ties in |tau|). shared/shared_frac: mix in a common direction so that signs agree
    more often than chance."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, b in base.items():
        if quantized:
            mag = rng.integers(1, 5, size=b.shape) / 8.0
            t = np.where(rng.random(b.shape) < 0.5, -mag, mag)
        else:
            t = scale * rng.standard_normal(b.shape)
        if shared is not None and shared_frac > 0:
            use = rng.random(b.shape) < shared_frac
            t = np.where(use, np.sign(shared[name]) * np.abs(t), t)
        out[name] = t
    return out


def to_torch(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(DTYPES[dtype])
        for k, v in tensors.items()
    }


def nudge_nonzero(model: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    """After rounding to a low-precision dtype, entries equal to the base are moved one ulp away
    from zero, so that every tau is nonzero (keeps the 'kept zero' corner out of exact stat checks)."""
    itypes = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
    for name, t in model.items():
        b = base[name]
        eq = t == b
        if eq.any():
            # sign-magnitude layout: adding 1 to the bit pattern moves away from zero
            stepped = (b.view(itypes[t.dtype]) + 1).view(t.dtype)
            t[eq] = stepped[eq]


# --------------------------------------------------------------------------------------------
# folders


def make_tokenizer_files(folder: Path, vocab: int) -> None:
    """tokenizer.json (a WordLevel tokenizer built with `tokenizers`) + tokenizer_config.json for
    PreTrainedTokenizerFast; special tokens <unk>=0, <s>=1, </s>=2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 128,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )


def write_model(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    cfg: dict,
    shards: int = 1,
    tokenizer: bool = True,
    generation_config: bool = True,
) -> Path:
    """Write a Hugging Face model folder: model.safetensors, or `shards` files + index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards <= 1:
        save_file({k: tensors[k].contiguous() for k in names}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        groups = [names[i::shards] for i in range(shards)]
        weight_map = {}
        total = 0
        for i, group in enumerate(groups, start=1):
            fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k].contiguous() for k in group}, str(folder / fname),
                      metadata={"format": "pt"})
            for k in group:
                weight_map[k] = fname
                total += tensors[k].numel() * tensors[k].element_size()
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    cfg = dict(cfg)
    first = next(iter(tensors.values()))
    cfg["torch_dtype"] = {v: k for k, v in DTYPES.items()}[first.dtype]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if generation_config:
        (folder / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 7}, indent=2)
        )
    if tokenizer:
        make_tokenizer_files(folder, cfg["vocab_size"])
    return folder


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(wm.values()))]
    return [folder / "model.safetensors"]


def load_model(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single file or sharded with index)."""
    out = {}
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    return out


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (relative path -> digest)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class MergeInputs:
    """A base and N models built as base + task vectors; keeps the float64 truth for the tests."""

    def __init__(self, root: Path, cfg: dict, base: dict, models: dict, dtype: str):
        self.root = Path(root)
        self.cfg = cfg
        self.dtype = dtype
        self.base_path = self.root / "base"
        self.model_paths = [self.root / n for n in models]
        self.names = list(models)
        self.base = base  # torch tensors as written
        self.models = models  # name -> torch tensors as written

    def theta(self, i: int, name: str) -> np.ndarray:
        return self.models[self.names[i]][name].float().numpy()

    def thetas(self, name: str) -> list[np.ndarray]:
        return [self.theta(i, name) for i in range(len(self.names))]

    def base_np(self, name: str) -> np.ndarray:
        return self.base[name].float().numpy()

    @property
    def tensor_names(self) -> list[str]:
        return list(self.base)


def build_inputs(
    root: Path,
    n_models: int = 2,
    dtype: str = "float32",
    seed: int = 0,
    shards: int = 1,
    quantized: bool = False,
    scale: float = 0.01,
    shared_frac: float = 0.3,
    cfg: dict | None = None,
    names: Sequence[str] | None = None,
    tokenizer: bool = True,
) -> MergeInputs:
    """Tiny Llama base + `n_models` fine-tunes (base + noise), written as model folders."""
    cfg = dict(cfg or llama_config(dtype=dtype))
    base64 = random_base(cfg, seed, quantized=quantized)
    shared = random_task_vector(base64, seed + 1000, scale=scale, quantized=quantized)
    base_t = to_torch(base64, dtype)
    write_model(Path(root) / "base", base_t, cfg, shards=shards, tokenizer=tokenizer)
    names = list(names or [f"m{i}" for i in range(n_models)])
    models = {}
    for i, name in enumerate(names):
        tau = random_task_vector(base64, seed + 1 + i, scale=scale, quantized=quantized,
                                 shared=shared, shared_frac=shared_frac)
        t = to_torch({k: base64[k] + tau[k] for k in base64}, dtype)
        if dtype != "float32" or not quantized:
            nudge_nonzero(t, base_t)
        write_model(Path(root) / name, t, cfg, shards=shards, tokenizer=tokenizer)
        models[name] = t
    return MergeInputs(root, cfg, base_t, models, dtype)


def write_yaml(path: Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def native_config(inputs: MergeInputs, method: str, **kw) -> dict:
    """A native lrmerge config for `inputs`. kw: top-level keys; `model_overrides` a list of dicts
    merged into each model entry."""
    overrides = kw.pop("model_overrides", None) or [{} for _ in inputs.names]
    models = []
    for name, path, extra in zip(inputs.names, inputs.model_paths, overrides, strict=True):
        entry = {"path": str(path), "name": name}
        entry.update(extra)
        models.append(entry)
    cfg: dict = {"method": method}
    if method != "average":
        cfg["base"] = str(inputs.base_path)
    cfg["models"] = models
    cfg.setdefault("dtype", "float32")
    cfg.update(kw)
    return cfg


def mergekit_config(inputs: MergeInputs, method: str, weights, densities=None, params=None,
                    dtype: str | None = "float32", out_dtype: str | None = None,
                    with_base: bool = True) -> dict:
    models = []
    for i, path in enumerate(inputs.model_paths):
        p = {"weight": weights[i]}
        if densities is not None:
            p["density"] = densities[i]
        models.append({"model": str(path), "parameters": p})
    cfg: dict = {"merge_method": method}
    if with_base:
        cfg["base_model"] = str(inputs.base_path)
    cfg["models"] = models
    if params:
        cfg["parameters"] = params
    if dtype:
        cfg["dtype"] = dtype
    if out_dtype:
        cfg["out_dtype"] = out_dtype
    return cfg


# --------------------------------------------------------------------------------------------
# running the engine


REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


def lrmerge_exe() -> str:
    """The `lrmerge` console script of the interpreter running the tests."""
    import shutil
    import sys

    candidate = Path(sys.executable).parent / "lrmerge"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("lrmerge")
    if not found:
        raise RuntimeError("lrmerge console script not found")
    return found


def run_engine(config, out_dir: Path, stats: bool = True, threads: int | None = 1,
               **kw) -> tuple[dict, dict]:
    """Merge through the Python API; returns (stats dict, output tensors). One thread unless
    told: on tiny models a thread pool's start-up dominates, and the test machine is shared."""
    from lrmerge.merge import run_merge

    out_dir = Path(out_dir)
    stats_path = out_dir.parent / f"{out_dir.name}.stats.json" if stats else None
    if isinstance(config, dict):
        cfg_path = out_dir.parent / f"{out_dir.name}.yaml"
        write_yaml(cfg_path, config)
        config = cfg_path
    result = run_merge(str(config), str(out_dir), stats_path=str(stats_path) if stats else None,
                       threads=threads, **kw)
    if stats:
        on_disk = json.loads(stats_path.read_text())
        assert on_disk == json.loads(json.dumps(result)), "returned stats differ from the file"
    return result, load_model(out_dir)


def run_cli_inprocess(argv: list[str], capsys) -> tuple[int, str, str]:
    """`lrmerge ARGV` through lrmerge.cli.main in this process: (exit code, stdout, stderr)."""
    from lrmerge.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse-style exits
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


def run_cli(argv: list[str], timeout: float = 120, **kw):
    """`lrmerge ARGV` in a subprocess; returns CompletedProcess (text)."""
    import os
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([lrmerge_exe(), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def stats_entry(s) -> dict:
    """Reference Stats -> the engine's JSON entry."""
    return {"kept": s.kept, "discarded": s.discarded, "reserved": s.reserved,
            "discarded_fraction": s.discarded_fraction}


def assert_stats_equal(engine_stats: dict, ref: dict, names: list[str]) -> None:
    """Compare the engine's stats JSON with the reference (name -> reference Result): per tensor,
    totals, by_layer and by_module, counts exactly and fractions to 1e-12."""
    import math

    def cmp(got, want, where):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            for key in ("kept", "discarded", "reserved"):
                assert g[key] == w[key], f"{where} model {names[i]} {key}: {g[key]} != {w[key]}"
            assert math.isclose(g["discarded_fraction"], w["discarded_fraction"],
                                rel_tol=1e-9, abs_tol=1e-12), f"{where} model {names[i]} fraction"

    def summed(tensor_names):
        out = []
        for i in range(len(names)):
            kept = sum(ref[t].stats[i].kept for t in tensor_names)
            disc = sum(ref[t].stats[i].discarded for t in tensor_names)
            res = sum(ref[t].stats[i].reserved for t in tensor_names)
            out.append({"kept": kept, "discarded": disc, "reserved": res,
                        "discarded_fraction": disc / kept if kept else 0.0})
        return out

    assert engine_stats["models"] == names
    assert set(engine_stats["tensors"]) == set(ref)
    for t, r in ref.items():
        cmp(engine_stats["tensors"][t], [stats_entry(s) for s in r.stats], f"tensor {t}")
    cmp(engine_stats["totals"], summed(list(ref)), "totals")
    layers: dict[str, list[str]] = {}
    modules: dict[str, list[str]] = {}
    for t in ref:
        layers.setdefault(layer_of(t), []).append(t)
        modules.setdefault(module_of(t), []).append(t)
    assert set(engine_stats["by_layer"]) == set(layers)
    for key, ts in layers.items():
        cmp(engine_stats["by_layer"][key], summed(ts), f"by_layer[{key}]")
    assert set(engine_stats["by_module"]) == set(modules)
    for key, ts in modules.items():
        cmp(engine_stats["by_module"][key], summed(ts), f"by_module[{key}]")


def assert_close_to_ref(got: dict[str, torch.Tensor], ref: dict, out_dtype: str = "float32"):
    """Engine output vs reference theta (float64). float32: within a few float32 ulps (the engine
    computes in float32, the reference in float64). bfloat16: equal to the reference rounded to
    bf16 except at rounding boundaries, where one bf16 ulp is allowed."""
    assert set(got) == set(ref), set(got) ^ set(ref)
    for name, r in ref.items():
        g = got[name]
        assert g.dtype == DTYPES[out_dtype], (name, g.dtype)
        assert tuple(g.shape) == r.theta.shape, name
        gn = g.float().numpy().astype(np.float64)
        if out_dtype == "float32":
            np.testing.assert_allclose(gn, r.theta, rtol=1e-6, atol=2e-7, err_msg=name)
        else:
            want = torch.from_numpy(r.theta.astype(np.float32)).to(DTYPES[out_dtype])
            want = want.float().numpy().astype(np.float64)
            ulp = np.abs(want) * 2.0**-7 + 1e-30
            assert np.all(np.abs(gn - want) <= ulp), name
            assert np.mean(gn != want) < 0.01, name
