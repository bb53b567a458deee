"""What the examples' training scripts share with transformers' own example scripts: the
output-folder check (resume from the last checkpoint, or refuse to overwrite a finished run),
dataloader pinning that suits the device, and the end of a run (the initialiser's figures and
picture beside ``all_results.json``, and where everything went, on the console).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The initialiser's picture beside ``all_results.json`` (the sweeps copy it from there).
SCALES_PICTURE_NAME = "init_scales.png"


class UsageError(ValueError):
    """A problem with the command line or the data it names (the scripts exit with status 2)."""


class OutputDirError(UsageError):
    """The output folder holds a previous run that this one would overwrite."""


def last_checkpoint_or_refuse(output_dir: str, *, do_train: bool, overwrite: bool) -> str | None:
    """Upstream's rule (``run_translation.py``, ``run_clm.py``): a training run into a folder
    with checkpoints resumes from the last complete one; into a non-empty folder without any,
    it stops unless ``--overwrite_output_dir`` (transformers 5 dropped that field from
    ``TrainingArguments``, so the scripts carry it themselves)."""
    import re

    if not do_train or overwrite or not os.path.isdir(output_dir):
        return None
    numbered = sorted(
        (int(m.group(1)), d) for d in os.listdir(output_dir) if (m := re.fullmatch(r"checkpoint-(\d+)", d))
    )
    last = None
    for _, d in reversed(numbered):  # the newest complete one: a run may stop while saving
        if os.path.isfile(os.path.join(output_dir, d, "trainer_state.json")):
            last = os.path.join(output_dir, d)
            break
        logger.warning("Ignoring %s: incomplete (no trainer_state.json, the run stopped while saving).", d)
    if last is None and os.listdir(output_dir):
        raise OutputDirError(
            f"--output_dir {output_dir} already exists and is not empty (no checkpoint to resume from):"
            " pass --overwrite_output_dir true to train into it anyway, or choose another --output_dir."
        )
    if last is not None:
        # The checkpoint holds the initialised weights, so the initialiser skips itself.
        logger.info("Checkpoint found: resuming from %s (--overwrite_output_dir true trains from scratch).", last)
    return last


def prepare_run(training_args: Any, *, overwrite: bool) -> str | None:
    """What every example run does first: the output-folder rule of
    :func:`last_checkpoint_or_refuse` (its checkpoint to resume from, or ``None``), then
    dataloader pinning by device."""
    last = last_checkpoint_or_refuse(training_args.output_dir, do_train=training_args.do_train, overwrite=overwrite)
    pin_memory_for_device(training_args)
    return last


def pin_memory_for_device(training_args: Any) -> None:
    """Pinned host memory only helps copies to an accelerator; on a CPU run the dataloader
    warns about it on every run, so pinning follows the device."""
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False


def initializer_figures(trainer: Any) -> dict[str, Any]:
    """The initialiser's summary figures (``gradinit/iterations``, ``gradinit/scale_weight_min``,
    ...) and its headline, for ``all_results.json``; empty when none ran."""
    from hf_gradinit.trainer import initializer_result

    result = initializer_result(trainer)
    out: dict[str, Any] = {}
    metrics = getattr(result, "metrics", None)
    if callable(metrics):
        out.update(metrics())
    headline = getattr(result, "headline", None)
    if callable(headline):
        out["init_summary"] = headline()
    return out


def finish_run(trainer: Any, results: dict[str, Any], output_dir: str, script: str) -> Path | None:
    """Write ``all_results.json`` and the initialiser's picture (:data:`SCALES_PICTURE_NAME`) from the
    main process, then say on the console where they are; returns the results path."""
    if not trainer.is_world_process_zero():
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "all_results.json"
    written = [path]
    from hf_gradinit.trainer import initializer_result

    result = initializer_result(trainer)
    path.write_text(json.dumps(results, indent=2, default=str))  # first: a failed picture loses nothing
    if callable(getattr(result, "plot", None)) and getattr(result, "scales", None):
        try:
            written.append(result.plot(out / SCALES_PICTURE_NAME))
        except Exception as err:  # matplotlib is an extra; a picture is never worth the run
            logger.warning("No %s: %s: %s", SCALES_PICTURE_NAME, type(err).__name__, err)
    print(f"***** {script}: results in {', '.join(str(p) for p in written)} *****", flush=True)
    return path
