"""The workflow config: load and validate it (the schema ships here, `schema.yaml`), what it asks
for (`study`: the models and merges), where everything goes (`layout`), and what each rule reads
of it (`slices`).

The Snakefile validates with the same schema file and calls the same `check_config` and the same
enumeration (`plan_models`), so the workflow, the CLI commands and the report agree on what exists.
"""

from .checks import SOURCE_FAMILIES, SOURCE_REQUIRED, ConfigError, check_config
from .layout import Layout
from .load import expand_variants, load_config, load_schema, schema_path, validate_config
from .slices import job_resources, load_rule_config, prune, rule_config, rule_keys
from .study import (
    FAMILIES,
    MergeJob,
    StudyModel,
    all_tasks,
    corpus_key,
    engine_method,
    extends_vocabulary,
    language_entry,
    merge_args,
    merge_variants,
    plan_merges,
    plan_models,
    target_stats_budget,
    task_families,
    tasks_of,
    text_language,
    text_languages,
)

__all__ = [
    "FAMILIES", "SOURCE_FAMILIES", "SOURCE_REQUIRED", "ConfigError", "Layout", "MergeJob",
    "StudyModel", "all_tasks", "check_config", "corpus_key", "engine_method", "expand_variants",
    "extends_vocabulary", "job_resources",
    "language_entry", "load_config", "load_rule_config", "load_schema", "merge_args",
    "merge_variants", "plan_merges", "plan_models", "prune", "rule_config", "rule_keys",
    "schema_path", "target_stats_budget", "task_families", "tasks_of", "text_language", "text_languages",
    "validate_config",
]
