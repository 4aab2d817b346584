"""Start one training process per GPU on this node and pass stop signals on to them:

    python -m lrmerge.train.launch --nproc 8 ct --config ... --out ...

It does what `torchrun --standalone` does for a single node (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT for torch.distributed and DeepSpeed), but torchrun dies on SIGUSR1 (SLURM's
warning before a time limit) and gives its workers 30 s after SIGTERM, less than saving a 7B
checkpoint takes. Here both signals are forwarded and the workers are waited for; the exit status
is 75 when they saved and stopped (re-run to continue), that of the first failure otherwise. If
one worker fails, the others are stopped rather than left waiting in a collective.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

PREEMPTED_EXIT = 75  # lrmerge.train.loop.PREEMPTED_EXIT (not imported: this stays torch-free)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lrmerge.train.launch")
    ap.add_argument("--nproc", type=int, required=True, help="processes (one per GPU)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="lrmerge train arguments")
    a = ap.parse_args(argv)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(a.nproc), LOCAL_WORLD_SIZE=str(a.nproc))
    procs = [subprocess.Popen([sys.executable, "-m", "lrmerge.train", *a.args],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(a.nproc)]

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, forward)
    failed = None
    while any(p.poll() is None for p in procs):
        time.sleep(0.2)
        for p in procs:
            code = p.poll()
            if failed is None and code not in (None, 0, PREEMPTED_EXIT):
                failed = code
                for q in procs:  # the others would wait forever in a collective
                    if q.poll() is None:
                        q.terminate()
    codes = [p.returncode for p in procs]
    if failed is not None:
        return failed if failed > 0 else 1
    return PREEMPTED_EXIT if PREEMPTED_EXIT in codes else 0


if __name__ == "__main__":
    sys.exit(main())
