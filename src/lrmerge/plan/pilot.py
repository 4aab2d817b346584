"""A pilot run's measured figures, carried to the sweep: `lrmerge plan --calibrate DIR`.

`calibrated_plan` is the plan (lrmerge.plan.cost) with them, beside the plan on assumptions.

DIR is results/{run} of a run of the workflow (finished or not). Per rule of the plan:
- training (pretrain_base, continual_pretrain, finetune_sft, ct_then_sft): the MFU of its jobs,
  from their train_summary.json: tokens_per_s x flops_per_token / (peak_tflops x world_size),
  averaged over the jobs weighted by their GPU-seconds (train_time_s x world_size). The plan
  then counts the sweep's tokens x its own model's FLOPs per token at that MFU of its own GPU's
  peak: the MFU carries over to another GPU, the achieved FLOP/s scale by the peaks;
- evaluate: seconds an item (Snakemake benchmark s / items x shot sets of eval/{model}.json),
  scaled to the sweep by its matmul parameters, its prompt tokens and its GPU's peak (SCALING);
- merge: bytes a second (safetensors of the inputs and of the result / benchmark s), as measured;
- prepare_corpus, prepare_sft_data: tokens a second (manifest tokens / benchmark s), as measured.
A rule the pilot has no files for keeps its assumption, and the calibration says why.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lrmerge import fsutil
from lrmerge.config.layout import BASE_ID, RELATIVE, SFT_ID, ct_id, ct_sft_id, merge_id

from .corpora import format_corpora
from .cost import ASSUMED_KEYS, _duration, _params, model_sizes, plan
from .vocab import format_vocabulary

# The model folders each training rule fills, under results/{run}/ (globs).
TRAIN_MODELS = {"pretrain_base": BASE_ID, "continual_pretrain": ct_id("*", "*"),
                "finetune_sft": SFT_ID, "ct_then_sft": ct_sft_id("*", "*")}
TRAIN_SUMMARIES = {rule: RELATIVE.summary(model) for rule, model in TRAIN_MODELS.items()}
# Tokenizing rules: benchmark files and the manifest of the shard folder each job wrote.
TOKEN_JOBS = {"prepare_corpus": (RELATIVE.benchmark("prepare_corpus", "*"),
                                 RELATIVE.manifest("{job}")),
              "prepare_sft_data": (RELATIVE.benchmark("prepare_sft_data", "*"),
                                   RELATIVE.manifest("sft"))}
EVAL_BENCHMARKS = RELATIVE.benchmark("evaluate", "**/*")
MERGE_BENCHMARKS = RELATIVE.benchmark("merge", "**/*")
SCALING = ("sweep seconds an item = pilot seconds an item x (sweep / pilot matmul parameters) "
           "x (sweep / pilot plan.eval_prompt_tokens) x (pilot / sweep peak TFLOPS)")


class NotMeasured(Exception):
    """The pilot holds nothing to measure a rule from; the message says what was looked for.
    `found`: files were there, but none could give the figure."""

    def __init__(self, why: str, found: bool = True):
        super().__init__(why)
        self.found = found


@dataclass
class Figure:
    """One rule's measured figure: `value` as the sweep's plan uses it, `pilot_value` as the
    pilot measured it (they differ where the figure is scaled to the sweep)."""
    rule: str
    name: str  # mfu, seconds_per_item, bytes_per_s or tokens_per_s
    value: float
    pilot_value: float
    files: int
    source: str  # the files it was measured from, relative to the pilot directory
    scaling: str | None = None


@dataclass
class Calibration:
    run_dir: str
    pilot_config: str
    figures: dict[str, Figure] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)  # rule -> why
    notes: list[str] = field(default_factory=list)
    pilot_model: dict = field(default_factory=dict)

    def measured(self) -> dict[str, dict]:
        """What `lrmerge.plan.plan` takes: rule -> {figure name: value}."""
        return {rule: {f.name: f.value} for rule, f in self.figures.items()}

    def figure(self, rule: str) -> dict | None:
        return asdict(self.figures[rule]) if rule in self.figures else None


# ----------------------------------------------------------------------------------------------
# Reading the pilot's files


def benchmark_seconds(path: Path) -> float:
    """A Snakemake benchmark file's wall time: its column s (the mean of its rows, one a repeat)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (wants a header with column s "
                         "and a row a run)")
    try:
        seconds = [float(r["s"]) for r in rows]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column s holds {[r['s'] for r in rows]}, not seconds") from None
    return sum(seconds) / len(seconds)


