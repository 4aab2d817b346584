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


def non_embedding_params(model) -> int:
    emb = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
           if m is not None for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def flops_per_token(model, seq_len: int) -> float:
    """Model FLOPs of one trained token: 6 x non-embedding parameters (forward + backward of
    every matmul) + attention 12 x layers x hidden x seq (QK^T and AV, forward and backward).
    Recomputation by activation checkpointing is not counted (model FLOPs, as MFU is defined)."""
    c = model.config
    return 6.0 * non_embedding_params(model) + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


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
