"""The method table: every fact about an engine method, in one row.

An *engine method* is an algorithm `lrmerge merge` runs (`ties_sv`); a *merge entry* of the workflow
config (`merge.methods.ties_auto`) names one engine method with its parameters. Everything that
needs to know about methods derives from this table: the native and mergekit config parsers,
`merge-config`'s flags, the workflow's config checks and its `merge-config` arguments, the schema's
method enum (a test holds them equal), `plan`'s input counts, the report's labels and the docs'
method table (a test holds them equal). Adding a method = a row here + its function in `methods`
(registered under the same name) + its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import MergeError


@dataclass(frozen=True)
class Param:
    """One parameter of a method's native config (and, with `workflow`, of a merge entry)."""

    key: str
    kind: str  # fraction | number | count | seed | bool | model | choice | slack | target
    help: str
    default: Any = None
    required: bool = False  # in a native merge config
    choices: tuple[str, ...] = ()
    # In a workflow merge entry: "optional", "required", or "" (the workflow sets it, or never does)
    workflow: str = "optional"
    mergekit: bool = False  # a mergekit YAML gives it, by this name, under top-level parameters


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # the report's and the docs' label
    summary: str
    citation: str
    params: tuple[Param, ...] = ()
    reads_base: bool = True  # task vectors are taken against a base model
    # exactly two models (a language model and a task model) whose weights the method fixes itself
    # (chat_vector: 1 and r; layer_swap: per layer); in the workflow: one CT model with SFT-flan
    fixed_pair: bool = False
    elects_signs: bool = False  # TIES-style sign election, so the stats report discarded entries
    normalizes: bool = False  # divides by the summed weights (average and TIES do by definition)
    mergekit: str | None = None  # mergekit's merge_method of the same arithmetic
    mergekit_note: str = ""  # why there is none, for the error a mergekit YAML gets
    in_workflow: bool = True  # a workflow merge entry may name it
    # parameters the workflow sets itself: protect and task_model are always SFT-flan
    workflow_fixed: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def param(self, key: str) -> Param | None:
        return next((p for p in self.params if p.key == key), None)

    @property
    def workflow_keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params if p.workflow)

    @property
    def workflow_required(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params if p.workflow == "required")

    @property
    def trims(self) -> bool:
        """Keeps a share of each task vector (density)."""
        return self.param("density") is not None


# Parameters shared by several methods: one definition each.
DENSITY = Param("density", "fraction", "share of each task vector's entries kept", required=True,
                workflow="required")
LAMBDA = Param("lambda", "number", "scale of the merged task vector", default=1.0)
VOTE = Param("vote", "choice", "sign election weighted by the merge weights, or one vote a model",
             default="weighted", choices=("weighted", "unweighted"), workflow="")
TRIM_SCOPE = Param("trim_scope", "choice", "trim each tensor, or the whole model at one threshold",
                   default="tensor", choices=("tensor", "model"), workflow="")
SEED = Param("seed", "seed", "seed of DARE's random drops", default=0, workflow="")

