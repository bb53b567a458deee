"""The initialisers, one package each; importing this package registers all of them.

``gradinit``, ``lsuv`` and ``metainit`` learn from data through the shared driver
(:mod:`hf_gradinit.driver`); ``schemes`` holds the fixed initialisations (``fairseq``,
``xavier``). A method's folder holds its config, its result and its step, and registers
itself in its ``__init__.py``.
"""

from . import gradinit, lsuv, metainit, schemes  # noqa: F401  (registration)
