"""The sweep's cost from the config alone: `lrmerge plan [--config F] [--format table|json]`.

A small model of each rule's jobs from the config alone (no SLURM, no model download):
- training: tokens x FLOPs per token / (GPU peak x MFU). FLOPs per token come from the base
  model's sizes (its local config.json, else `plan.model`; the mini: `mini.model`) with the
  train stage's own formula; each CT budget trains only its increment over the previous one;
- evaluation: prompt tokens x 2 x parameters at the same MFU, plus generated tokens at
  `plan.decode_tokens_per_s`; items from the task table (published sizes where unread);
- merges: bytes read and written at `plan.merge_gb_per_s`;
- tokenizing: tokens at `plan.tokenize_tokens_per_s` per job (CPU); a language's extended tokenizer
  (`tokenizer: {extend: K}`): its `sample_chars` at `plan.extend_chars_per_s` (one CPU process);
- an extended vocabulary: the language's CT model, CT-SFT model and merges have K more rows in
  the output layer (6 x K x hidden more FLOPs per trained token, tied or not: the head's matmul
  runs over every row) and in the input embedding (more parameters, no FLOPs: a lookup); a
  merge's output the union of its models' vocabularies (at most the sum of their K);
- disk: what stays (token shards at 2 bytes a token, 4 above 65,536 tokens; checkpoints at
  `save_dtype`, merged models in bf16) and, as `transient_gb`, the optimizer state (fp32 master
  weights and two AdamW moments: 12 bytes a parameter) held between budgets, one per language
  with `keep_optimizer: next`.
GPU-hours count every GPU of a job; a job's wall time is its GPU-hours over its GPUs.

`--calibrate DIR --pilot-config F` replaces these assumptions, rule by rule, with what a pilot run
measured (lrmerge.plan.pilot) and prints both plans side by side.

Below the table, per corpus, the target and English tokens each budget reads and what the data
stage prepares (lrmerge.plan.corpora); each extended language also gets the characters of
target-language text its budgets buy and the CT tokens (target + English) and GPU-hours it needs
to read the same characters as its base-tokenizer counterpart (lrmerge.plan.vocab).
"""

from __future__ import annotations

import json
from pathlib import Path

from lrmerge.config import extends_vocabulary, job_resources, language_entry

from .corpora import corpus_needs, format_corpora
from .flops import _duration, _params, extension_rows, train_flops
from .vocab import format_vocabulary, same_characters

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_BYTES = 12  # fp32 master weights + AdamW's two moments, per parameter
TRAINING_RULES = ("pretrain_base", "continual_pretrain", "finetune_sft", "ct_then_sft")
# The `plan` keys each rule's cost rests on where no pilot measured it.
ASSUMED_KEYS = {**{rule: ("mfu",) for rule in TRAINING_RULES},
                "extend_tokenizer": ("extend_chars_per_s",),
                "prepare_corpus": ("tokenize_tokens_per_s",),
                "prepare_sft_data": ("tokenize_tokens_per_s",),
                "merge": ("merge_gb_per_s",),
                "evaluate": ("eval_prompt_tokens", "mfu", "decode_tokens_per_s")}


def model_sizes(cfg: dict) -> tuple[dict, str]:
    """The base model's config.json sizes, and where they came from."""
    if cfg["base_model"] is None:
        m = dict(cfg["mini"]["model"])
        m.setdefault("vocab_size", cfg["mini"]["tokenizer_vocab"])
        return m, "mini.model"
    local = Path(cfg["base_model"]) / "config.json"
    if local.is_file():
        with open(local, encoding="utf-8") as fh:
            return json.load(fh), str(local)
    if cfg["plan"]["model"]:
        return dict(cfg["plan"]["model"]), "plan.model"
    raise ValueError(f"base_model {cfg['base_model']!r} is not a local folder with config.json; "
                     "give its sizes in config key plan.model (hidden_size, intermediate_size, "
                     "num_hidden_layers, num_attention_heads, vocab_size)")


def token_bytes(vocab_size: int) -> int:
    """Bytes a token takes in the shards (lrmerge.data.shards.token_dtype)."""
    return 2 if vocab_size <= 65536 else 4