def _field(doc: dict, key: str, path: Path):
    if key not in doc:
        raise ValueError(f"{path}: no key {key!r}")
    return doc[key]


def _safetensors_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _local_folder(text: str, run: Path) -> Path | None:
    """A model folder a merge read, here: as recorded (absolute, or relative to the workflow's
    directory), else re-rooted at this pilot directory when the run was copied from elsewhere,
    else a hub id's snapshot in the local Hugging Face cache (never downloaded)."""
    from lrmerge.merge.merge_config import is_hub_id

    recorded = Path(text)
    for candidate in (recorded, run.parent.parent / recorded):
        if candidate.is_dir():
            return candidate
    parts = recorded.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == run.name and run.joinpath(*parts[i + 1:]).is_dir():
            return run.joinpath(*parts[i + 1:])
    if is_hub_id(text):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(text, allow_patterns=["*.safetensors"],
                                          local_files_only=True))
        except LocalEntryNotFoundError:  # not cached on this machine
            return None
    return None


# ----------------------------------------------------------------------------------------------
# One figure a rule


def training_figure(run: Path, rule: str) -> tuple[Figure, set[tuple[str, float]]]:
    """The rule's MFU over its jobs, and the (device, peak TFLOPS) they ran on."""
    pattern = TRAIN_SUMMARIES[rule]
    paths = sorted(run.glob(pattern))
    if not paths:
        raise NotMeasured(f"no {pattern}", found=False)
    flops = peak_seconds = 0.0  # achieved FLOPs, and peak FLOP/s x GPU-seconds
    used, no_peak, devices = 0, [], set()
    for path in paths:
        s = fsutil.read_json(path)
        tps, fpt, world, secs = (float(_field(s, k, path)) for k in
                                 ("tokens_per_s", "flops_per_token", "world_size", "train_time_s"))
        peak = _field(s, "peak_tflops", path)
        if peak is None:  # a CPU without a peak_tflops key: no MFU to carry to a GPU
            no_peak.append(path)
            continue
        devices.add((str(_field(s, "device", path)), float(peak)))
        flops += tps * fpt * secs
        peak_seconds += float(peak) * 1e12 * world * secs
        used += 1
    if not used:
        device = _field(fsutil.read_json(no_peak[0]), "device", no_peak[0])
        raise NotMeasured(f"{len(no_peak)} {pattern} record no peak_tflops (device {device}): "
                          "set the pilot's peak_tflops to measure an MFU")
    if peak_seconds == 0:
        raise NotMeasured(f"{pattern}: train_time_s is 0 in every summary")
    mfu = flops / peak_seconds
    return Figure(rule, "mfu", mfu, mfu, used, pattern), devices


