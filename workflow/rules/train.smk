# Train stage: the tiny base (mini only), CT chains, SFT-flan and CT-then-SFT (lrmerge.train).
# Outputs are the small train_summary.json written last; the folder is a param so that a long job
# can resume from its own checkpoints after a failure.


rule pretrain_base:
    input:
        f"{RESULTS}/data/corpus/en.jsonl",
    output:
        f"{RESULTS}/models/base/train_summary.json",
    log:
        f"{LOGS}/pretrain_base.log",
    conda:
        "../../envs/train.yaml"
    params:
        config=CONFIG,
        out=output_dir,
        recipe=config["pretrain"],
        mini=config["mini"],
    shell:
        "lrmerge train pretrain --config {params.config} --threads {threads} --corpus {input}"
        " --out {params.out} > {log} 2>&1"


rule continual_pretrain:
    input:
        init=ct_init_input,
        corpus=f"{RESULTS}/data/corpus/{{lang}}.jsonl",
        english=f"{RESULTS}/data/corpus/en.jsonl",
    output:
        f"{RESULTS}/models/ct/{{lang}}/{{tokens}}/train_summary.json",
    log:
        f"{LOGS}/continual_pretrain/{{lang}}/{{tokens}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        config=CONFIG,
        init=ct_init_dir,
        out=output_dir,
        recipe=config["continual_pretrain"],
    shell:
        "lrmerge train ct --config {params.config} --threads {threads} --lang {wildcards.lang}"
        " --tokens {wildcards.tokens} --init {params.init} --corpus {input.corpus}"
        " --english {input.english} --out {params.out} > {log} 2>&1"


rule finetune_sft:
    input:
        init=base_input,
        data=f"{RESULTS}/data/sft/flan.jsonl",
    output:
        f"{RESULTS}/models/sft/train_summary.json",
    log:
        f"{LOGS}/finetune_sft.log",
    conda:
        "../../envs/train.yaml"
    params:
        config=CONFIG,
        init=BASE,
        out=output_dir,
        recipe=config["sft"],
    shell:
        "lrmerge train sft --config {params.config} --threads {threads} --init {params.init}"
        " --data {input.data} --out {params.out} > {log} 2>&1"


rule ct_then_sft:
    input:
        init=f"{RESULTS}/models/ct/{{lang}}/{{tokens}}/train_summary.json",
        data=f"{RESULTS}/data/sft/flan.jsonl",
    output:
        f"{RESULTS}/models/ct_sft/{{lang}}/{{tokens}}/train_summary.json",
    log:
        f"{LOGS}/ct_then_sft/{{lang}}/{{tokens}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        config=CONFIG,
        init=init_dir,
        out=output_dir,
        recipe=config["sft"],
    shell:
        "lrmerge train sft --config {params.config} --threads {threads} --init {params.init}"
        " --data {input.data} --out {params.out} > {log} 2>&1"
