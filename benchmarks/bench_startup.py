"""Per-process start-up of `lrmerge evaluate` and `lrmerge merge`, wall and CPU seconds.

    python benchmarks/bench_startup.py [--src SRC] [--repeats 5] [--fixture DIR] [--cold-numba]

Builds (once, in --fixture) the mini's tiny model, its bn task folder and a config, and two tiny
Llama fine-tunes for the merges (tests/stage_helpers.py, tests/merge_helpers.py), then runs each
command --repeats times as a fresh process with PYTHONPATH=SRC (default: this checkout's src), so
a fresh clone can be timed with this venv. CPU is user+sys of the child (os.wait4). --cold-numba
points NUMBA_CACHE_DIR at an empty folder before each merge (every kernel compiles).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("average", "ties", "ties_sv", "chat_vector")


def build_fixture(root: Path, src: Path) -> None:
    """The model, task folder and configs, built by a child with the tests' helpers."""
    code = f"""
import sys
sys.path[:0] = [{str(src)!r}, {str(ROOT / 'tests')!r}]
from pathlib import Path
from stage_helpers import tiny_config, prepare_data, pretrain_base, write_config
from merge_helpers import build_inputs, native_config, write_yaml
from lrmerge.evaluate import tasks
root = Path({str(root)!r})
cfg = tiny_config()
pretrain_base(cfg, prepare_data(cfg, root, langs=("en",), sft=False), root / "model")
write_config(root / "config.yaml", cfg)
tasks.build(cfg, "bn", root / "tasks" / "bn")
inputs = build_inputs(root / "merge_in", n_models=2, dtype="float32", seed=3)
for method in {METHODS!r}:
    kw = {{"ties": {{"density": 0.2}},
          "ties_sv": {{"density": 0.2, "slack": 0.1, "protect": "m0"}}}}.get(method, {{}})
    cfg = native_config(inputs, method, **kw)
    write_yaml(root / f"merge_{{method}}.yaml", cfg)
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=env_for(src))


def env_for(src: Path, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


def timed(argv: list[str], env: dict) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        sys.stderr.write(err.strip().splitlines()[-1] + "\n" if err.strip() else "")
    return wall, ru.ru_utime + ru.ru_stime, rc


def report(name: str, runs: list[tuple[float, float, int]]) -> None:
    walls = [r[0] for r in runs]
    cpus = [r[1] for r in runs]
    print(f"{name:28s} wall median {statistics.median(walls):6.2f} s (min {min(walls):6.2f})  "
          f"cpu median {statistics.median(cpus):6.2f} s (min {min(cpus):6.2f})  "
          f"rc {sorted({r[2] for r in runs})}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fixture", default=str(Path(tempfile.gettempdir()) / "lrmerge_startup_fx"))
    ap.add_argument("--cold-numba", action="store_true")
    ap.add_argument("--only", choices=["evaluate", "merge"], default=None)
    args = ap.parse_args()
    src, fx = Path(args.src).resolve(), Path(args.fixture)
    if not (fx / "config.yaml").is_file():
        build_fixture(fx, src)
    exe = [sys.executable, "-m", "lrmerge.cli"]
    env = env_for(src)
    print(f"src {src}; {args.repeats} runs each; {os.cpu_count()} cpus", flush=True)
    if args.only in (None, "evaluate"):
        runs = [timed(exe + ["evaluate", "--config", str(fx / "config.yaml"), "--model",
                             str(fx / "model"), "--lang", "bn", "--tasks-dir", str(fx / "tasks"),
                             "--out", str(fx / "eval.json"), "--threads", "1"], env)
                for _ in range(args.repeats)]
        report("evaluate (bn, tiny model)", runs)
        runs = [timed([sys.executable, "-c", "import lrmerge.cli"], env)
                for _ in range(args.repeats)]
        report("python + import lrmerge.cli", runs)
    if args.only in (None, "merge"):
        for method in METHODS:
            cfg = fx / f"merge_{method}.yaml"
            if not cfg.is_file():
                continue
            runs = []
            for _ in range(args.repeats):
                out = fx / f"merged_{method}"
                shutil.rmtree(out, ignore_errors=True)
                menv = env
                if args.cold_numba:
                    cache = tempfile.mkdtemp(prefix="numba_cold_")
                    menv = dict(env, NUMBA_CACHE_DIR=cache)
                runs.append(timed(exe + ["merge", str(cfg), "--out", str(out), "--threads", "1",
                                         "--quiet"], menv))
                if args.cold_numba:
                    shutil.rmtree(cache, ignore_errors=True)
            report(f"merge {method}", runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