def eval_figure(run: Path) -> tuple[float, int, set[str], list[str]]:
    """(seconds an item on the pilot, files used, the devices the evaluations ran on, notes)."""
    root = run / RELATIVE.benchmarks("evaluate")
    paths = sorted(run.glob(EVAL_BENCHMARKS))
    if not paths:
        raise NotMeasured(f"no {EVAL_BENCHMARKS}", found=False)
    seconds = items = lm_eval_seconds = 0.0
    used, devices, skipped = 0, set(), []
    for path in paths:
        model = path.relative_to(root).with_suffix("").as_posix()
        result = run / RELATIVE.eval(model)
        if not result.is_file():
            skipped.append(f"left out {path.relative_to(run)} (no {RELATIVE.eval(model)})")
            continue
        doc = fsutil.read_json(result)
        tasks = _field(doc, "tasks", result)
        unsized = [t for t, e in tasks.items() if e.get("n") is None]
        if unsized:
            skipped.append(f"left out {path.relative_to(run)} ({RELATIVE.eval(model)}: no item count for "
                           f"{', '.join(unsized)})")
            continue
        # each shot set is a pass over the test items
        items += sum(int(e["n"]) * max(1, len(e.get("shot_sets") or [])) for e in tasks.values())
        seconds += benchmark_seconds(path)
        lm_eval_seconds += float(doc.get("wall_time_s") or 0.0)
        devices.add(str(_field(_field(doc, "model_args", result), "device", result)))
        used += 1
    if not used or not items:
        raise NotMeasured(f"no {EVAL_BENCHMARKS} with a result holding items: "
                          + "; ".join(skipped))
    if seconds:
        # a job's start-up is scaled with the rest: say how much of the time it was
        skipped.append(f"lm-eval itself (eval JSON wall_time_s, model loading included) ran "
                       f"{lm_eval_seconds / seconds:.0%} of the jobs' benchmark time; the rest, "
                       "process start-up, is scaled to the sweep as well")
    return seconds / items, used, devices, skipped


def merge_figure(run: Path) -> tuple[Figure, list[str]]:
    root = run / RELATIVE.benchmarks("merge")
    paths = sorted(run.glob(MERGE_BENCHMARKS))
    if not paths:
        raise NotMeasured(f"no {MERGE_BENCHMARKS}", found=False)
    moved = seconds = 0.0
    used, skipped = 0, []
    for path in paths:
        model_id = merge_id(*path.relative_to(root).with_suffix("").parts)
        folder, stats_path = run / RELATIVE.model(model_id), run / RELATIVE.summary(model_id)
        if not stats_path.is_file():
            skipped.append(f"left out {path.relative_to(run)} (no {stats_path.relative_to(run)})")
            continue
        params = _field(fsutil.read_json(stats_path), "parameters", stats_path)
        recorded = [params["base"]] if params.get("base") else []
        recorded += [m["path"] for m in _field(params, "models", stats_path)]
        inputs = [_local_folder(text, run) for text in recorded]
        lost = [t for t, f in zip(recorded, inputs, strict=True) if f is None]
        if lost:
            skipped.append(f"left out {path.relative_to(run)} (inputs not found here, nor in "
                           f"the local Hugging Face cache: {', '.join(lost)})")
            continue
        moved += sum(_safetensors_bytes(f) for f in inputs) + _safetensors_bytes(folder)
        seconds += benchmark_seconds(path)
        used += 1
    if not used:
        raise NotMeasured(f"no {MERGE_BENCHMARKS} with its merge and inputs: " + "; ".join(skipped))
    if seconds == 0:
        raise NotMeasured(f"{MERGE_BENCHMARKS}: 0 s in every file")
    rate = moved / seconds
    source = (f"{MERGE_BENCHMARKS} + {RELATIVE.summary(merge_id('*', '*', '*'))} and the models' "
              "safetensors")
    return Figure("merge", "bytes_per_s", rate, rate, used, source), skipped


def tokenize_figure(run: Path, rule: str) -> Figure:
    pattern, manifest_of = TOKEN_JOBS[rule]
    paths = sorted(run.glob(pattern))
    if not paths:
        raise NotMeasured(f"no {pattern}", found=False)
    tokens = seconds = 0.0
    for path in paths:
        manifest = run / manifest_of.format(job=path.stem)
        if not manifest.is_file():
            raise ValueError(f"{path}: its job's {manifest} is missing")
        tokens += float(_field(fsutil.read_json(manifest), "tokens", manifest))
        seconds += benchmark_seconds(path)
    if seconds == 0:
        raise NotMeasured(f"{pattern}: 0 s in every file")
    rate = tokens / seconds
    return Figure(rule, "tokens_per_s", rate, rate, len(paths),
                  f"{pattern} + {manifest_of.format(job='*')}")


