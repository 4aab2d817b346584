"""Running: one lm-eval process per model for all the tasks of its languages.

Reads the task folders written by `lrmerge.evaluate.tasks.build` (their `tasks.json`), runs every
lm-eval task in them (one per shot set) plus the built-in lm-eval tasks named there, and writes one
JSON per model. Each task entry carries its own metadata, so the report never guesses:

    {"task", "family", "language", "kind", "source", "protocol", "metric", "score", "stderr",
     "n", "n_shot", "shot_sets", "per_set": {set: score}, "per_set_stderr": {...},
     "macro_f1", "debris", "predictions": {label: count, "<unparsed>": count},
     "predictions_per_set": {set: {...}},
     "prompt_tokens": {"mean", "median", "max", "total"}, "prompt_tokens_per_set": {set: {...}},
     "prompt_chars": {...}, "choice_tokens": {...}, "prompt_bos", "prompt_truncated",
     "limit", "limit_seed", "n_items_full", "sample_hash", "sample_indices"}

score is the mean over the shot sets; stderr is the mean of their lm-eval standard errors (the sets
share their test items, so their errors are correlated and this is the fully correlated case).
debris counts generations with undecodable bytes over all sets. predictions (classification,
not built-in tasks) counts how often each candidate label was the answer, over all sets, so a model
that always answers one label is visible; the sample fields say which items evaluate.limit chose
(lrmerge.evaluate.limit), copied from tasks.json.

The prompt fields say what the prompts cost under the model's own tokenizer (issue 17: an extended
vocabulary reads a language in fewer tokens), one prompt per item and shot set of lm-eval's logged
samples, the exact context strings it fed the model (few-shot examples included), encoded by the
evaluated LM itself and recorded while it runs (TokenCounter: no second tokenizer or model load,
no second encoding): prompt_tokens over all sets' items, prompt_tokens_per_set per set;
prompt_chars the characters of the same strings, so total chars / total tokens is the prompts'
characters per token. Generation counts the context as generate_until's tok_batch_encode encoded
it; log-likelihood counts the token ids lm-eval's _encode_pair made of each request: the context
less its trailing whitespace (moved to the continuation), and choice_tokens sums each item's
continuation tokens over its candidates (None under generation).
Counts include whatever special tokens the tokenizer adds: prompt_bos says whether the encoded
prompts begin with BOS (Llama-2's tokenizer adds one). prompt_truncated counts the prompts lm-eval
cut on the left to fit the model's window (context plus max_gen_toks, or context plus candidate);
the token counts are the lengths before that cut. With an LM that has no tokenizer (a test's
scripted LM) only prompt_chars is recorded; the token fields are None.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path

from lrmerge import fsutil
from lrmerge.config import language_entry
from lrmerge.evaluate.tasks import MANIFEST

# Idle OpenMP threads sleep instead of spinning (see lrmerge.train: spinning is 10x slower on
# shared cores). Set before lm-eval imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The headline metric of a built-in lm-eval task, first present wins.
METRIC_ORDER = ("acc", "exact_match", "f1", "acc_norm")
# An answer that is none of the candidate labels (generate protocol).
UNPARSED = "<unparsed>"
# What tasks.json records of each task's evaluate.limit sample; the eval file copies it.
SAMPLE_KEYS = ("limit", "limit_seed", "n_items_full", "sample_hash", "sample_indices")


def read_manifests(cfg: dict, langs: list[str], tasks_dir: str | Path) -> dict[str, dict]:
    """task -> metadata for the configured tasks of `langs`, from their task folders."""
    out = {}
    for lang in langs:
        path = Path(tasks_dir) / lang / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run `lrmerge tasks --write` for {lang})")
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        for task in language_entry(cfg, lang)["tasks"]:
            if task not in manifest["tasks"]:
                raise ValueError(f"{path}: no task {task!r}; the folder is older than the "
                                 "config, rebuild it")
            meta = manifest["tasks"][task]
            if any(k not in meta for k in SAMPLE_KEYS):
                raise ValueError(f"{path}: task {task!r} has no record of its evaluate.limit "
                                 "sample; the folder is older than lrmerge, rebuild it")
            out[task] = dict(meta, task=task, folder=str(path.parent))
    return out


def _metric(res: dict, name: str):
    """(value, stderr) of `name` in lm-eval's {"acc,none": .9, "acc_stderr,none": .01} form."""
    value = stderr = None
    for key, v in res.items():
        if "," not in key or not isinstance(v, int | float):
            continue
        metric = key.split(",", 1)[0]
        if metric == name and value is None:
            value = float(v)
        elif metric == f"{name}_stderr" and stderr is None:
            stderr = float(v) if v == v else None
    return value, stderr


def _finite(x):
    return x if x is not None and math.isfinite(x) else None


