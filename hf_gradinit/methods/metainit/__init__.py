"""MetaInit (Dauphin & Schoenholz, NeurIPS 2019): norms learned by sign-SGD on the gradient quotient.

``config`` (:class:`MetaInitConfig`), ``result`` (:class:`MetaInitResult`), ``quotient`` (the
gradient quotient and the paper's random inputs), ``method`` (:func:`metainit`, the driver's
hooks). Importing the package registers ``metainit``.
"""

from ...registry import register_initializer
from .config import MetaInitConfig
from .method import MetaInit, metainit
from .quotient import gradient_quotient, randomize_batch
from .result import MetaInitResult

register_initializer(
    "metainit",
    config_class=MetaInitConfig,
    result_class=MetaInitResult,
    description="MetaInit (Dauphin & Schoenholz, 2019): norms learned by sign-SGD on the gradient quotient",
)(metainit)

__all__ = ["MetaInit", "MetaInitConfig", "MetaInitResult", "gradient_quotient", "metainit", "randomize_batch"]
