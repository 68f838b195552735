"""File roots: the only places a project's FILE sources and training-set exports may touch.

The operator gives each project its roots (`RECSTACK_FILES__ROOTS`, a JSON object of project
id → list of directories, `"*"` for every project; and/or `RECSTACK_FILES__ROOT_TEMPLATE`,
e.g. `/srv/recstack/projects/{project}`). A project may also read its own part of the offline
store (`<offline store>/<project>/`). Everything else is refused:

- a path with a `..` segment, whatever it would resolve to;
- an absolute path (or a relative one, taken from the project's first root) outside every
  root, after symlinks are resolved, so a link inside a root cannot lead out of it;
- any other project's part of the offline store, even under a root that contains the whole
  store: only a root inside the offline store itself grants another project's data.

Object-store URLs (`s3://…`) are allowed where a root is such a URL and the path starts with
it at a `/` boundary; there are no symlinks to follow there. The registry checks paths when a
definition is written (INVALID_ARGUMENT); materialization checks again when it reads, and
checks every file a directory or glob lists, since files and links change after the check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from shared.errors import FailedPrecondition, InvalidArgument, quoted

EVERY_PROJECT = "*"
_GLOB = re.compile(r"[*?\[]")


class FileRootSettings(BaseModel):
    """`RECSTACK_FILES__ROOTS` and `RECSTACK_FILES__ROOT_TEMPLATE`."""

    model_config = ConfigDict(extra="forbid")

    roots: dict[str, list[str]] = {}
    root_template: str = ""


@dataclass(frozen=True)
class FileRoots:
    """The roots of every project, and the offline store whose parts belong to each."""

    roots: Mapping[str, Sequence[str]] = field(default_factory=dict)
    template: str = ""
    offline_store: str = ""

    @classmethod
    def from_settings(cls, settings: FileRootSettings, offline_store: str) -> FileRoots:
        return cls(
            {project: tuple(paths) for project, paths in settings.roots.items()},
            settings.root_template,
            offline_store,
        )

    def granted(self, project: str) -> list[str]:
        """The roots the operator granted `project`, first the project's own ones."""
        granted = [*self.roots.get(project, ()), *self.roots.get(EVERY_PROJECT, ())]
        if self.template:
            granted.append(self.template.format(project=project))
        return [_normalize(root) for root in granted]

    def readable(self, path: str, project: str, field_name: str) -> str:
        """`path` made absolute, if `project` may read it; else INVALID_ARGUMENT."""
        return self._check(path, project, field_name, with_offline=True)

    def writable(self, path: str, project: str, field_name: str) -> str:
        """`path` made absolute, if `project` may write it (never into the offline store)."""
        resolved = self._check(path, project, field_name, with_offline=False)
        if self.offline_store and _inside(_real(resolved), _real(self.offline_store)):
            raise InvalidArgument(
                field_name,
                f"{quoted(path)} is inside the offline store, which only materialization writes",
                reason="PATH_OUTSIDE_ROOTS",
            )
        return resolved

    def check_file(self, path: str, project: str, what: str) -> None:
        """Read time, for each file a listing found: FAILED_PRECONDITION outside the roots."""
        if not self._allows(_real(path), project, with_offline=True):
            raise FailedPrecondition(
                f"{what}: a file it lists resolves outside the project's file roots (a symbolic "
                "link leaving them?); nothing was read",
                reason="PATH_OUTSIDE_ROOTS",
            )

    # --- rules --------------------------------------------------------------------------

    def _check(self, path: str, project: str, field_name: str, *, with_offline: bool) -> str:
        if not path:
            raise InvalidArgument(field_name, "is required")
        local = path.removeprefix("file://")
        if ".." in re.split(r"[/\\]", local):
            raise InvalidArgument(
                field_name, f"{quoted(path)} must not contain `..`", reason="PATH_TRAVERSAL"
            )
        if "://" in local:
            if any(_url_within(local, root) for root in self.granted(project) if "://" in root):
                return local
            raise self._outside(path, project, field_name)
        roots = [root for root in self.granted(project) if "://" not in root]
        if not Path(local).is_absolute():
            if not roots:
                raise self._outside(path, project, field_name)
            local = str(Path(roots[0]) / local)
        absolute = os.path.normpath(local)
        if not self._allows(_real(_fixed_prefix(absolute)), project, with_offline=with_offline):
            raise self._outside(path, project, field_name)
        return absolute

    def _allows(self, real: str, project: str, *, with_offline: bool) -> bool:
        offline = _real(self.offline_store) if self.offline_store else ""
        if offline and with_offline and _inside(real, str(Path(offline) / project)):
            return True
        for root in self.granted(project):
            if "://" in root:
                continue
            real_root = _real(root)
            if not _inside(real, real_root):
                continue
            # A root around the whole offline store does not grant other projects' parts.
            if offline and _inside(real, offline) and not _inside(real_root, offline):
                continue
            return True
        return False

    def _outside(self, path: str, project: str, field_name: str) -> InvalidArgument:
        roots = self.granted(project)
        where = ", ".join(roots) if roots else "none: the operator sets RECSTACK_FILES__ROOTS"
        return InvalidArgument(
            field_name,
            f"{quoted(path)} is outside the file roots of project {quoted(project)} "
            f"(roots: {where}; and its own part of the offline store)",
            reason="PATH_OUTSIDE_ROOTS",
        )


def _normalize(root: str) -> str:
    root = root.removeprefix("file://")
    return root.rstrip("/") if "://" in root else os.path.normpath(Path(root).absolute())


def _real(path: str) -> str:
    return os.path.realpath(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _url_within(url: str, root: str) -> bool:
    return url == root or url.startswith(root.rstrip("/") + "/")


def _fixed_prefix(path: str) -> str:
    """The part of a glob before its first wildcard segment (the whole path otherwise)."""
    parts = path.split("/")
    fixed = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
    return "/".join(parts[:fixed]) or "/"
