"""Initialisers by name, with one calling convention.

Every initialiser is called as ``fn(model, data, config, *, loss_fn=None, distributed=None)``
and rescales (or re-initialises) ``model`` in place. It returns a result object with
``save(path)``, ``metrics()`` and ``summary()`` (or ``None`` when there is nothing to
report); its registered ``result_class`` re-applies a saved result to a freshly built model.
``--model_init NAME`` in the Trainer integration and in the examples reaches every
registered name, a user's own included::

    from hf_gradinit import register_initializer

    @register_initializer("zero_last_layer", needs_data=False)
    def zero_last_layer(model, data, config, *, loss_fn=None, distributed=None):
        torch.nn.init.zeros_(model.lm_head.weight)
"""

from __future__ import annotations

import os
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
        config_class: The dataclass of its settings, if any (``GradInitConfig`` for GradInit);
            its fields become ``--<name>_<field>`` options of :class:`~hf_gradinit.InitArguments`.
        result_class: What it returns, if it can be saved and re-applied: a class with
            ``load(path)`` and ``apply(model, *, allow_partial=False)``
            (``GradInitResult`` for GradInit), so a saved result re-applies to a freshly built
            model instead of the work being done twice.
        description: One line for ``--help``.
        supports_sharding: It runs on an FSDP2-sharded model (on each process's shards); the
            Trainer callback refuses the others under FSDP2 and names the ``model_init`` route.
    """

    name: str
    fn: Initializer
    needs_data: bool = True
    config_class: type | None = None
    result_class: type | None = None
    description: str = ""
    supports_sharding: bool = False

    @property
    def can_reapply(self) -> bool:
        return self.result_class is not None

    def load_result(self, path: str | os.PathLike) -> Any:
        """Read a saved result of this initialiser (``result_class.load``)."""
        if self.result_class is None:
            raise ValueError(f"Initialiser {self.name!r} has no result to load (it registered no result_class).")
        return self.result_class.load(path)

    def reapply(self, model: nn.Module, result: Any, *, allow_partial: bool = False) -> nn.Module:
        """Re-apply a result (loaded or in memory) to a freshly built model."""
        return result.apply(model, allow_partial=allow_partial)


_REGISTRY: dict[str, InitializerSpec] = {}


def register_initializer(
    name: str,
    *,
    needs_data: bool = True,
    config_class: type | None = None,
    result_class: type | None = None,
    description: str = "",
    supports_sharding: bool = False,
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
        if result_class is not None and not all(callable(getattr(result_class, a, None)) for a in ("load", "apply")):
            raise TypeError(
                f"register_initializer({name!r}): result_class must have load(path) and apply(model, *,"
                f" allow_partial=False); {getattr(result_class, '__name__', result_class)!r} does not."
            )
        _REGISTRY[name] = InitializerSpec(
            name, fn, needs_data, config_class, result_class, description, supports_sharding
        )
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
