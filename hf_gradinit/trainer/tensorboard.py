"""The learned scales in TensorBoard (``--report_to tensorboard``).

The initialiser callback's summary figures reach TensorBoard as scalars through
``trainer.log()`` like any metric; this adds what a scalar cannot show: a histogram of the
scales (and of their log10, since they span orders of magnitude) and, per part of the model
and kind of tensor, the scale across the stacked blocks as a scalar series whose step is the
layer index (``<name>/scale_by_layer/decoder/self_attn.v_proj.weight``), so the per-layer
picture of :func:`hf_gradinit.plotting.plot_scales` is there too.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..plotting import layer_means


def reports_to_tensorboard(args: Any) -> bool:
    report_to = getattr(args, "report_to", None) or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    return "tensorboard" in report_to or "all" in report_to


def summary_writer(args: Any, trainer: Any = None) -> tuple[Any, bool]:
    """The Trainer's own TensorBoard writer when it has one (``(writer, False)``), else a new
    writer beside it in ``<output_dir>/runs/hf_gradinit`` (``(writer, True)``: close it)."""
    from transformers.integrations import TensorBoardCallback

    callbacks = trainer.callback_handler.callbacks if trainer is not None else []
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            return callback.tb_writer, False
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.path.join(args.output_dir, "runs", "hf_gradinit")), True


def write_scales(writer: Any, scales: dict[str, float], name: str, step: int = 0) -> list[str]:
    """Write the histograms and per-layer series of ``scales``; returns the tags written."""
    if not scales:
        return []
    values = torch.tensor(list(scales.values()), dtype=torch.float64)
    tags = [f"{name}/scales"]
    writer.add_histogram(tags[0], values, step)
    positive = values[values > 0]
    if len(positive):
        tags.append(f"{name}/log10_scales")
        writer.add_histogram(tags[-1], positive.log10(), step)
    for key, by_layer in layer_means(scales).items():
        tag = f"{name}/scale_by_layer/{key}"
        for layer, value in by_layer.items():
            if math.isfinite(value):
                writer.add_scalar(tag, value, layer)
        tags.append(tag)
    writer.flush()
    return tags
