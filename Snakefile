# lrmerge: low-resource languages get task-solving LLMs by merging a continually pre-trained model
# (CT-X) with an English instruction-tuned one (SFT-flan). See README.md and docs/design.md.
from snakemake.utils import min_version

min_version("9.0")


# The paper sweep unless a config file is given (profiles/mini gives config/mini.yaml). Loading the
# default only then keeps a --configfile from being merged key by key into the paper's config.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    aggregate,
    plot,


rule all:
    default_target: True
    input:
        get_final_output(),
