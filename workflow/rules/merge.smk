# Merge stage: CT-X with SFT-flan per method x language x budget, plus the multi-language merges
# (lrmerge merge). The merge config is written beside the folder, since the engine refuses to write
# into an existing one, and moved in once the merge is complete.


rule merge:
    input:
        unpack(merge_inputs),
    output:
        report(
            L.summary(merge_id("{variant}", "{group}", "{tokens}")),
            caption="../report/merge_stats.rst",
            category="Merge",
            subcategory="{variant}",
            labels={
                "method": "{variant}",
                "language": "{group}",
                "tokens": "{tokens}",
            },
        ),
    log:
        L.log("merge", "{variant}/{group}/{tokens}"),
    benchmark:
        L.benchmark("merge", "{variant}/{group}/{tokens}")
    conda:
        "../../envs/merge.yaml"
    threads: rule_threads("merge")
    resources:
        **rule_resources("merge"),
    params:
        args=merge_args,
        out=output_dir,
    shell:
        "(lrmerge merge-config {params.args} --out {params.out}.merge.yaml"
        " && lrmerge merge {params.out}.merge.yaml --out {params.out} --stats {output}"
        " --threads {threads} --force"
        " && mv {params.out}.merge.yaml {params.out}/merge.yaml) > {log} 2>&1"