# ----------------------------------------------------------------------------------------------
# The calibration


def pilot_sizes(run: Path, pilot_cfg: dict) -> tuple[dict, str]:
    """The pilot model's sizes: a trained folder's config.json (what the pilot really built; the
    mini's vocabulary is the tokenizer's actual size), else the pilot config's base model."""
    for model in (SFT_ID, BASE_ID, ct_id("*", "*"), ct_sft_id("*", "*")):
        pattern = RELATIVE.model(model)
        for folder in sorted(run.glob(pattern)):
            if (folder / "config.json").is_file():
                return fsutil.read_json(folder / "config.json"), str(folder / "config.json")
    return model_sizes(pilot_cfg)


def calibrate(cfg: dict, run_dir: str | Path, pilot_cfg: dict, pilot_config: str,
              rules: list[str]) -> Calibration:
    """Measure each of `rules` (the sweep plan's) from the pilot run in `run_dir`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"--calibrate {run}: no such directory (a pilot's results/{{run}})")
    if pilot_cfg["run_name"] != run.name:
        raise ValueError(f"--pilot-config {pilot_config}: run_name {pilot_cfg['run_name']!r}, but "
                         f"the pilot directory {run} is results/{run.name}: pass the config that "
                         "pilot ran with")
    cal = Calibration(str(run), pilot_config)
    pilot_peaks, evaluated = _measure(run, cal)
    sizes, sizes_source = pilot_sizes(run, pilot_cfg)
    pilot_mm = _params(sizes)[0]
    cal.pilot_model = {"source": sizes_source, "matmul_params": pilot_mm}
    if pilot_peaks:
        cal.notes.append(_device_note(pilot_peaks, cfg["plan"]))
    if evaluated:
        _carry_eval(cal, evaluated, pilot_peaks, cfg, pilot_cfg, pilot_mm)
    for rule in [r for r in cal.figures if r not in rules]:
        cal.notes.append(f"{rule}: measured, but the sweep has no such rule")
        del cal.figures[rule]
    cal.unmeasured = {r: why for r, why in cal.unmeasured.items() if r in rules}
    return cal


def _measure(run: Path, cal: Calibration) -> tuple[set[tuple[str, float]], tuple | None]:
    """Each rule's figure into `cal` (or why not); returns the (device, peak TFLOPS) the pilot
    trained on and the evaluation measurement (eval_figure's), which needs them to carry over."""
    found = False
    pilot_peaks: set[tuple[str, float]] = set()

    def attempt(rule, measure):
        nonlocal found
        try:
            out = measure()
        except NotMeasured as e:
            cal.unmeasured[rule] = str(e)
            found |= e.found
            return None
        found = True
        return out

    for rule in TRAIN_SUMMARIES:
        got = attempt(rule, lambda r=rule: training_figure(run, r))
        if got:
            cal.figures[rule], devices = got
            pilot_peaks |= devices
    for rule in TOKEN_JOBS:
        got = attempt(rule, lambda r=rule: tokenize_figure(run, r))
        if got:
            cal.figures[rule] = got
    got = attempt("merge", lambda: merge_figure(run))
    if got:
        cal.figures["merge"], skipped = got
        cal.notes += [f"merge: {s}" for s in skipped]
    evaluated = attempt("evaluate", lambda: eval_figure(run))
    if not found:
        looked = list(TRAIN_SUMMARIES.values())
        looked += [p for p, _ in TOKEN_JOBS.values()] + [MERGE_BENCHMARKS, EVAL_BENCHMARKS]
        raise FileNotFoundError(f"--calibrate {run}: no pilot measurements there; looked for "
                                + ", ".join(looked))
    return pilot_peaks, evaluated


def _carry_eval(cal: Calibration, evaluated: tuple, pilot_peaks: set[tuple[str, float]],
                cfg: dict, pilot_cfg: dict, pilot_mm: int) -> None:
    """The evaluation figure, scaled to the sweep where one peak of its device is known."""
    per_item, used, devices, eval_notes = evaluated
    cal.notes += [f"evaluate: {s}" for s in eval_notes]
    peaks = {peak for _, peak in pilot_peaks}
    kinds = {d.split(":")[0] for d in devices}
    trained_on = {d.split(":")[0] for d, _ in pilot_peaks}
    if len(peaks) != 1 or kinds != trained_on:
        cal.unmeasured["evaluate"] = (
            f"measured {per_item:.3g} s an item on {', '.join(sorted(devices))}, but no "
            "single peak_tflops of that device in the training summaries "
            f"(trained on {', '.join(sorted(trained_on)) or 'nothing'}) to carry it to the "
            "sweep's GPU")
    else:
        cal.figures["evaluate"] = _scaled_eval(per_item, used, cfg, pilot_cfg, pilot_mm,
                                               peaks.pop())


def _device_note(pilot_peaks: set[tuple[str, float]], p: dict) -> str:
    on = ", ".join(sorted({d for d, _ in pilot_peaks}))
    peaks = sorted({peak for _, peak in pilot_peaks})
    shown = " and ".join(f"{x:g}" for x in peaks)
    sweep_peak = float(p["peak_tflops"])
    if peaks == [sweep_peak]:
        return f"the pilot trained on {on} at the sweep's peak, {shown} TFLOPS"
    return (f"the pilot trained on {on} at {shown} TFLOPS peak (train_summary peak_tflops), not "
            f"the sweep's {p['gpu']} at {sweep_peak:g}: its MFU is carried over, i.e. its "
            f"achieved FLOP/s scaled by {sweep_peak:g} / pilot peak")


def _scaled_eval(per_item: float, used: int, cfg: dict, pilot_cfg: dict, pilot_mm: int,
                 pilot_peak: float) -> Figure:
    sweep_mm = _params(model_sizes(cfg)[0])[0]
    sweep_prompt, pilot_prompt = (c["plan"]["eval_prompt_tokens"] for c in (cfg, pilot_cfg))
    sweep_peak = float(cfg["plan"]["peak_tflops"])
    factor = (sweep_mm / pilot_mm) * (sweep_prompt / pilot_prompt) * (pilot_peak / sweep_peak)
    scaling = (f"x {sweep_mm / pilot_mm:.4g} matmul parameters ({sweep_mm:,} / {pilot_mm:,}) "
               f"x {sweep_prompt / pilot_prompt:.4g} prompt tokens (plan.eval_prompt_tokens "
               f"{sweep_prompt} / the pilot config's {pilot_prompt}, both assumed) "
               f"x {pilot_peak / sweep_peak:.4g} peak ({pilot_peak:g} / {sweep_peak:g} TFLOPS)")
    source = f"{EVAL_BENCHMARKS} + {RELATIVE.eval('**/*')} (items x shot sets)"
    return Figure("evaluate", "seconds_per_item", per_item * factor, per_item, used, source,
                  scaling)


# ----------------------------------------------------------------------------------------------
# The calibrated plan


def calibrated_plan(cfg: dict, run_dir: str | Path, pilot_config: str | Path,
                    results: str | Path | None = None) -> dict:
    """The plan with what the pilot run in `run_dir` (results/{run} of `pilot_config`) measured,
    beside the plan on assumptions alone (`assumed`); `calibration.figures` says, per rule, what
    its cost rests on: a figure measured from N files there, or the config keys assumed.
    `results`: the sweep's own results/{run} (lrmerge.plan.plan)."""
    from lrmerge.config import load_config

    assumed = plan(cfg, results=results)
    cal = calibrate(cfg, run_dir, load_config(pilot_config), str(pilot_config),
                    list(assumed["rules"]))
    doc = plan(cfg, cal.measured(), results)
    doc["assumed"] = {"rules": assumed["rules"], "total": assumed["total"]}
    figures = {}
    for rule in doc["rules"]:
        keys = {f"plan.{k}": cfg["plan"][k] for k in ASSUMED_KEYS[rule]}
        measured = cal.figure(rule)
        if measured:
            figures[rule] = {"origin": "measured", **measured, "instead_of": keys}
        else:
            figures[rule] = {"origin": "assumed", "keys": keys,
                             "why": cal.unmeasured.get(rule, "not measured by the pilot")}
    doc["calibration"] = {"pilot": cal.run_dir, "pilot_config": cal.pilot_config,
                          "pilot_model": cal.pilot_model, "figures": figures,
                          "notes": cal.notes, "eval_scaling": SCALING}
    return doc


def format_calibrated(doc: dict) -> str:
    m, cal = doc["model"], doc["calibration"]
    lines = [f"model: {m['params'] / 1e9:.2f}B parameters ({m['source']}), "
             f"{m['ct_flops_per_token'] / 1e9:.1f} GFLOP per CT token; "
             f"{m['gpu']} at {m['peak_tflops']:g} TFLOPS",
             f"calibrated from the pilot {cal['pilot']} (config {cal['pilot_config']}; its model "
             f"{cal['pilot_model']['matmul_params'] / 1e6:,.1f}M matmul parameters, "
             f"{cal['pilot_model']['source']}); assumed: the config's plan keys alone",
             f"{'':<36}{'GPU-HOURS':^22}{'WALL/JOB':^22}",
             f"{'RULE':<20}{'JOBS':>6}{'GPUS/JOB':>10}{'assumed':>11}{'calibrated':>11}"
             f"{'assumed':>11}{'calibrated':>11}{'DISK GB':>10}  BASIS"]
    for rule, r in doc["rules"].items():
        a = doc["assumed"]["rules"][rule]
        per_job = [x["wall_hours"] / x["jobs"] if x["jobs"] else 0.0 for x in (a, r)]
        lines.append(f"{rule:<20}{r['jobs']:>6}{r['gpus_per_job']:>10}{a['gpu_hours']:>11,.1f}"
                     f"{r['gpu_hours']:>11,.1f}{_duration(per_job[0]):>11}"
                     f"{_duration(per_job[1]):>11}{r['disk_gb']:>10,.1f}  {r['basis']}")
    t, ta = doc["total"], doc["assumed"]["total"]
    lines.append(f"{'total':<20}{sum(r['jobs'] for r in doc['rules'].values()):>6}{'':>10}"
                 f"{ta['gpu_hours']:>11,.1f}{t['gpu_hours']:>11,.1f}{'':>22}"
                 f"{t['disk_gb']:>10,.1f}")
    lines.append(f"training tokens: {t['train_tokens'] / 1e9:,.2f}B")
    lines.append("figures:")
    for rule, f in cal["figures"].items():
        keys = ", ".join(f"{k} {v:g}" for k, v in f.get("keys", f.get("instead_of")).items())
        if f["origin"] == "measured":
            text = (f"{_figure(f['name'], f['value'])} measured from {f['files']} "
                    f"file{'s' if f['files'] > 1 else ''} in {cal['pilot']}: {f['source']}")
            if f["scaling"]:
                text += f"; the pilot's {_figure(f['name'], f['pilot_value'])} {f['scaling']}"
            text += f" (instead of {keys})"
        else:
            text = f"assumed from {keys} ({f['why']})"
        lines.append(f"  {rule:<20}{text}")
    lines += [f"  note: {n}" for n in cal["notes"]]
    if cal["figures"]["evaluate"]["origin"] == "measured":
        lines.append(f"  evaluate scaling: {cal['eval_scaling']}")
    lines += format_corpora(doc["ct_data"])
    lines += format_vocabulary(doc.get("vocabulary", []))
    return "\n".join(lines)


def _figure(name: str, value: float) -> str:
    if name == "mfu":
        return f"MFU {value:.3g}"
    if name == "seconds_per_item":
        return f"{value:.3g} s an item"
    if name == "bytes_per_s":
        return f"{value / 1e9:.3g} GB/s"
    return f"{value:,.0f} tokens/s"
