"""`bench.serving_without` still finds every part it takes out of serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

TAKE_ALL_OUT = """
from bench import serving_without
from services.serving import servicer
before = servicer.encode_response
serving_without.without(set(serving_without.PARTS))
assert servicer.encode_response is not before
try:
    serving_without.without({"nothing"})
except SystemExit as exit:
    print(exit)
"""


def test_every_part_can_be_taken_out_and_an_unknown_one_is_refused():
    done = subprocess.run(
        [sys.executable, "-c", TAKE_ALL_OUT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "unknown parts ['nothing']" in done.stdout
