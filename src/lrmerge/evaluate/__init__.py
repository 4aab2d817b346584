"""The evaluate stage: the study's benchmarks as lm-eval tasks, and running them.

    benchmarks  the benchmarks' records in their real layouts -> normalised rows
    tasks       task folders: templates/ (prompt styles, protocols) filled from config; the
                `lrmerge tasks` table
    scoring     what YAML cannot say: answer parsers, per-item scoring, macro-F1
    run         one lm-eval process per model; results with their metadata
    cli         `lrmerge evaluate`, `lrmerge tasks`
"""
