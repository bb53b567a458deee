"""GradInit (Zhu et al., NeurIPS 2021): learned per-tensor scales for one step of your optimizer.

``config`` (:class:`GradInitConfig`), ``objective`` (the objective, the constraint and their
scale gradients), ``scale_optimizer`` (the scales' Adam), ``result`` (:class:`GradInitResult`),
``method`` (:func:`gradinit`, the driver's hooks). Importing the package registers ``gradinit``.
"""

from ...registry import register_initializer
from .config import GradInitConfig
from .method import GradInit, gradinit
from .result import GradInitResult

register_initializer(
    "gradinit",
    config_class=GradInitConfig,
    result_class=GradInitResult,
    supports_sharding=True,
    description="GradInit (Zhu et al., 2021): learned per-tensor scales for one step of your optimizer",
)(gradinit)

__all__ = ["GradInit", "GradInitConfig", "GradInitResult", "gradinit"]
