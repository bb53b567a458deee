"""Shared parts of the initialisers' configs: the literals several methods use and the field checks."""

from __future__ import annotations

import numbers
from typing import Any, Literal

HvpMode = Literal["exact", "finite_difference"]


HVP_MODES: tuple[str, ...] = ("exact", "finite_difference")


FdScheme = Literal["forward", "central"]


FD_SCHEMES: tuple[str, ...] = ("forward", "central")


def checked_exclude(owner: str, value: Any) -> tuple[str, ...]:
    """``exclude`` as a tuple of regular expressions, or a ``TypeError`` that says what it takes."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{owner}.exclude must be a regular expression or a list of them (strings), got {value!r}.")
    return tuple(value)


def checked_seed(owner: str, value: Any, allow_none: bool = False) -> int | None:
    """A seed torch accepts (numpy integers included), or a ``ValueError`` naming the range."""
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < 2**63:
        return int(value)
    none = "None or " if allow_none else ""
    raise ValueError(f"{owner}.seed must be {none}an integer in [0, 2**63), got {value!r}.")


def checked_count(owner: str, name: str, value: Any) -> int:
    """A count >= 1 as an ``int`` (numpy and torch integers accepted; bools and whole floats not),
    or a ``ValueError`` naming the field."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1:
        return int(value)
    raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}.")
