# Report stage: tables from the cached evaluations and merge statistics (and, for the text behind
# the tokens, the token manifests, CT summaries and extended tokenizers), figures from the tables
# (lrmerge.report). `snakemake -R plot` redraws the figures without touching anything upstream.


rule aggregate:
    input:
        evals=all_evals(),
        stats=all_merge_stats(),
        manifests=report_manifests(),
        ct_summaries=report_ct_summaries(),
        tokenizers=report_tokenizers(),
    output:
        scores=report(
            L.table("scores"),
            caption="../report/scores.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "scores"},
        ),
        discarded=report(
            L.table("discarded"),
            caption="../report/discarded_table.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "discarded"},
        ),
        discarded_map=report(
            L.table("discarded_map"),
            caption="../report/discarded_map_table.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "discarded_map"},
        ),
        vocabulary=report(
            L.table("vocabulary"),
            caption="../report/vocabulary.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "vocabulary"},
        ),
        data=report(
            L.table("data"),
            caption="../report/data.rst",
            category="Report",
            subcategory="Tables",
            labels={"table": "data"},
        ),
    log:
        L.log("aggregate"),
    benchmark:
        L.benchmark("aggregate", "aggregate")
    conda:
        "../../envs/report.yaml"
    params:
        config=CONFIG,
        cfg=config_slice("aggregate"),
        results=results_dir,
    shell:
        "lrmerge report aggregate --config {params.config} --results {params.results}"
        " --scores {output.scores}"
        " --discarded {output.discarded} --discarded-map {output.discarded_map}"
        " --vocabulary {output.vocabulary} --data {output.data} > {log} 2>&1"


rule plot:
    input:
        scores=L.table("scores"),
        discarded=L.table("discarded"),
        discarded_map=L.table("discarded_map"),
    output:
        report_figures(),
    log:
        L.log("plot"),
    benchmark:
        L.benchmark("plot", "plot")
    conda:
        "../../envs/report.yaml"
    params:
        config=CONFIG,
        cfg=config_slice("plot"),
        out_dir=output_dir,
    shell:
        "lrmerge report plot --config {params.config} --scores {input.scores}"
        " --discarded {input.discarded} --discarded-map {input.discarded_map}"
        " --out-dir {params.out_dir} > {log} 2>&1"
