"""Data stage: the synthetic languages (mini), corpus sources, tokenizing into packed token
shards, and the SFT data. (Evaluation sets are the evaluate stage's: lrmerge.evaluate.)

    synthetic   the generated languages and task items (the mini's tasks too)
    sources     documents from generated, jsonl or hub sources, in order
    budget      how many tokens each training job reads (shared with the train stage)
    shards      the token folder format: writer and memory-mapped reader
    tokenize    tokenizer identity, parallel encoding, corpus and SFT preparation
    sft         instruction rows
    cli         `lrmerge data ...`
"""
