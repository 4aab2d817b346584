# Data stage (lrmerge.data): the mini's tokenizer, the extended tokenizers of the languages that
# ask for one, every corpus tokenized once into token shards with the training model's tokenizer
# (a language's extended one where it has one), and the SFT data likewise.


rule train_tokenizer:
    output:
        f"{L.tokenizer()}/tokenizer.json",
    log:
        L.log("train_tokenizer"),
    benchmark:
        L.benchmark("train_tokenizer", "train_tokenizer")
    conda:
        "../../envs/data.yaml"
    threads: rule_threads("train_tokenizer")
    resources:
        **rule_resources("train_tokenizer"),
    params:
        config=CONFIG,
        cfg=config_slice("train_tokenizer"),
        out=output_dir,
    shell:
        "lrmerge data tokenizer --config {params.config} --out {params.out} > {log} 2>&1"


rule extend_tokenizer:
    input:
        tokenizer_input,
    output:
        f"{L.language_tokenizer('{lang}')}/tokenizer.json",
    log:
        L.log("extend_tokenizer", "{lang}"),
    benchmark:
        L.benchmark("extend_tokenizer", "{lang}")
    conda:
        "../../envs/data.yaml"
    threads: rule_threads("extend_tokenizer")
    resources:
        **rule_resources("extend_tokenizer"),
    params:
        config=CONFIG,
        cfg=config_slice("extend_tokenizer"),
        base=TOKENIZER,
        out=output_dir,
    shell:
        "lrmerge data extend-tokenizer --config {params.config} --lang {wildcards.lang}"
        " --base {params.base} --out {params.out} > {log} 2>&1"


rule prepare_corpus:
    input:
        corpus_tokenizer_input,
    output:
        report(
            L.manifest("{corpus}"),
            caption="../report/tokens.rst",
            category="Data",
            labels={"corpus": "{corpus}"},
        ),
    log:
        L.log("prepare_corpus", "{corpus}"),
    benchmark:
        L.benchmark("prepare_corpus", "{corpus}")
    conda:
        "../../envs/data.yaml"
    threads: rule_threads("prepare_corpus")
    resources:
        **rule_resources("prepare_corpus"),
    params:
        config=CONFIG,
        cfg=config_slice("prepare_corpus"),
        tokenizer=corpus_tokenizer,
        out=output_dir,
    shell:
        "lrmerge data corpus --config {params.config} --lang {wildcards.corpus}"
        " --tokenizer {params.tokenizer} --threads {threads} --out {params.out} > {log} 2>&1"


rule prepare_sft_data:
    input:
        tokenizer_input,
    output:
        L.manifest("sft"),
    log:
        L.log("prepare_sft_data"),
    benchmark:
        L.benchmark("prepare_sft_data", "sft")
    conda:
        "../../envs/data.yaml"
    threads: rule_threads("prepare_sft_data")
    resources:
        **rule_resources("prepare_sft_data"),
    params:
        config=CONFIG,
        cfg=config_slice("prepare_sft_data"),
        tokenizer=TOKENIZER,
        out=output_dir,
    shell:
        "lrmerge data sft --config {params.config} --tokenizer {params.tokenizer}"
        " --threads {threads} --out {params.out} > {log} 2>&1"
