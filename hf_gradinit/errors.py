"""Exceptions raised by hf_gradinit."""

from __future__ import annotations


class GradInitError(RuntimeError):
    """A GradInit run could not start or could not finish.

    When it is raised from inside a run, the model's parameters, buffers, modes and
    settings have already been restored to exactly what they were before the call.
    """
