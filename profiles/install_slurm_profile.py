"""Install profiles/slurm/config.yaml as the user's `slurm` Snakemake profile (`make slurm-profile`).

Writes $XDG_CONFIG_HOME/snakemake/slurm/config.yaml (default ~/.config/...), where
`snakemake --profile slurm` finds it. SLURM_ACCOUNT and SLURM_PARTITION, when set, fill the
account and partition; otherwise they stay commented placeholders. An existing profile is never
overwritten.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PLACEHOLDERS = {"slurm_account": ("SLURM_ACCOUNT", "ACCOUNT"),
                "slurm_partition": ("SLURM_PARTITION", "PARTITION")}


def profile_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "snakemake" / "slurm"


def render(template: str) -> str:
    for key, (env, placeholder) in PLACEHOLDERS.items():
        value = os.environ.get(env)
        line = f"  # {key}: {placeholder}"
        if value:
            if line not in template:
                raise SystemExit(f"the template has no line {line.strip()!r} to fill")
            template = template.replace(line, f"  {key}: {value}")
    return template


def main(argv: list[str]) -> int:
    template = Path(argv[1] if len(argv) > 1 else "profiles/slurm/config.yaml")
    dest = profile_dir()
    existing = [p for p in (dest / "config.yaml", dest / "profile.yaml") if p.exists()]
    if existing:
        print(f"{existing[0]} exists: left as it is (a profile is never overwritten). It needs "
              "only executor, account, partition and jobs; the workflow brings each rule's "
              "resources.")
        return 0
    text = render(template.read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".config.yaml.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, dest / "config.yaml")
    filled = [k for k, (env, _) in PLACEHOLDERS.items() if os.environ.get(env)]
    missing = [k for k in PLACEHOLDERS if k not in filled]
    print(f"wrote {dest / 'config.yaml'}" + (f"; set {' and '.join(missing)} in it for your site"
                                             if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
