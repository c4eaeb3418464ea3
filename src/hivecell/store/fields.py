"""Validation of partial updates against the TaskRecord field types."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hivecell.errors import InvalidParams
from hivecell.store.records import IMMUTABLE_FIELDS, TaskRecord

_UPDATABLE = frozenset(TaskRecord.model_fields) - IMMUTABLE_FIELDS


def validate_update(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values for ``fields``, validated exactly as TaskRecord validates them."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise InvalidParams(
            f"cannot update {', '.join(sorted(unknown))}; "
            f"updatable: {', '.join(sorted(_UPDATABLE))}",
            op="store.update",
        )
    # Assigning onto a scratch record reuses every validator and constraint of the model.
    scratch = TaskRecord(description="")
    try:
        for name, value in fields.items():
            setattr(scratch, name, value)
    except ValidationError as exc:
        raise InvalidParams(str(exc), op="store.update") from exc
    row = scratch.to_row()
    return {name: row[name] for name in fields}
