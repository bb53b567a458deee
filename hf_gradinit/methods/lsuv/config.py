"""Settings of LSUV: :class:`LSUVConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ...config import InitConfig, checked_count

_DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_hf_conv1d(module: nn.Module) -> bool:
    # Matched by class rather than imported: importing transformers would make
    # `import hf_gradinit` slow for plain PyTorch users.
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in type(module).__mro__)


@dataclass
class LSUVConfig(InitConfig):
    """Settings of :func:`lsuv` (the defaults are the paper's).

    Args:
        orthonormal: Orthonormal pre-initialisation of every processed weight (and zero
            biases) before the sequential pass. ``False`` keeps the model's own weights and
            only rescales them.
        target_std: The output standard deviation each layer is brought to (paper: 1).
        tol: Accepted distance of the output standard deviation from ``target_std``
            (paper: 0.1).
        max_tries: Most corrections per layer (paper: 10); a layer that does not reach the
            tolerance by then keeps its last weight and is reported as not converged.
        layer_types: Module classes that count as layers; ``None`` means ``nn.Linear``,
            ``nn.Conv1d/2d/3d`` and transformers' ``Conv1D``.
        exclude: Regular expressions of weight names (``"lm_head.weight"``...) never to
            process; their layers keep their weights.
        seed: Seed of the orthonormal draws and of torch's generators during the run; the
            caller's RNG state is restored afterwards. ``None`` (the default) derives it from
            the model's own weights, so models built with different seeds get different
            orthonormal matrices (a comparison over seeds then varies the initialisation, as it
            should) while the same model always gets the same ones. Give an int to fix the draws
            whatever the model holds.
        show_progress: Show a tqdm progress bar over the layers.

    Example:
        >>> from hf_gradinit import LSUVConfig
        >>> LSUVConfig(tol=0.05).to_dict()["tol"]
        0.05
    """

    orthonormal: bool = field(default=True, metadata={"help": "LSUV: orthonormal pre-initialisation first."})
    target_std: float = field(
        default=1.0, metadata={"help": "LSUV: the output standard deviation each layer is brought to (paper: 1)."}
    )
    tol: float = field(default=0.1, metadata={"help": "LSUV: tolerance on each layer's output std."})
    max_tries: int = field(default=10, metadata={"help": "LSUV: rescaling tries per layer."})
    layer_types: tuple[type[nn.Module], ...] | None = field(default=None, metadata={"cli": False})
    exclude: tuple[str, ...] = field(
        default_factory=tuple, metadata={"help": "LSUV: regular expressions of weight names never to process."}
    )
    seed: int | None = field(
        default=None,
        metadata={"help": "LSUV: seed of the orthonormal draws (default: derived from the model's weights)."},
    )
    show_progress: bool = field(default=True, metadata={"cli": False})

    seed_optional = True  # None: derived from the model's weights

    def validate(self) -> None:
        if self.layer_types is not None:
            types = (self.layer_types,) if isinstance(self.layer_types, type) else tuple(self.layer_types)
            if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
                raise ValueError(f"LSUVConfig.layer_types must be nn.Module subclasses, got {self.layer_types!r}.")
            self.layer_types = types
        self.checked_number("target_std", low=0.0)
        self.checked_number("tol", low=0.0)
        self.max_tries = checked_count("LSUVConfig", "max_tries", self.max_tries)

    def is_layer(self, module: nn.Module) -> bool:
        """Whether ``module`` counts as a layer."""
        if self.layer_types is not None:
            return isinstance(module, self.layer_types)
        return isinstance(module, _DEFAULT_LAYER_TYPES) or _is_hf_conv1d(module)