def label_counts(task: str, samples: list[dict]) -> dict[str, int]:
    """How often each candidate label was the answer in lm-eval's logged samples of one shot
    set. The answer is the one the scoring read (lrmerge.evaluate.scoring records it as the
    second of each item's macro_f1 pair, lower-cased): never parsed a second way here."""
    labels = sorted({c for s in samples for c in s["doc"]["choices"]})
    by_lower = {c.lower(): c for c in labels}
    counts = dict.fromkeys(labels + [UNPARSED], 0)
    for s in samples:
        if "macro_f1" not in s:
            raise RuntimeError(f"task {task}: lm-eval's sample of item {s.get('doc_id')} has no "
                               "macro_f1 pair (is its YAML lrmerge's classification template?)")
        counts[by_lower.get(s["macro_f1"][1], UNPARSED)] += 1
    return counts


def predictions(meta: dict, samples: dict) -> tuple[dict | None, dict | None]:
    """(label counts over all shot sets, per set) of a classification task; None otherwise."""
    if meta["family"] != "classification" or meta["kind"] == "builtin":
        return None, None
    absent = [name for name in meta["lm_eval_tasks"].values() if not samples.get(name)]
    if absent:
        raise RuntimeError(f"task {meta['task']}: lm-eval logged no samples for {absent}, so "
                           "its answers cannot be counted")
    per_set = {k: label_counts(meta["task"], samples[name])
               for k, name in meta["lm_eval_tasks"].items()}
    total: dict[str, int] = {}
    for counts in per_set.values():
        for label, n in counts.items():
            total[label] = total.get(label, 0) + n
    return total, per_set if meta["shot_sets"] else None


def _stats(values: list[int]) -> dict:
    return {"mean": round(sum(values) / len(values), 2), "median": statistics.median(values),
            "max": max(values), "total": sum(values)}


def _items(samples: list[dict]) -> list[dict]:
    """One logged sample per item: lm-eval logs an item once per filter (MGSM's built-in task has
    two filters)."""
    seen, out = set(), []
    for s in samples:
        if s["doc_id"] not in seen:
            seen.add(s["doc_id"])
            out.append(s)
    return out


class TokenCounter:
    """The evaluated LM's own encodings of the prompts it was fed, recorded while lm-eval runs, so
    that nothing is tokenized a second time (lm-eval's HFLM; a scripted LM without a tokenizer
    has none: `of` is None). `recording()` wraps two methods of the LM:
    - `_loglikelihood_tokens` receives every (context, continuation) request with the token ids
      lm-eval's loglikelihood made of it (`_encode_pair`);
    - `tok_batch_encode` is how generate_until encodes its contexts (left padding, cut on the
      left to max_length - max_gen_toks): a row's attention mask counts its tokens. A context
      that filled that window is encoded once more, uncut, to know its length.
    (Encoding every prompt again after the run cost a tenth to a quarter of the CPU of a tiny
    model's evaluation: 0.13 s of 1.4 s generating, 0.5 s of 2 s under loglik.)"""

    WRAPPED = ("_loglikelihood_tokens", "tok_batch_encode")

    def __init__(self, lm):
        self.lm = lm
        self.pairs: dict[tuple, tuple[int, int, bool]] = {}  # (ctx, cont) -> ctx n, cont n, BOS
        self.contexts: dict[str, tuple[int, bool, int | None]] = {}  # ctx -> n, BOS, window

    @classmethod
    def of(cls, lm) -> TokenCounter | None:
        """A counter for `lm`; None for an LM without a tokenizer. An LM with a tokenizer but
        not the methods recorded (another backend, or an lm-eval that renamed them) fails."""
        if getattr(lm, "tokenizer", None) is None:
            return None
        missing = [a for a in (*cls.WRAPPED, "max_length") if not hasattr(lm, a)]
        if missing:
            raise RuntimeError(f"{type(lm).__name__} has no {', '.join(missing)}: its prompts' "
                               "tokens cannot be recorded (lrmerge.evaluate.run.TokenCounter)")
        return cls(lm)

    @contextlib.contextmanager
    def recording(self):
        lm = self.lm
        own = {name: vars(lm)[name] for name in self.WRAPPED if name in vars(lm)}
        pairs_tokens, batch_encode = lm._loglikelihood_tokens, lm.tok_batch_encode
        bos_id = lm.tokenizer.bos_token_id

        def pairs_recorded(requests, *args, **kwargs):
            for key, ctx, cont in requests:  # ((context, continuation), context ids, cont. ids)
                self.pairs[key] = (len(ctx), len(cont), bool(ctx) and ctx[0] == bos_id)
            return pairs_tokens(requests, *args, **kwargs)

        def contexts_recorded(strings, *args, **kwargs):
            ids, mask = batch_encode(strings, *args, **kwargs)
            window = kwargs.get("left_truncate_len", args[1] if len(args) > 1 else None)
            for row, (text, n) in enumerate(zip(strings, mask.sum(1).tolist(), strict=True)):
                first = int(ids[row, ids.shape[1] - n]) if n else None  # left padding
                self.contexts[text] = (n, first is not None and first == bos_id, window)
            return ids, mask

        lm._loglikelihood_tokens, lm.tok_batch_encode = pairs_recorded, contexts_recorded
        try:
            yield self
        finally:
            for name in self.WRAPPED:  # the LM's own methods again
                if name in own:
                    setattr(lm, name, own[name])
                else:
                    delattr(lm, name)

    def _seen(self, record: dict, key, task: str):
        if key not in record:
            raise RuntimeError(f"task {task}: lm-eval's request {key!r:.120} was not seen by the "
                               "token counter (has lm-eval's HFLM changed?)")
        return record[key]

    def generate(self, task: str, context: str) -> tuple[int, bool, bool]:
        """(tokens, begins with BOS, cut to the window) of one generation context."""
        n, bos, window = self._seen(self.contexts, context, task)
        if window and n >= window:  # filled the window: its length before the cut
            n = int(self.lm.tok_batch_encode([context])[1].sum())
        return n, bos, bool(window) and n > window

    def loglik(self, task: str, pairs: list) -> tuple[int, int, bool, bool]:
        """(context tokens, continuation tokens over the candidates, begins with BOS, cut to the
        window) of one item's (context, continuation) requests."""
        ctx_n, cont_n, bos, cut = 0, 0, False, False
        for pair in pairs:
            ctx_n, n, bos = self._seen(self.pairs, tuple(pair), task)
            cont_n += n
            cut = cut or ctx_n + n > self.lm.max_length + 1
        return ctx_n, cont_n, bos, cut


