"""Train stage: pre-training (mini), continual pre-training (CT) and supervised fine-tuning.

    model      the mini's tiny Llama, loading, activation checkpointing, FLOPs per token
    schedule   steps cut at budget edges, warmup + cosine
    stream     token shards as position-indexed samples (CT blocks, packed SFT, the English mix)
    backend    plain torch (one process or data parallel over torch.distributed) and DeepSpeed
    state      resumable state: per-rank shards, written atomically
    loop       the training loop: the job, resume, one step, the steps, the final save
    summary    what a job reports: train_attempts.jsonl, train_summary.json (built in one place)
    cli        `lrmerge train ...`
"""
