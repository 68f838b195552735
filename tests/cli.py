"""Running the `recstack` CLI in-process from tests, with its streams captured."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from cli import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str) -> Result:
    # Own streams: in-process services log to the process's stdout and stderr.
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())