def prompt_lengths(meta: dict, samples: dict, counter: TokenCounter | None = None) -> dict:
    """The prompt fields of one task's entry (see the module docstring) from lm-eval's logged
    samples of its shot sets; the token fields None without a counter."""
    sets = meta["lm_eval_tasks"]
    absent = [name for name in sets.values() if not samples.get(name)]
    if absent:
        raise RuntimeError(f"task {meta['task']}: lm-eval logged no samples for {absent}, so "
                           "its prompt lengths cannot be counted")
    chars, per_set, choices, bos, truncated = [], {}, [], None, 0
    for k, name in sets.items():
        args = [s["arguments"] for s in _items(samples[name])]
        generate = isinstance(args[0][0][1], dict)  # (context, gen_kwargs); else per candidate
        if generate:
            chars += [len(a[0][0]) for a in args]
        else:  # _encode_pair moves the context's trailing whitespace to the continuation
            chars += [len(a[0][0].rstrip()) for a in args]
        if counter is None:
            continue
        tokens = []
        for a in args:
            if generate:
                n, bos, cut = counter.generate(meta["task"], a[0][0])
            else:
                n, c, bos, cut = counter.loglik(meta["task"], a)
                choices.append(c)
            tokens.append(n)
            truncated += cut
        per_set[k] = tokens
    out = {"prompt_tokens": None, "prompt_tokens_per_set": None, "prompt_chars": _stats(chars),
           "choice_tokens": None, "prompt_bos": None, "prompt_truncated": None}
    if counter is not None:
        out.update(prompt_tokens=_stats([n for v in per_set.values() for n in v]),
                   prompt_tokens_per_set=({k: _stats(v) for k, v in per_set.items()}
                                          if meta["shot_sets"] else None),
                   choice_tokens=_stats(choices) if choices else None, prompt_bos=bos,
                   prompt_truncated=truncated)
    return out


