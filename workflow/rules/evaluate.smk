# Evaluate stage (lrmerge.evaluate): each language's benchmarks as an lm-eval task folder, then
# one lm-eval process per model for all of its tasks, since indexing tasks and loading the model
# dominate the cost of a small evaluation.


rule build_tasks:
    output:
        directory(L.tasks("{corpus}")),
    log:
        L.log("build_tasks", "{corpus}"),
    benchmark:
        L.benchmark("build_tasks", "{corpus}")
    conda:
        "../../envs/evaluate.yaml"
    threads: rule_threads("build_tasks")
    resources:
        **rule_resources("build_tasks"),
    params:
        config=CONFIG,
        cfg=config_slice("build_tasks"),
        tasks_dir=tasks_root,
    shell:
        "lrmerge tasks --config {params.config} --lang {wildcards.corpus}"
        " --write {params.tasks_dir} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        report(
            L.eval("{model}"),
            caption="../report/eval.rst",
            category="Evaluate",
            subcategory=eval_subcategory,
            labels=eval_labels,
        ),
    log:
        L.log("evaluate", "{model}"),
    benchmark:
        L.benchmark("evaluate", "{model}")
    conda:
        "../../envs/evaluate.yaml"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        config=CONFIG,
        cfg=config_slice("evaluate"),
        tasks_dir=L.tasks_dir(),
        model=model_dir,
        langs=eval_langs,
    shell:
        "lrmerge evaluate --config {params.config} --threads {threads} --model {params.model}"
        " {params.langs} --tasks-dir {params.tasks_dir} --out {output} > {log} 2>&1"
