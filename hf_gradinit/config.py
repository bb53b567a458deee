"""What the initialisers' configs share: :class:`InitConfig`, the field checks, common literals."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, ClassVar, Literal

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


def _json_value(value: Any) -> Any:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _resolve_class(name: str) -> type:
    import importlib

    module, _, qualname = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"Cannot find the class {name!r}: {err}") from err
    return obj


class InitConfig:
    """What every initialiser's settings share (as PEFT's ``PeftConfigMixin``).

    A method's config is a dataclass deriving from this one, with the fields ``exclude``
    (regular expressions of parameter names to leave alone), ``seed`` and ``show_progress``
    among its own. The base checks ``exclude`` and ``seed`` at construction, then calls the
    method's :meth:`validate`, so a bad value fails where it was written with a message naming
    the field; it also gives every config the same ``to_dict`` / ``from_dict``. A field's
    ``metadata={"help": ...}`` becomes its ``--<method>_<field>`` help text on the command line
    (:mod:`hf_gradinit.trainer.arguments`).

    Example:
        >>> from hf_gradinit import LSUVConfig
        >>> LSUVConfig.from_dict(LSUVConfig(tol=0.05, exclude=["lm_head"]).to_dict()).exclude
        ('lm_head',)
    """

    #: ``seed=None`` is allowed (the method then derives a seed itself).
    seed_optional: ClassVar[bool] = False
    #: Command-line options that are not fields, as ``{name: (type, default, help)}``, turned
    #: into field values by :meth:`from_options` (GradInit's ``beta1`` / ``beta2``).
    cli_extra: ClassVar[dict[str, tuple[Any, Any, str]]] = {}

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        """The fields a command line sets: all but those marked ``metadata={"cli": False}``."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]  # type: ignore[arg-type]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Checks of the command-line options that parsing can make (before any config exists)."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Any:
        """The config the command-line options describe (:meth:`cli_fields` and ``cli_extra``)."""
        return cls(**options)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.exclude = checked_exclude(owner, self.exclude)  # type: ignore[attr-defined]
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{owner}.exclude has an invalid regular expression {pattern!r}: {err}") from err
        self.seed = checked_seed(owner, self.seed, allow_none=self.seed_optional)  # type: ignore[attr-defined]
        self.validate()

    def validate(self) -> None:
        """The method's own checks of its fields (raise ``ValueError`` / ``TypeError`` naming them)."""

    def checked_number(
        self, name: str, *, low: float, inclusive: bool = False, high: float | None = None, allow_none: bool = False
    ) -> None:
        """Refuse a field that is not a finite number above ``low`` (and below ``high``)."""
        value = getattr(self, name)
        if value is None and allow_none:
            return
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= low if inclusive else value > low)
            and (high is None or value < high)
        )
        if not ok:
            bound = f"{'>=' if inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise ValueError(f"{type(self).__name__}.{name} must be a finite number {bound}, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (tuples as lists, classes by qualified name)."""
        return {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """The config :meth:`to_dict` wrote; unknown fields are refused with the valid ones."""
        if not isinstance(values, dict):
            raise TypeError(f"{cls.__name__}.from_dict takes a dict, got {type(values).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; valid fields: {sorted(fields)}.")
        out = {}
        for name, value in values.items():
            kind = str(fields[name].type)
            if isinstance(value, list) and "tuple" in kind:
                value = tuple(_resolve_class(v) if "type[" in kind and isinstance(v, str) else v for v in value)
            out[name] = value
        return cls(**out)