def task_entry(meta: dict, results: dict, n_samples: dict, samples: dict,
               counter: TokenCounter | None = None) -> dict:
    """Our entry of one task from lm-eval's results (and logged samples) of its shot sets;
    `counter` counts the prompts' tokens."""
    task = meta["task"]
    sets = meta["lm_eval_tasks"]
    missing = [name for name in sets.values() if name not in results]
    if missing:
        raise RuntimeError(f"task {task}: lm-eval returned no result for {missing} "
                           f"(source {meta['source']})")
    metric = meta["metric"]
    if metric is None:  # built-in: lm-eval's own headline metric
        res = results[next(iter(sets.values()))]
        metric = next((m for m in METRIC_ORDER if _metric(res, m)[0] is not None), None)
        if metric is None:
            raise RuntimeError(f"task {task}: lm-eval's result has none of the metrics "
                               f"{', '.join(METRIC_ORDER)}: {sorted(res)}")
    per_set, per_set_se, f1s, debris, ns = {}, {}, [], 0, []
    for k, name in sets.items():
        res = results[name]
        value, se = _metric(res, metric)
        if value is None:
            raise RuntimeError(f"task {task}: lm-eval's result for {name} has no {metric}")
        per_set[k], per_set_se[k] = value, _finite(se)
        n = (n_samples.get(name) or {}).get("effective")
        ns.append(n)
        f1 = _metric(res, "macro_f1")[0]
        if f1 is not None:
            f1s.append(f1)
        frac = _metric(res, "debris")[0]
        if frac is not None and n:
            debris += round(frac * n)
    scores = list(per_set.values())
    ses = [s for s in per_set_se.values() if s is not None]
    entry = {k: meta[k] for k in ("family", "language", "kind", "source", "protocol", "n_shot",
                                  "shot_sets")}
    entry.update(task=task, metric=metric, score=sum(scores) / len(scores),
                 stderr=sum(ses) / len(ses) if len(ses) == len(scores) else None,
                 n=ns[0] if ns else None, per_set=per_set if meta["shot_sets"] else None,
                 per_set_stderr=per_set_se if meta["shot_sets"] else None,
                 macro_f1=sum(f1s) / len(f1s) if f1s else None,
                 debris=debris if meta.get("protocol") == "generate" else None)
    entry["predictions"], entry["predictions_per_set"] = predictions(meta, samples)
    entry.update(prompt_lengths(meta, samples, counter))
    entry.update({k: meta[k] for k in SAMPLE_KEYS})
    return entry


@contextlib.contextmanager
def _no_env_report():
    """lm-eval's simple_evaluate ends with add_env_info: torch's collect_env, which runs pip, lscpu
    and the like as subprocesses (~0.3 s of every evaluation) for a "pretty_env_info" that the
    result file never keeps. Skipped while the block runs; the versions are recorded instead."""
    from lm_eval import evaluator

    def versions_only(storage: dict) -> None:
        import transformers

        storage.update(pretty_env_info=None, transformers_version=transformers.__version__)

    original = evaluator.add_env_info
    evaluator.add_env_info = versions_only
    try:
        yield
    finally:
        evaluator.add_env_info = original


def evaluate(cfg: dict, model: str, langs: list[str], tasks_dir: str, out: str,
             threads: int | None = None, lm=None) -> dict:
    """Run lm-eval on `model` for the tasks of `langs`; write and return the result JSON.

    Every item of each task folder's test file is run: evaluate.limit's sample is drawn when the
    folder is built (lrmerge.evaluate.limit). `lm`: an lm-eval LM object to evaluate instead of
    loading `model` with lm-eval's "hf" (loaded here, so that its tokenizer counts the prompts).
    """
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    ev = cfg["evaluate"]
    if threads:
        torch.set_num_threads(int(threads))
    metas = read_manifests(cfg, langs, tasks_dir)
    if not metas:
        raise ValueError(f"no tasks configured for languages {langs}")
    folders = sorted({m["folder"] for m in metas.values()})
    builtin = any(m["kind"] == "builtin" for m in metas.values())
    # Indexing lm-eval's ~14,700 built-in tasks costs ~6 s: only when a task needs them.
    tm = TaskManager(include_path=folders, include_defaults=builtin)
    names = [name for m in metas.values() for name in m["lm_eval_tasks"].values()]
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval tasks {unknown} not found in {', '.join(folders)}"
                         + (" nor among lm-eval's built-in tasks" if builtin else ""))
    device = ev["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": str(model), "dtype": ev["dtype"], "device": device}
    seed = int(cfg["seed"])
    t0 = time.time()
    try:
        if lm is None:  # what simple_evaluate would load from "hf" and model_args
            from lm_eval.api.registry import get_model

            lm = get_model("hf").create_from_arg_obj(model_args,
                                                     {"batch_size": ev["batch_size"]})
        counter = TokenCounter.of(lm)
        with _no_env_report(), counter.recording() if counter else contextlib.nullcontext():
            results = lm_eval.simple_evaluate(
                model=lm, model_args=model_args, tasks=names,
                task_manager=tm, num_fewshot=None,
                batch_size=ev["batch_size"], limit=None,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, log_samples=True)  # the samples give the predictions
    except Exception as e:  # name the tasks and their sources: lm-eval's errors do not
        sources = "; ".join(f"{t}: {m['source']}" for t, m in metas.items())
        raise RuntimeError(f"lm-eval failed on {model} ({type(e).__name__}: {e}); "
                           f"tasks and sources: {sources}") from e
    n_samples = results.get("n-samples") or {}
    samples = results.get("samples") or {}
    per_task = {t: task_entry(m, results["results"], n_samples, samples, counter)
                for t, m in metas.items()}
    doc = {
        "model": str(model),
        "languages": list(langs),
        "tasks": per_task,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "model_args": model_args,
        "config": ev,
        "wall_time_s": round(time.time() - t0, 2),
    }
    fsutil.write_json(out, doc)
    return doc
