# Train stage (lrmerge.train): the tiny base (mini only), CT chains, SFT-flan and CT-then-SFT, all
# streaming the data stage's token shards. Outputs are the small train_summary.json written last;
# the folder is a param so that a job re-run after a failure, a time limit or preemption resumes
# from its own checkpoint (each attempt is recorded in the folder's train_attempts.jsonl: the log
# does not survive the next attempt). With resources gpu > 1 a job runs under torchrun (`launch`).


rule pretrain_base:
    input:
        tokenizer=tokenizer_input,
        data=L.manifest("en"),
    output:
        report(
            L.summary(BASE_ID),
            caption="../report/train_summary.rst",
            category="Train",
            subcategory="base (pre-trained)",
            labels={"model": "base"},
        ),
    log:
        L.log("pretrain_base"),
    benchmark:
        L.benchmark("pretrain_base", "base")
    conda:
        "../../envs/train.yaml"
    threads: rule_threads("pretrain_base")
    resources:
        **rule_resources("pretrain_base"),
    params:
        config=CONFIG,
        cfg=config_slice("pretrain_base"),
        launch=launcher,
        tokenizer=TOKENIZER,
        data=data_dir,
        out=output_dir,
    shell:
        "{params.launch} pretrain --config {params.config} --threads {threads}"
        " --tokenizer {params.tokenizer} --data {params.data} --out {params.out} > {log} 2>&1"


rule continual_pretrain:
    input:
        init=ct_init_input,
        data=L.manifest("{lang}"),
        english=L.manifest("en"),
        tokenizer=ct_tokenizer_input,
    output:
        report(
            L.summary(ct_id("{lang}", "{tokens}")),
            caption="../report/train_summary.rst",
            category="Train",
            subcategory="CT",
            labels={"language": "{lang}", "tokens": "{tokens}"},
        ),
    log:
        L.log("continual_pretrain", "{lang}/{tokens}"),
    benchmark:
        L.benchmark("continual_pretrain", "{lang}/{tokens}")
    conda:
        "../../envs/train.yaml"
    threads: rule_threads("continual_pretrain")
    resources:
        **rule_resources("continual_pretrain"),
    params:
        config=CONFIG,
        cfg=config_slice("continual_pretrain"),
        launch=launcher,
        init=ct_init_dir,
        data=data_dir,
        english=english_dir,
        tokenizer=ct_tokenizer_arg,
        out=output_dir,
    shell:
        "{params.launch} ct --config {params.config} --threads {threads} --lang {wildcards.lang}"
        " --tokens {wildcards.tokens} --init {params.init} --data {params.data}"
        " --english {params.english} {params.tokenizer} --out {params.out} > {log} 2>&1"


rule finetune_sft:
    input:
        init=base_input,
        data=L.manifest("sft"),
    output:
        report(
            L.summary(SFT_ID),
            caption="../report/train_summary.rst",
            category="Train",
            subcategory="SFT-flan",
            labels={"model": "sft"},
        ),
    log:
        L.log("finetune_sft"),
    benchmark:
        L.benchmark("finetune_sft", "sft")
    conda:
        "../../envs/train.yaml"
    threads: rule_threads("finetune_sft")
    resources:
        **rule_resources("finetune_sft"),
    params:
        config=CONFIG,
        cfg=config_slice("finetune_sft"),
        launch=launcher,
        init=BASE,
        data=data_dir,
        out=output_dir,
    shell:
        "{params.launch} sft --config {params.config} --threads {threads} --init {params.init}"
        " --data {params.data} --out {params.out} > {log} 2>&1"


rule ct_then_sft:
    input:
        init=L.summary(ct_id("{lang}", "{tokens}")),
        data=L.manifest("sft"),
    output:
        report(
            L.summary(ct_sft_id("{lang}", "{tokens}")),
            caption="../report/train_summary.rst",
            category="Train",
            subcategory="CT-then-SFT",
            labels={"language": "{lang}", "tokens": "{tokens}"},
        ),
    log:
        L.log("ct_then_sft", "{lang}/{tokens}"),
    benchmark:
        L.benchmark("ct_then_sft", "{lang}/{tokens}")
    conda:
        "../../envs/train.yaml"
    threads: rule_threads("ct_then_sft")
    resources:
        **rule_resources("ct_then_sft"),
    params:
        config=CONFIG,
        cfg=config_slice("ct_then_sft"),
        launch=launcher,
        init=init_dir,
        data=data_dir,
        out=output_dir,
    shell:
        "{params.launch} sft --config {params.config} --threads {threads} --init {params.init}"
        " --data {params.data} --out {params.out} > {log} 2>&1"
