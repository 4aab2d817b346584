"""`lrmerge import-gguf`: a GGUF file (llama.cpp's format) as an ordinary Hugging Face folder.

transformers reads a GGUF file and dequantizes it, but the model it returns refuses
`save_pretrained` ("quantized with gguf and is not serializable"). Building a plain model from
its config and loading the dequantized weights into it gives a folder every stage reads:
safetensors in `dtype`, config.json without the quantization entry, the tokenizer the GGUF
carries, and `gguf_import.json` recording where it came from. Tied embeddings stay tied (no
`lm_head.weight` written for a model that shares it with the input embedding).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import xxhash

from lrmerge import fsutil

DTYPES = ("float32", "bfloat16", "float16")
RECORD = "gguf_import.json"


def file_hash(path: Path, chunk: int = 1 << 24) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def import_gguf(gguf: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32",
                force: bool = False) -> dict:
    """Convert `gguf` into the Hugging Face folder `out` (written atomically); return the record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it")
    t0 = time.time()
    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    try:
        quantized = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except Exception as e:  # transformers' messages do not name the file
        raise RuntimeError(f"{gguf}: transformers cannot read it as a causal LM "
                           f"({type(e).__name__}: {e})") from e
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = quantized.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a tied model's lm_head.weight is the embedding itself: not missing in any real sense
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: dequantized weights do not fit the model built from its "
                           f"config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    params = sum(p.numel() for p in model.parameters())
    names = model.state_dict().keys()
    record = {
        "source": str(gguf.resolve()),
        "source_bytes": gguf.stat().st_size,
        "source_xxh3_128": file_hash(gguf),
        "dtype": dtype,
        "architecture": type(model).__name__,
        "parameters": params,
        "tie_word_embeddings": tied,
        "tensors": len(names) - int(tied and "lm_head.weight" in names),  # as saved
        "note": "weights dequantized from the GGUF's quantization; not the original checkpoint",
    }
    with fsutil.atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record["seconds"] = round(time.time() - t0, 1)
        fsutil.write_json(tmp / RECORD, record)
    return record


def cmd_import(args) -> int:
    rec = import_gguf(args.gguf, args.out, args.dtype, args.force)
    print(f"{args.out}: {rec['architecture']}, {rec['parameters'] / 1e6:.1f}M parameters in "
          f"{rec['dtype']}, {rec['tensors']} tensors"
          f"{' (tied embeddings)' if rec['tie_word_embeddings'] else ''}, {rec['seconds']} s")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import-gguf", help="convert a GGUF file into a Hugging Face model folder",
        description=__doc__.splitlines()[0])
    p.add_argument("gguf", help="the .gguf file (its folder must be readable)")
    p.add_argument("out", help="the Hugging Face folder to write")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype of the saved weights (default float32: the dequantized values "
                        "exactly)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=fsutil.cli_errors("import-gguf")(cmd_import))
    return p