METHOD_TABLE: dict[str, Method] = {m.name: m for m in (
    Method(
        "average", "Average", "weighted mean of the models' weights",
        "Wortsman et al., Model soups, ICML 2022", reads_base=False, normalizes=True,
        mergekit="linear",
    ),
    Method(
        "task_arithmetic", "Task arithmetic",
        "base + lambda * sum of weighted task vectors",
        "Ilharco et al., Editing models with task arithmetic, ICLR 2023", params=(LAMBDA,),
        mergekit="task_arithmetic",
    ),
    Method(
        "ties", "TIES", "trim each task vector to its largest entries, elect signs, mean of agreeing",
        "Yadav et al., TIES-Merging, NeurIPS 2023", params=(DENSITY, LAMBDA, TRIM_SCOPE, VOTE),
        elects_signs=True, normalizes=True, mergekit="ties",
    ),
    Method(
        "ties_sv", "TIES-SV",
        "TIES that reserves a slack of the protected model's otherwise discarded entries",
        "this study (paper-recipe.md)",
        params=(
            DENSITY, LAMBDA,
            Param("slack", "slack", "share of the protected model's candidates reserved, or auto",
                  default=0.0, workflow="required"),
            Param("target_discarded", "target",
                  "slack auto: the protected model's discarded fraction to reach per tensor (a "
                  "fraction, or a merge_stats.json of per-tensor targets)"),
            Param("protect", "model", "the model whose discarded entries the slack reserves",
                  required=True, workflow=""),
            TRIM_SCOPE, VOTE,
        ),
        elects_signs=True, normalizes=True, mergekit_note="TIES-SV (slack) has no mergekit equivalent",
        workflow_fixed={"protect": "sft"},
    ),
    Method(
        "dare_ties", "DARE-TIES", "drop task-vector entries at random, rescale, then TIES",
        "Yu et al., Language models are Super Mario, ICML 2024",
        params=(DENSITY, LAMBDA, VOTE, SEED), elects_signs=True, mergekit="dare_ties",
    ),
    Method(
        "dare_linear", "DARE", "drop task-vector entries at random, rescale, add",
        "Yu et al., Language models are Super Mario, ICML 2024",
        params=(DENSITY, LAMBDA, SEED), mergekit="dare_linear",
    ),
    Method(
        "breadcrumbs", "Breadcrumbs",
        "drop each task vector's largest (gamma) and smallest entries, keep density, add",
        "Davari and Belilovsky, Model Breadcrumbs, ECCV 2024",
        params=(DENSITY,
                Param("gamma", "fraction", "share of each task vector's largest entries dropped",
                      default=0.01, mergekit=True),
                LAMBDA),
        mergekit="breadcrumbs",
    ),
    Method(
        "chat_vector", "Chat vector", "CT + r (SFT - base)",
        "Huang et al., Chat Vector, ACL 2024",
        params=(
            Param("ratio", "number", "r in CT + r (SFT - base)", default=1.0),
            Param("skip_embed", "bool", "keep the CT model's embeddings and LM head",
                  default=False),
        ),
        fixed_pair=True,
        mergekit_note="a chat vector is mergekit's task_arithmetic with weights 1 (CT) and r "
                      "(SFT); write that, or a native config",
    ),
    Method(
        "layer_swap", "Layer swap",
        "the task model's middle layers between the language model's bottom and top layers",
        "Bandarkar et al., Layer swapping for zero-shot cross-lingual transfer, ICLR 2025",
        params=(
            Param("task_model", "model", "the model whose middle layers are kept", required=True,
                  workflow=""),
            Param("bottom", "count", "layers taken from the language model at the bottom",
                  default=0),
            Param("top", "count", "layers taken from the language model at the top", default=0),
            Param("transition", "count", "blended layers at each boundary", default=0),
            Param("embed_from", "model", "the model the embeddings come from (default: the "
                  "language model)"),
            Param("head_from", "model", "the model the final norm and LM head come from "
                  "(default: the language model)"),
        ),
        reads_base=False, fixed_pair=True, normalizes=True,
        mergekit_note="layer swapping has no mergekit equivalent (its slices cannot blend "
                      "transition layers or pick embeddings and head from another model)",
        workflow_fixed={"task_model": "sft"},
    ),
)}

ENGINE_METHODS = tuple(METHOD_TABLE)
WORKFLOW_METHODS = tuple(n for n, m in METHOD_TABLE.items() if m.in_workflow)
MERGEKIT_NAMES = {m.mergekit: m.name for m in METHOD_TABLE.values() if m.mergekit}
# Keys every native config may give, whatever its method.
COMMON_KEYS = ("method", "base", "models", "weight", "dtype", "out_dtype")
PARAM_KEYS = tuple(dict.fromkeys(p.key for m in METHOD_TABLE.values() for p in m.params))
MERGEKIT_PARAM_KEYS = tuple(dict.fromkeys(p.key for m in METHOD_TABLE.values() for p in m.params
                                          if p.mergekit))


def method(name: str, where: str = "method") -> Method:
    """The table row of `name`, or an error naming the key and the known methods."""
    if name not in METHOD_TABLE:
        raise MergeError(f"{where}: unknown method {name!r} (known: {', '.join(ENGINE_METHODS)})")
    return METHOD_TABLE[name]


def methods_with(key: str) -> list[str]:
    """The methods that take parameter `key`."""
    return [m.name for m in METHOD_TABLE.values() if m.param(key) is not None]
