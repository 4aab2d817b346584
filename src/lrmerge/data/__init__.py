"""Data stage: the synthetic languages (mini), corpus sources, tokenizing into packed token
shards, and the SFT data. (Evaluation sets are the evaluate stage's: lrmerge.evaluate.)

    synthetic   the generated languages and task items (the mini's tasks too)
    order       seeded orders as pure functions of the index: a Feistel permutation, a jsonl
                line index, a shuffle buffer, interleaved streams
    sources     a corpus's documents as a seeded, prefix-stable sample (subsets at their shares)
    budget      how many tokens each training job reads (shared with the train stage)
    shards      the token folder format: writer and memory-mapped reader
    tokenize    tokenizer identity, parallel encoding, corpus preparation, the mini tokenizer
    mixture     a task mixture as arithmetic over counts (caps, weights, stratified order)
    sft         instruction rows by task, and the SFT data's preparation
    scripts     which strings an extended vocabulary may learn (the target scripts' own)
    vocab       vocabulary extension: BPE continued on a language's text
    cli         `lrmerge data ...`
"""
