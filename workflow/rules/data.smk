# Data stage: corpora, SFT-flan data and evaluation sets (lrmerge.data).


rule prepare_corpus:
    output:
        f"{RESULTS}/data/corpus/{{corpus}}.jsonl",
    log:
        f"{LOGS}/prepare_corpus/{{corpus}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        config=CONFIG,
        source=lambda wildcards: (
            config["english"]
            if wildcards.corpus == "en"
            else config["languages"][wildcards.corpus]
        )["corpus"],
        mini=config["mini"],
    shell:
        "lrmerge data corpus --config {params.config} --lang {wildcards.corpus} --out {output} > {log} 2>&1"


rule prepare_sft_data:
    output:
        f"{RESULTS}/data/sft/flan.jsonl",
    log:
        f"{LOGS}/prepare_sft_data.log",
    conda:
        "../../envs/data.yaml"
    params:
        config=CONFIG,
        mini=config["mini"],
    shell:
        "lrmerge data sft --config {params.config} --out {output} > {log} 2>&1"


rule prepare_eval_data:
    output:
        directory(f"{RESULTS}/data/eval/{{corpus}}"),
    log:
        f"{LOGS}/prepare_eval_data/{{corpus}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        config=CONFIG,
        tasks=lambda wildcards: (
            config["english"]
            if wildcards.corpus == "en"
            else config["languages"][wildcards.corpus]
        )["tasks"],
        mini=config["mini"],
    shell:
        "lrmerge data eval --config {params.config} --lang {wildcards.corpus} --out-dir {output} > {log} 2>&1"
