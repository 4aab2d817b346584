"""Every path of a run, named once: results/{run}/ and logs/{run}/.

A model's *id* is its folder under models/ and its eval file under eval/ (eval/{id}.json):
`base`, `sft`, `ct/{lang}/{tokens}`, `ct_sft/{lang}/{tokens}`, `merge/{variant}/{group}/{tokens}`.
The first part of an id is the model's kind. `Layout(root)` joins paths under a results folder;
`Layout("")` gives them relative to it (the pilot's globs). Snakemake rules get wildcard patterns
from the same methods, called with "{lang}" for a language and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS = "results"
LOGS = "logs"
TABLES = ("scores", "discarded", "discarded_map", "vocabulary", "data")
FIGURE_FORMATS = ("png", "pdf")
TRAIN_SUMMARY = "train_summary.json"
MERGE_STATS = "merge_stats.json"
BASE_ID = "base"
SFT_ID = "sft"


def ct_id(lang, tokens) -> str:
    return f"ct/{lang}/{tokens}"


def ct_sft_id(lang, tokens) -> str:
    return f"ct_sft/{lang}/{tokens}"


def merge_id(variant, group, tokens) -> str:
    return f"merge/{variant}/{group}/{tokens}"


def figure_file(name: str, fmt: str) -> str:
    """A figure's file name in a figures folder."""
    return f"{name}.{fmt}"


def root_of(path: str, relative: str) -> str:
    """The results folder of `path`, a file at `relative` under it (a rule's input or output,
    which may carry a storage prefix)."""
    if not path.endswith(relative):
        raise ValueError(f"{path} is not {relative} under a results folder")
    return path[: len(path) - len(relative)].rstrip("/")


def kind_of(model_id: str) -> str:
    """base, sft, ct, ct_sft or merge."""
    return model_id.split("/", 1)[0]


def summary_name(model_id: str) -> str:
    """The file a model's job writes last: its completion marker."""
    return MERGE_STATS if kind_of(model_id) == "merge" else TRAIN_SUMMARY


@dataclass(frozen=True)
class Layout:
    root: str  # results/{run}, or "" for paths relative to it
    logs: str = ""  # logs/{run}

    @classmethod
    def of(cls, config: dict) -> Layout:
        run = config["run_name"]
        return cls(f"{RESULTS}/{run}", f"{LOGS}/{run}")

    def path(self, *parts) -> str:
        return "/".join(str(p) for p in (self.root, *parts) if str(p))

    # models
    def model(self, model_id: str) -> str:
        return self.path("models", model_id)

    def summary(self, model_id: str) -> str:
        return f"{self.model(model_id)}/{summary_name(model_id)}"

    # data
    def tokenizer(self) -> str:
        return self.path("data", "tokenizer")

    def language_tokenizer(self, lang: str) -> str:
        """A language's extended tokenizer folder (`tokenizer: {extend: K}`)."""
        return self.path("data", "tokenizers", lang)

    def tokens(self, corpus: str) -> str:
        """A token folder: a language's corpus, en, or sft."""
        return self.path("data", "tokens", corpus)

    def manifest(self, corpus: str) -> str:
        return f"{self.tokens(corpus)}/manifest.json"

    # evaluation
    def tasks_dir(self) -> str:
        """Every language's lm-eval task folder, `lrmerge tasks --write` and `evaluate --tasks-dir`."""
        return self.path("tasks")

    def tasks(self, corpus: str) -> str:
        return f"{self.tasks_dir()}/{corpus}"

    def eval(self, model_id: str) -> str:
        return self.path("eval", f"{model_id}.json")

    # report
    def table(self, name: str) -> str:
        return self.path("tables", f"{name}.csv")

    def figures(self) -> str:
        return self.path("figures")

    def figure(self, name: str, fmt: str) -> str:
        return f"{self.figures()}/{figure_file(name, fmt)}"

    def missing(self) -> str:
        """`lrmerge report partial`'s list of the inputs it left out."""
        return self.path("missing.csv")

    def partial(self) -> str:
        """`lrmerge report partial`'s default output folder (a layout of its own)."""
        return self.path("partial")

    # job records
    def benchmarks(self, rule: str) -> str:
        return self.path("benchmarks", rule)

    def benchmark(self, rule: str, job: str) -> str:
        return f"{self.benchmarks(rule)}/{job}.tsv"

    def log(self, rule: str, job: str | None = None) -> str:
        return f"{self.logs}/{rule}.log" if job is None else f"{self.logs}/{rule}/{job}.log"


# Paths relative to a run's results folder.
RELATIVE = Layout("")