class _Costs:
    """The per-rule totals `plan` adds jobs to, and the rates it costs them at: a pilot's
    measured figure for a rule where there is one, else the config's assumption."""

    def __init__(self, cfg: dict, measured: dict[str, dict]):
        self.cfg, self.p, self.measured = cfg, cfg["plan"], measured
        self.rules: dict[str, dict] = {}

    def rate(self, rule: str, figure: str, assumed) -> float:
        return float(self.measured[rule][figure]) if rule in self.measured else float(assumed)

    def achieved(self, rule: str) -> float:
        """FLOP/s per GPU."""
        return float(self.p["peak_tflops"]) * 1e12 * self.rate(rule, "mfu", self.p["mfu"])

    def add(self, rule, jobs, gpu_seconds=0.0, cpu_seconds=0.0, disk_bytes=0.0, **extra):
        gpus = int(job_resources(self.cfg, rule).get("gpu") or 0)
        basis = "measured" if rule in self.measured else "assumed"
        r = self.rules.setdefault(rule, {"jobs": 0, "gpus_per_job": gpus, "gpu_hours": 0.0,
                                         "wall_hours": 0.0, "disk_gb": 0.0, "basis": basis})
        r["jobs"] += jobs
        if gpus:
            r["gpu_hours"] += gpu_seconds / 3600
            wall = gpu_seconds / gpus if gpu_seconds else cpu_seconds
        else:  # a CPU job (the mini's training): its device time is its wall time
            wall = gpu_seconds + cpu_seconds
        r["wall_hours"] += wall / 3600
        r["disk_gb"] += disk_bytes / 1e9
        for k, v in extra.items():
            r[k] = r.get(k, 0) + v


def plan(cfg: dict, measured: dict[str, dict] | None = None,
         results: str | Path | None = None) -> dict:
    """The sweep's cost per rule. `measured`: rule -> the figure a pilot measured for it, which
    replaces the rule's assumption: {"mfu"} (training), {"tokens_per_s"} (tokenizing),
    {"bytes_per_s"} (merge), {"seconds_per_item"} (evaluate, already scaled to the sweep).
    `results`: the sweep's results/{run} (default: under the working directory), where the
    same-characters figures of extended vocabularies look for measured characters per token."""
    p = cfg["plan"]
    sizes, source = model_sizes(cfg)
    mm, n_params = _params(sizes)
    costs = _Costs(cfg, measured or {})
    ct_data = corpus_needs(cfg)
    _data_costs(costs, sizes, ct_data["corpora"])
    ct_fpt, sft_fpt = _training_costs(costs, sizes)
    _merge_costs(costs, sizes)
    _evaluation_costs(costs, sizes)
    rules = costs.rules
    total = {"gpu_hours": sum(r["gpu_hours"] for r in rules.values()),
             "disk_gb": sum(r["disk_gb"] for r in rules.values()),
             "train_tokens": sum(rules[r].get("tokens", 0) for r in TRAINING_RULES if r in rules)}
    model = {"source": source, "params": n_params, "matmul_params": mm,
             "ct_flops_per_token": ct_fpt, "sft_flops_per_token": sft_fpt,
             "gpu": p["gpu"], "peak_tflops": p["peak_tflops"], "mfu": p["mfu"]}
    doc = {"model": model, "rules": rules, "total": total, "ct_data": ct_data}
    vocabulary = same_characters(cfg, sizes, costs.achieved("continual_pretrain"), results)
    if vocabulary:
        doc["vocabulary"] = vocabulary
    return doc


def _sft_tokens(cfg: dict) -> int:
    sft = cfg["sft"]
    return sft["steps"] * sft["batch_size"] * sft["seq_len"]


def _data_costs(costs: _Costs, sizes: dict, corpora: list[dict]) -> None:
    """Each extended tokenizer learned once (its sample of the corpus read at
    plan.extend_chars_per_s; the folder's few MB not counted), each corpus tokenized once with
    its language's tokenizer (2 bytes a token up to 65,536 tokens, else 4), as many tokens as
    the data stage prepares (`corpora`: corpus_needs)."""
    cfg, p = costs.cfg, costs.p
    for lang in cfg["languages"]:
        if extends_vocabulary(cfg, lang):
            chars = language_entry(cfg, lang)["tokenizer"]["sample_chars"]
            costs.add("extend_tokenizer", 1, cpu_seconds=chars / p["extend_chars_per_s"],
                      characters=chars)
    for entry in corpora:
        corpus, n = entry["corpus"], entry["prepared"]
        rows = extension_rows(cfg, corpus) if corpus != "en" else 0
        rate = costs.rate("prepare_corpus", "tokens_per_s", p["tokenize_tokens_per_s"])
        costs.add("prepare_corpus", 1, cpu_seconds=n / rate,
                  disk_bytes=token_bytes(sizes["vocab_size"] + rows) * n, tokens=n)
    n = _sft_tokens(cfg)
    rate = costs.rate("prepare_sft_data", "tokens_per_s", p["tokenize_tokens_per_s"])
    costs.add("prepare_sft_data", 1, cpu_seconds=n / rate,
              disk_bytes=token_bytes(sizes["vocab_size"]) * n, tokens=n)


