"""Models: the mini preset's tiny Llama, loading a checkpoint with the configured attention and
activation checkpointing, the FLOPs a trained token costs (for MFU), and the new embedding rows
of an extended vocabulary (each the mean of its pieces' rows) with the embedding warm-up."""

from __future__ import annotations

import torch

# bf16 dense peak TFLOPS of one device, by a substring of its name (the `peak_tflops` key
# overrides); MFU is not reported for devices not listed here.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def build_model(cfg: dict, tokenizer, seed: int, attention: str = "sdpa"):
    """The mini preset's tiny LlamaForCausalLM, sizes from `mini.model`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg["mini"]["model"]
    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"] or m["num_attention_heads"],
        max_position_embeddings=m["max_position_embeddings"],
        tie_word_embeddings=m["tie_word_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    conf._attn_implementation = attention
    torch.manual_seed(seed)
    return LlamaForCausalLM(conf)


def load_model(init: str, attention: str):
    """A Hugging Face causal LM in fp32 (the master weights; compute precision is the backend's)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32,
                                                attn_implementation=attention)


def prepare_for_training(model, tc: dict):
    """Training mode, no KV cache, and activation checkpointing if configured."""
    model.config.use_cache = False
    if tc["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def saved_weights(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict copied to `dtype` on the CPU, leaving the fp32 training copy alone. Tensors
    that share storage (tied input and output embeddings) stay one tensor: copied one by one they
    would no longer look tied to `save_pretrained`, which would then write `lm_head.weight`
    beside `model.embed_tokens.weight`, a tensor the base model does not have (merges refuse
    it)."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.device, t.data_ptr(), tuple(t.shape), t.stride())
        if key not in copies:
            copies[key] = t.detach().to("cpu", dtype)
        out[name] = copies[key]
    return out


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (a lookup),
    with the output projection counted even when it shares the embedding's weight."""
    inp = model.get_input_embeddings()
    skip = {id(p) for p in inp.parameters()} if inp is not None else set()
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    out = model.get_output_embeddings()
    if out is not None and any(id(p) in skip for p in out.parameters()):
        n += out.weight.numel()  # tied: the lm_head matmul still runs
    return n


def llama_matmul_params(sizes: dict) -> int:
    """matmul_params of a Llama from its config.json sizes (no weights needed)."""
    h, i, layers = sizes["hidden_size"], sizes["intermediate_size"], sizes["num_hidden_layers"]
    heads = sizes["num_attention_heads"]
    kv = sizes.get("num_key_value_heads") or heads
    kv_dim = h // heads * kv
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * i + 2 * h  # q, o, k, v, MLP, two norms
    return layers * per_layer + h + sizes["vocab_size"] * h  # final norm, lm_head


def attention_flops(layers: int, hidden: int, seq_len: int) -> float:
    """QK^T and AV, forward and backward, per token: 12 x layers x hidden x seq."""
    return 12.0 * layers * hidden * seq_len


def flops_per_token(model, seq_len: int) -> float:
    """Model FLOPs of one trained token: 6 x matmul parameters (forward + backward) + attention.
    Recomputation by activation checkpointing is not counted (model FLOPs, as MFU is defined).
    Llama-2-7b at 2048: 6 x 6.61e9 + 3.2e9 = 42.9 GFLOP."""
    c = model.config
    return 6.0 * matmul_params(model) + attention_flops(c.num_hidden_layers, c.hidden_size,
                                                         seq_len)


def peak_flops(tc: dict, device: torch.device) -> float | None:
    """Peak FLOPS of one device: the `peak_tflops` key, else the table for known GPUs."""
    if tc["peak_tflops"]:
        return float(tc["peak_tflops"]) * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


# --------------------------------------------------------------------------------------------
# Vocabulary extension (issue 17): new rows for the K tokens lrmerge.data.vocab added
# --------------------------------------------------------------------------------------------
EXTENSION_FILE = "vocab_extension.json"  # lrmerge.data.vocab.RECORD, beside the tokenizer files


def read_extension(tokenizer_dir) -> dict | None:
    """The tokenizer folder's vocab_extension.json (None: the folder has none), checked: the new
    ids run base_vocab_size .. base_vocab_size + added - 1 in order, and every token has pieces,
    all of them base ids (a new row is made from base rows only)."""
    import json
    from pathlib import Path

    path = Path(tokenizer_dir) / EXTENSION_FILE
    if not path.is_file():
        return None
    ext = json.loads(path.read_text(encoding="utf-8"))
    for key in ("base_vocab_size", "added", "tokens"):
        if key not in ext:
            raise ValueError(f"{path}: no {key!r}")
    base, tokens = int(ext["base_vocab_size"]), ext["tokens"]
    if len(tokens) != int(ext["added"]):
        raise ValueError(f"{path}: 'added' is {ext['added']} but {len(tokens)} tokens are listed")
    for i, tok in enumerate(tokens):
        what = f"{path}: token {tok.get('id')} ({tok.get('token')!r})"
        if tok.get("id") != base + i:
            raise ValueError(f"{what} is entry {i} of 'tokens'; new ids must run from "
                             f"base_vocab_size {base} without gaps, so it should be {base + i}")
        pieces = tok.get("pieces")
        if not pieces:
            raise ValueError(f"{what} has no pieces: its embedding row would have nothing to "
                             "be initialised from")
        bad = [p for p in pieces if not isinstance(p, int) or not 0 <= p < base]
        if bad:
            raise ValueError(f"{what}: pieces {bad} are not base ids (0 .. {base - 1})")
    return ext


def extend_embeddings(model, extension: dict, source: str = EXTENSION_FILE) -> dict:
    """Grow the input embeddings and the output layer from base_vocab_size N to N + K rows; new
    row N + i is the mean of its pieces' rows: in the input matrix from input rows, in an untied
    output layer from output rows (and bias) of the same pieces. A tied model stays tied: one
    tensor, saved under the base's name. Base rows stay bit for bit. Returns the record for
    the training summary. `source` names the extension in errors (its file).

    Resizing is transformers' `resize_token_embeddings`: it keeps the input Embedding module
    (new data, same Parameter), builds a new output Linear, re-ties a tied head to the input
    weight, and sets config.vocab_size. Its own row init (transformers 5 defaults to sampling
    from the old rows' mean and covariance, else normal init) draws from torch's global RNG; it is
    turned off (mean_resizing=False), run under a forked RNG so training's random state is not
    moved, and every new row it made is overwritten here."""
    base, tokens = int(extension["base_vocab_size"]), extension["tokens"]
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    rows = inp.weight.shape[0]
    if rows != base or model.config.vocab_size != base:
        raise ValueError(f"{source}: extends a vocabulary of {base} tokens, but the model has "
                         f"{rows} embedding rows (config.vocab_size {model.config.vocab_size})"
                         + ("; it is already extended" if rows == base + len(tokens) else ""))
    tied = out is not None and out.weight is inp.weight
    old_in = inp.weight.detach().clone()
    old_out = None if out is None or tied else out.weight.detach().clone()
    old_bias = None if out is None or out.bias is None else out.bias.detach().clone()
    with torch.random.fork_rng(devices=[]):
        model.resize_token_embeddings(base + len(tokens), mean_resizing=False)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp.weight.shape[0] != base + len(tokens) or (tied and out.weight is not inp.weight):
        raise RuntimeError(f"resize_token_embeddings left {inp.weight.shape[0]} input rows "
                           f"(tied head still tied: {out.weight is inp.weight}), expected "
                           f"{base + len(tokens)} (tied: {tied})")
    with torch.no_grad():
        for i, tok in enumerate(tokens):
            pieces = torch.tensor(tok["pieces"], dtype=torch.long)
            inp.weight[base + i] = old_in[pieces].double().mean(0).to(inp.weight.dtype)
            if old_out is not None:
                out.weight[base + i] = old_out[pieces].double().mean(0).to(out.weight.dtype)
            if old_bias is not None:
                out.bias[base + i] = old_bias[pieces].double().mean().to(out.bias.dtype)
    return {"added": len(tokens), "base_vocab_size": base, "vocab_size": base + len(tokens),
            "initialised": "mean_of_pieces", "tied": tied,
            "mean_pieces": round(sum(len(t["pieces"]) for t in tokens) / len(tokens), 3)}


def train_only_embeddings(model, only: bool) -> bool:
    """The embedding warm-up: `only` trains just the input embeddings and the output layer
    (every other parameter requires_grad False: it gets no gradient, so AdamW neither moves it
    nor decays it nor starts its moments); else all parameters train. Returns whether anything
    changed (the phase began or ended)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    keep = {id(p) for m in (inp, out) if m is not None for p in m.parameters()}
    changed = False
    for p in model.parameters():
        wanted = id(p) in keep or not only
        if p.requires_grad != wanted:
            p.requires_grad_(wanted)
            changed = True
    return changed
