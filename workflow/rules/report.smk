# Report stage: tables from the cached evaluations and merge statistics, figures from the tables
# (lrmerge.report). `snakemake -R plot` redraws the figures without touching anything upstream.


rule aggregate:
    input:
        evals=all_evals(),
        stats=all_merge_stats(),
    output:
        scores=report(
            f"{RESULTS}/tables/scores.csv",
            caption="../report/scores.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "scores"},
        ),
        discarded=report(
            f"{RESULTS}/tables/discarded.csv",
            caption="../report/discarded_table.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "discarded"},
        ),
        discarded_map=report(
            f"{RESULTS}/tables/discarded_map.csv",
            caption="../report/discarded_map_table.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "discarded_map"},
        ),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/aggregate.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        config=CONFIG,
        cfg=config_slice("aggregate"),
        eval_dir=eval_dir,
        models_dir=models_dir,
    shell:
        "lrmerge report aggregate --config {params.config} --eval-dir {params.eval_dir}"
        " --models-dir {params.models_dir} --scores {output.scores}"
        " --discarded {output.discarded} --discarded-map {output.discarded_map} > {log} 2>&1"


rule plot:
    input:
        scores=f"{RESULTS}/tables/scores.csv",
        discarded=f"{RESULTS}/tables/discarded.csv",
        discarded_map=f"{RESULTS}/tables/discarded_map.csv",
    output:
        report_figures(),
    log:
        f"{LOGS}/plot.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot/plot.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        config=CONFIG,
        cfg=config_slice("plot"),
        out_dir=figures_dir,
    shell:
        "lrmerge report plot --config {params.config} --scores {input.scores}"
        " --discarded {input.discarded} --discarded-map {input.discarded_map}"
        " --out-dir {params.out_dir} > {log} 2>&1"
