"""What a rejected event is told: one :class:`FieldError` per problem, with a stable code
(pydantic's error types folded into the few a shop's client needs to tell apart), raised
together as :class:`EventRejected`."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from ingest.schema.events import EVENT_TYPES

__all__ = ["OWN_CODES", "EventRejected", "FieldError", "describe"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem of an event: a stable ``code``, the reason (``message``) and the field path
    (``param``; ``None`` for the event as a whole)."""

    code: str
    message: str
    param: str | None = None

    def line(self) -> str:
        return f"{self.param or '(event)'}: {self.message}"

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


class EventRejected(ValueError):
    """A bad event. ``errors`` holds one :class:`FieldError` per problem; the message is their
    ``field.path: reason`` lines joined by ``; ``."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        self.lines = [error.line() for error in errors]
        super().__init__("; ".join(self.lines))


# Pydantic's error types, folded into the few codes a shop's client needs to tell apart. Our own
# rules raise their codes directly (see ``rule``).
_CODES = {
    "missing": "required",
    "literal_error": "invalid_choice",
    "enum": "invalid_choice",
    "union_tag_invalid": "invalid_choice",
    "string_pattern_mismatch": "invalid_format",
    "timezone_aware": "invalid_format",
    "timezone_naive": "invalid_format",
    "too_long": "out_of_range",
    "too_short": "out_of_range",
    "string_too_long": "out_of_range",
    "string_too_short": "out_of_range",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "decimal_max_digits": "out_of_range",
    "decimal_max_places": "out_of_range",
    "decimal_whole_digits": "out_of_range",
}
OWN_CODES = frozenset(
    {
        "time_out_of_range",
        "unknown_time_zone",
        "amount_not_string",
        "consent_channel_required",
        "consent_contradicts_type",
    }
)


def _code(kind: str) -> str:
    if kind in OWN_CODES:
        return kind
    if kind in _CODES:
        return _CODES[kind]
    if kind.endswith("_type"):
        return "invalid_type"
    if kind.endswith("_parsing"):
        return "invalid_format"
    return "invalid_value"


def describe(exc: ValidationError) -> list[FieldError]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        # The first location element is the discriminator tag; drop it.
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(FieldError(_code(err["type"]), msg, ".".join(loc) or None))
    return problems