def _training_costs(costs: _Costs, sizes: dict) -> tuple[float, float]:
    """The training rules' jobs; returns the base model's (CT, SFT) FLOPs per token. A language
    with an extended tokenizer trains (CT, then CT-SFT) a model with its K more rows."""
    cfg = costs.cfg
    n_params = _params(sizes)[1]
    if cfg["base_model"] is None:  # the mini pre-trains its own base
        pt = cfg["pretrain"]
        pt_tokens = pt["steps"] * pt["batch_size"] * pt["seq_len"]
        costs.add("pretrain_base", 1, disk_bytes=n_params * 4, tokens=pt_tokens,
                  gpu_seconds=pt_tokens * train_flops(sizes, pt["seq_len"])
                  / costs.achieved("pretrain_base"))
    ct, sft = cfg["continual_pretrain"], cfg["sft"]
    keep_all = ct["keep_optimizer"] == "all"
    sft_tokens = _sft_tokens(cfg)
    transient = 0
    ct_models = []
    for lang, facts in cfg["languages"].items():
        rows = extension_rows(cfg, lang)
        ct_fpt, params = train_flops(sizes, ct["seq_len"], rows), _params(sizes, rows)[1]
        budgets = facts["budgets"]
        for i, tokens in enumerate(budgets):
            step = tokens - (budgets[i - 1] if i else 0)  # each budget continues the previous one
            # keep_optimizer: all keeps every non-final budget's state; next deletes it once
            # the following budget has read it (one state per language at a time)
            state = params * OPTIMIZER_BYTES if keep_all and i < len(budgets) - 1 else 0
            costs.add("continual_pretrain", 1, tokens=step,
                      gpu_seconds=step * ct_fpt / costs.achieved("continual_pretrain"),
                      disk_bytes=params * BYTES[ct["save_dtype"]] + state)
            ct_models.append((rows, params))
        if len(budgets) > 1 and not keep_all:
            transient += params * OPTIMIZER_BYTES
    costs.rules["continual_pretrain"]["transient_gb"] = transient / 1e9
    costs.add("finetune_sft", 1, tokens=sft_tokens,
              gpu_seconds=sft_tokens * train_flops(sizes, sft["seq_len"])
              / costs.achieved("finetune_sft"),
              disk_bytes=n_params * BYTES[sft["save_dtype"]])
    for rows, params in ct_models:  # SFT on each CT model
        costs.add("ct_then_sft", 1, tokens=sft_tokens,
                  gpu_seconds=sft_tokens * train_flops(sizes, sft["seq_len"], rows)
                  / costs.achieved("ct_then_sft"),
                  disk_bytes=params * BYTES[sft["save_dtype"]])
    return train_flops(sizes, ct["seq_len"]), train_flops(sizes, sft["seq_len"])


def merge_inputs(m) -> int:
    """The models a merge reads: its CT models, SFT-flan, and the base where the method takes
    task vectors against one (lrmerge.merge.table)."""
    return len(m.languages) + 1 + (1 if m.row.reads_base else 0)


def merge_rows(cfg: dict, languages) -> int:
    """The new vocabulary rows of a merge of these languages' CT models: the union of their
    extensions, at most the sum of their K (the plan counts the sum)."""
    return sum(extension_rows(cfg, lang) for lang in languages)


