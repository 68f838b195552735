"""An Apply plan as a table a person reviews: one row per resource, then a summary line."""

from __future__ import annotations

from collections import Counter

from recstack.registry.v1 import registry_service_pb2 as pb

from cli.output import table
from cli.resources import kind_of_name

Action = pb.PlanStep.Action
LABELS = {
    Action.ACTION_CREATE: "create",
    Action.ACTION_UPDATE: "update",
    Action.ACTION_NEW_VERSION: "new version",
    Action.ACTION_DELETE: "delete",
    Action.ACTION_UNCHANGED: "unchanged",
}
# How each action reads in the summary, before and after it is written.
PLANNED = {
    Action.ACTION_CREATE: "to create",
    Action.ACTION_UPDATE: "to update",
    Action.ACTION_NEW_VERSION: "new version",
    Action.ACTION_DELETE: "to delete",
    Action.ACTION_UNCHANGED: "unchanged",
}
DONE = {
    Action.ACTION_CREATE: "created",
    Action.ACTION_UPDATE: "updated",
    Action.ACTION_NEW_VERSION: "new version",
    Action.ACTION_DELETE: "deleted",
    Action.ACTION_UNCHANGED: "unchanged",
}
PLURAL_S = frozenset({Action.ACTION_NEW_VERSION})  # "2 new versions", but "2 to create"
NO_CHANGES = "No changes: the registry already matches the definitions."


def render_plan(response: pb.ApplyResponse, project: str) -> str:
    rows = []
    for step in response.steps:
        kind, resource_id = kind_of_name(step.name)
        label = LABELS.get(step.action, Action.Name(step.action))
        rows.append([label, kind, resource_id, ", ".join(step.changed_fields)])
    heading = f"{'Applied to' if response.applied else 'Plan for'} project {project}:"
    body = table(["ACTION", "KIND", "ID", "CHANGED FIELDS"], rows)
    return f"{heading}\n{_indent(body)}\n{summary(response)}"


def summary(response: pb.ApplyResponse) -> str:
    counts = Counter(step.action for step in response.steps)
    if set(counts) <= {Action.ACTION_UNCHANGED}:
        return NO_CHANGES
    words = DONE if response.applied else PLANNED
    parts = ", ".join(_count(counts[action], action, words) for action in words if counts[action])
    if response.applied:
        return f"Applied: {parts}."
    return f"Plan: {parts}. Nothing was written."


def _count(count: int, action: int, words: dict[int, str]) -> str:
    plural = "s" if count > 1 and action in PLURAL_S else ""
    return f"{count} {words[action]}{plural}"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
