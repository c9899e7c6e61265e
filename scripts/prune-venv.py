"""Uninstall from this interpreter's environment every distribution the lock file does not name.

`make install` runs it after `pip install -r requirements.lock`: pip installs and upgrades but never removes, so
without it a package dropped from the lock would stay in an existing .venv and the environment would no longer be
the locked one. Kept: pip and the venv's own tooling, and the editable project itself.

    .venv/bin/python scripts/prune-venv.py requirements.lock
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

KEEP = {"pip", "setuptools", "wheel", "market-ingestor"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_names(lock: Path) -> set[str]:
    return {normalize(m.group(1)) for line in lock.read_text().splitlines() if (m := PIN.match(line))}


def main() -> int:
    lock = Path(sys.argv[1])
    locked = locked_names(lock)
    if not locked:
        print(f"prune-venv: no pins in {lock}", file=sys.stderr)
        return 1
    installed = {normalize(d.metadata["Name"]) for d in metadata.distributions()}
    extra = sorted(installed - locked - KEEP)
    if extra:
        print(f"prune-venv: not in {lock}, uninstalling: {' '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