def _merge_costs(costs: _Costs, sizes: dict) -> None:
    """Each merge reads its inputs and writes the result (streamed, bf16): each CT model at its
    own vocabulary, SFT-flan and the base at the base's, the result at the union's."""
    from lrmerge.config import plan_merges

    cfg = costs.cfg
    base_bytes = _params(sizes)[1] * 2
    rate = costs.rate("merge", "bytes_per_s", costs.p["merge_gb_per_s"] * 1e9)
    for m in plan_merges(cfg):
        out_bytes = _params(sizes, merge_rows(cfg, m.languages))[1] * 2
        ct_bytes = sum(_params(sizes, extension_rows(cfg, lg))[1] * 2 for lg in m.languages)
        others = merge_inputs(m) - len(m.languages)  # SFT-flan, and the base where read
        moved = ct_bytes + others * base_bytes + out_bytes
        costs.add("merge", 1, cpu_seconds=moved / rate, disk_bytes=out_bytes)


def _evaluation_costs(costs: _Costs, sizes: dict) -> None:
    """Every model on the tasks of its languages, each shot set; a model of an extended
    vocabulary at its own matmul parameters (`plan.eval_prompt_tokens` stays as assumed)."""
    from lrmerge.config import plan_merges, plan_models

    p, cfg = costs.p, costs.cfg
    items = _eval_items(cfg)
    merged = {m.id: m.languages for m in plan_merges(cfg)}
    for model in plan_models(cfg):
        if model.kind in ("ct", "ct_sft"):
            rows = extension_rows(cfg, model.language)
        else:
            rows = merge_rows(cfg, merged.get(model.id, ()))
        mm = _params(sizes, rows)[0]
        n_items = sum(items.get(lang, (0, 0))[0] for lang in model.eval_languages)
        gen = sum(items.get(lang, (0, 0))[1] for lang in model.eval_languages)
        if "evaluate" in costs.measured:
            seconds = n_items * float(costs.measured["evaluate"]["seconds_per_item"])
        else:
            prompt_flops = n_items * p["eval_prompt_tokens"] * 2.0 * mm
            seconds = prompt_flops / costs.achieved("evaluate") + gen / p["decode_tokens_per_s"]
        costs.add("evaluate", 1, gpu_seconds=seconds, items=n_items)


def _eval_items(cfg: dict) -> dict[str, tuple[int, int]]:
    """lang -> (items x shot sets, generated tokens) over its tasks (built-in lm-eval tasks,
    whose size is unknown here, count 0)."""
    from lrmerge.config import language_entry
    from lrmerge.evaluate.tasks import task_spec, test_items

    sets = len(cfg["evaluate"]["shot_seeds"])
    out = {}
    for lang in [*cfg["languages"], "en"]:
        items = gen = 0
        for task in language_entry(cfg, lang)["tasks"]:
            spec = task_spec(cfg, task)
            n = (test_items(cfg, lang, task, spec)[0] or 0) * (sets if spec["shots"] else 1)
            items += n
            gen += n * spec["max_gen_toks"] if spec["protocol"] == "generate" else 0
        out[lang] = (items, gen)
    return out


def format_table(doc: dict) -> str:
    m = doc["model"]
    lines = [f"model: {m['params'] / 1e9:.2f}B parameters ({m['source']}), "
             f"{m['ct_flops_per_token'] / 1e9:.1f} GFLOP per CT token; "
             f"{m['gpu']} at {m['peak_tflops']:g} TFLOPS x MFU {m['mfu']:g}",
             f"{'RULE':<20}{'JOBS':>6}{'GPUS/JOB':>10}{'GPU-HOURS':>12}{'WALL/JOB':>12}"
             f"{'DISK GB':>10}"]
    for rule, r in doc["rules"].items():
        per_job = r["wall_hours"] / r["jobs"] if r["jobs"] else 0.0
        lines.append(f"{rule:<20}{r['jobs']:>6}{r['gpus_per_job']:>10}{r['gpu_hours']:>12,.1f}"
                     f"{_duration(per_job):>12}{r['disk_gb']:>10,.1f}")
    t = doc["total"]
    lines.append(f"{'total':<20}{sum(r['jobs'] for r in doc['rules'].values()):>6}{'':>10}"
                 f"{t['gpu_hours']:>12,.1f}{'':>12}{t['disk_gb']:>10,.1f}")
    lines.append(f"training tokens: {t['train_tokens'] / 1e9:,.2f}B")
    transient = doc["rules"].get("continual_pretrain", {}).get("transient_gb", 0.0)
    if transient:
        lines.append(f"optimizer state between CT budgets: up to {transient:,.0f} GB more")
    lines += format_corpora(doc["ct_data"])
    lines += format_vocabulary(doc.get("vocabulary", []))
    return "\n".join(lines)

