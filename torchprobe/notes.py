"""Notes as data: what an analysis could not do exactly, with a code, the op and the place.

Results carry them in ``notes``; ``str(note)`` is the sentence the tables print and ``to_dict()``
what the JSON reports carry, so a program can filter by ``code`` instead of parsing text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

NoteCode = Literal[
    "no_rule",  # an op on the path from the input has no receptive-field rule
    "rule_failed",  # a rule raised on these arguments
    "unsupported",  # a rule knows the op but not this use of it (antialias, roll without dims...)
    "approximation",  # the rule over-estimates here, and says how
    "real_fallback",  # the meta device could not run the model: real tensors were used
]


@dataclass(frozen=True)
class Note:
    """One finding of an analysis: ``code`` says what kind, ``op`` which function or module type,
    ``where`` the qualified name of the module that called it ("" for the root)."""

    code: NoteCode
    op: str
    where: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "op": self.op, "where": self.where, "message": self.message}


def fallback_notes(device: str, reason: str | None) -> tuple[Note, ...]:
    """Say so when the meta device could not run the model and real tensors were used."""
    if not reason:
        return ()
    return (Note("real_fallback", "", "", f"ran on {device}: the meta device failed ({reason})"),)
