"""Initialisers by name, with one calling convention.

Every initialiser is called as ``fn(model, data, config, *, loss_fn=None, distributed=None)``
and rescales (or re-initialises) ``model`` in place. It returns a result object with
``save(path)``, ``metrics()`` and ``summary()`` (or ``None`` when there is nothing to
report), and the registry records how to re-apply a saved result to a freshly built model.
``--model_init NAME`` in the Trainer integration and in the examples reaches every
registered name, a user's own included::

    from hf_gradinit import register_initializer

    @register_initializer("zero_last_layer", needs_data=False)
    def zero_last_layer(model, data, config, *, loss_fn=None, distributed=None):
        torch.nn.init.zeros_(model.lm_head.weight)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from .batches import Batch, LossFn


class Initializer(Protocol):
    def __call__(
        self,
        model: nn.Module,
        data: Iterable[Batch] | None,
        config: Any,
        *,
        loss_fn: LossFn | None = None,
        distributed: bool | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class InitializerSpec:
    """A registered initialiser.

    Attributes:
        name: The name ``--model_init`` takes.
        fn: The initialiser (see the module docstring for its calling convention).
        needs_data: Whether it reads batches (data-driven) or only the model.
        config_class: The dataclass of its settings, if any (``GradInitConfig`` for GradInit).
        load_result: Reads a saved result (``GradInitResult.load`` for GradInit).
        reapply: Re-applies a result to a freshly built model, so work is not done twice;
            ``reapply(model, result, **options)`` (``allow_partial=True`` for GradInit).
        description: One line for ``--help``.
    """

    name: str
    fn: Initializer
    needs_data: bool = True
    config_class: type | None = None
    load_result: Callable[[str], Any] | None = None
    reapply: Callable[[nn.Module, Any], Any] | None = None
    description: str = ""


_REGISTRY: dict[str, InitializerSpec] = {}


def register_initializer(
    name: str,
    *,
    needs_data: bool = True,
    config_class: type | None = None,
    load_result: Callable[[str], Any] | None = None,
    reapply: Callable[[nn.Module, Any], Any] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[Initializer], Initializer]:
    """Decorator that registers an initialiser under ``name`` (see the module docstring)."""
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"register_initializer(name): the name must be a non-empty string of letters, digits, '_' or '-'"
            f" (it becomes a --model_init choice), got {name!r}."
        )

    def decorate(fn: Initializer) -> Initializer:
        if not callable(fn):
            raise TypeError(f"register_initializer({name!r}) decorates a function, got {type(fn).__name__}.")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"An initialiser named {name!r} is already registered; pass overwrite=True to replace it.")
        _REGISTRY[name] = InitializerSpec(name, fn, needs_data, config_class, load_result, reapply, description)
        return fn

    return decorate


def available_initializers() -> list[str]:
    """Names of the registered initialisers, ``default`` first."""
    return sorted(_REGISTRY, key=lambda n: (n != "default", n))


def get_initializer(name: str) -> InitializerSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown initialiser {name!r}; registered: {available_initializers()}.") from None


class RegisteredNames:
    """The registry's names as a live sequence: argparse ``choices`` that include initialisers
    registered after the argument dataclass was defined."""

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __iter__(self) -> Iterator[str]:
        return iter(available_initializers())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __getitem__(self, index: int) -> str:
        return available_initializers()[index]

    def __repr__(self) -> str:
        return repr(available_initializers())


@register_initializer("default", needs_data=False, description="the model's own initialisation, unchanged")
def _default(model, data, config, *, loss_fn=None, distributed=None):
    return None
