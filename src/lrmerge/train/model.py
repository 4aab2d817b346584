"""Models: the mini preset's tiny Llama, loading a checkpoint with the configured attention and
activation checkpointing, and the FLOPs a trained token costs (for MFU)."""

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
