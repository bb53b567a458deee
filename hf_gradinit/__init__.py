"""hf_gradinit: learned, data-driven initialisation (GradInit) for PyTorch and Hugging Face models.

Usage::

    from hf_gradinit import GradInitConfig, gradinit

    result = gradinit(model, train_batches, GradInitConfig(target="adam", eta=5e-4))
    print(result.summary())
    result.save("gradinit_scales.json")  # re-apply later with apply_scales(fresh_model, ...)
"""

from .config import GradInitConfig
from .engine import gradinit
from .errors import GradInitError
from .result import GradInitResult
from .scales import apply_scales

__version__ = "0.1.0"

__all__ = [
    "GradInitConfig",
    "GradInitError",
    "GradInitResult",
    "__version__",
    "apply_scales",
    "gradinit",
]
