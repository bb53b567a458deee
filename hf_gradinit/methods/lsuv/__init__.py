"""LSUV (Mishkin & Matas, ICLR 2016): orthonormal init, then unit output variance layer by layer.

``config`` (:class:`LSUVConfig`), ``result`` (:class:`LSUVResult`), ``method`` (:func:`lsuv`,
the driver's hooks). Importing the package registers ``lsuv``.
"""

from ...registry import register_initializer
from .config import LSUVConfig
from .method import LSUV, lsuv, orthonormal_, seed_from_weights
from .result import LSUVResult

register_initializer(
    "lsuv",
    config_class=LSUVConfig,
    result_class=LSUVResult,
    description="LSUV (Mishkin & Matas, 2016): orthonormal init, then unit output variance layer by layer",
)(lsuv)

__all__ = ["LSUV", "LSUVConfig", "LSUVResult", "lsuv", "orthonormal_", "seed_from_weights"]
