"""Data stage: the synthetic languages (mini), corpus sources, tokenizing into packed token
shards, the SFT data, and evaluation sets.

    synthetic   the generated languages and task items
    sources     documents from generated, jsonl or hub sources, in order
    budget      how many tokens each training job reads (shared with the train stage)
    shards      the token folder format: writer and memory-mapped reader
    tokenize    tokenizer identity, parallel encoding, corpus and SFT preparation
    sft         instruction rows
    evalsets    task data and lm-eval YAMLs
    cli         `lrmerge data ...`
"""
