"""Validation of names that become path parts: dataset names, run ids, build ids, video ids.

A name that reaches the file system (``features/<dataset>/...``, ``runs/<run-id>/``,
``indexes/<dataset>/<run>/``, ``thumbnails/<video_id>.jpg``) must be exactly one path component:
no separators, no ``.`` / ``..``, no leading dot (hidden and reserved files live beside them),
no NUL, newline or other control characters, at most 255 bytes in UTF-8. Anything else raises
:class:`InvalidName`, a ``ValueError`` that names the kind of name and the problem.

Video ids of the folder reader may be NESTED (``clips/cat``, from ``clips/cat.mp4``): with
``nested=True`` a ``/`` may separate parts that each obey the rule, the whole at most 255 bytes.
"""
from __future__ import annotations

import unicodedata

MAX_BYTES = 255


class InvalidName(ValueError):
    """A name that cannot be used as one path component."""


def name_problem(value: object, *, nested: bool = False) -> str | None:
    """Why ``value`` is not a safe path part (``nested``: ``/``-separated safe parts), or None when it is."""
    if nested and isinstance(value, str) and "/" in value:
        for part in value.split("/"):
            problem = name_problem(part)
            if problem is not None:
                return f"has a part {part!r} that {problem}"
        return _too_long(value)
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if value.startswith("."):
        return "starts with '.'"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return "contains a control character (NUL, newline, ...) or an unpaired surrogate"
    return _too_long(value)


def _too_long(value: str) -> str | None:
    return f"is longer than {MAX_BYTES} bytes" if len(value.encode("utf-8")) > MAX_BYTES else None


def check_name(value: object, what: str = "name") -> str:
    """``value`` unchanged when it is a safe path part, else :class:`InvalidName`."""
    problem = name_problem(value)
    if problem is not None:
        raise InvalidName(f"{what} {value!r} {problem}; it must be one path component")
    return value  # type: ignore[return-value]
