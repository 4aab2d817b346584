# Evaluate stage: one lm-eval process per model for all of its tasks (lrmerge.evaluate), since
# indexing tasks and loading the model dominate the cost of a small evaluation.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/eval/{{model}}.json",
    log:
        f"{LOGS}/evaluate/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        config=CONFIG,
        tasks_dir=tasks_dir,
        model=model_dir,
        langs=eval_langs,
        settings=config["evaluate"],
    shell:
        "lrmerge evaluate --config {params.config} --threads {threads} --model {params.model}"
        " {params.langs} --tasks-dir {params.tasks_dir} --out {output} > {log} 2>&1"
