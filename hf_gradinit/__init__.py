"""hf_gradinit: learned, data-driven initialisation (GradInit) for PyTorch and Hugging Face models.

Usage::

    from hf_gradinit import GradInitConfig, gradinit

    result = gradinit(model, train_batches, GradInitConfig(target="adam", eta=5e-4))
    print(result.summary())
    result.save("gradinit_scales.json")  # re-apply later with apply_scales(fresh_model, ...)

With the 🤗 Trainer: ``GradInitCallback`` (custom code), ``make_model_init``
(``Trainer(model_init=...)``), ``InitArguments`` + ``trainer_init_kwargs`` (``--model_init``
in example scripts).
"""

from typing import TYPE_CHECKING

from . import methods  # noqa: F401  (registers every initialiser)
from ._lazy import lazy_getattr
from .errors import GradInitError
from .methods.gradinit import GradInitConfig, GradInitResult, gradinit
from .methods.lsuv import LSUVConfig, LSUVResult, lsuv
from .methods.metainit import MetaInitConfig, MetaInitResult, metainit
from .registry import available_initializers, get_initializer, register_initializer
from .scales import apply_scales

__version__ = "0.1.0"

# The Trainer integration imports transformers' Trainer, which is slow to import: load it
# on first use, so `import hf_gradinit` stays light for plain PyTorch users.
_LAZY = {
    "GradInitCallback": "trainer.callback",
    "InitializerCallback": "trainer.callback",
    "make_model_init": "trainer.model_init",
    "InitArguments": "trainer.arguments",
    "trainer_init_kwargs": "trainer.arguments",
}

if TYPE_CHECKING:
    from .trainer.arguments import InitArguments, trainer_init_kwargs
    from .trainer.callback import GradInitCallback, InitializerCallback
    from .trainer.model_init import make_model_init


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "GradInitCallback",
    "GradInitConfig",
    "GradInitError",
    "GradInitResult",
    "InitArguments",
    "InitializerCallback",
    "LSUVConfig",
    "LSUVResult",
    "MetaInitConfig",
    "MetaInitResult",
    "__version__",
    "apply_scales",
    "available_initializers",
    "get_initializer",
    "gradinit",
    "lsuv",
    "make_model_init",
    "metainit",
    "register_initializer",
    "trainer_init_kwargs",
]
