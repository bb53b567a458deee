"""The Trainer side of ``run_translation.py``: fairseq's token-bounded batches, a schedule whose
horizon is its own, and the first-step diagnostic as a callback. Imported when a run starts
(the Trainer is slow to import), not when the command line is parsed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import Seq2SeqTrainer, TrainerCallback

from hf_gradinit.token_batches import TokenBatchSampler, dataset_lengths, token_batches
from hf_gradinit.trainer.training_target import target_for_optim

logger = logging.getLogger("run_translation")


class TranslationTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` with fairseq's token-bounded batches and a schedule horizon of its own."""

    def __init__(self, *args: Any, max_tokens: int | None = None, schedule_steps: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_tokens = max_tokens
        self.schedule_steps = schedule_steps

    def get_train_dataloader(self):
        if self.max_tokens is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        sampler = TokenBatchSampler(dataset_lengths(dataset), self.max_tokens, seed=self.args.seed)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)


class TimeLimit(TrainerCallback):
    """Ends training at the first step that finishes after ``deadline`` (a ``time.time()``
    value): the Trainer then returns from ``train()`` as after its last step, so evaluation,
    prediction and the saved records follow as usual. ``stopped_at`` is the step it stopped at,
    ``None`` if the run ended by itself. One step always runs, so a deadline already passed
    (e.g. during a long initialiser) still leaves a trained-for-one-step model to evaluate."""

    def __init__(self, deadline: float, clock: Any = time.time):
        self.deadline = deadline
        self.clock = clock
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self.clock() >= self.deadline and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            # A checkpoint of where it stopped, if the run saves any: started again with a later
            # limit, the run goes on from here (the schedule does not depend on the limit).
            strategy = getattr(args, "save_strategy", "no")
            control.should_save = str(getattr(strategy, "value", strategy)) != "no"
            logger.info("--train_time_limit_s reached: training stops at step %d of %d",
                        state.global_step, state.max_steps)  # fmt: skip
        return control


class FirstStepReporter(TrainerCallback):
    """Writes ``first_step_report`` files: once for the base initialisation (:meth:`base`),
    once at ``on_train_begin`` after the initialiser callback has run, and a plot of both."""

    def __init__(self, batch, training_args, label_smoothing: float, init_name: str):
        self.batch = batch
        self.args = training_args
        self.init_name = init_name
        self.reports: list[Any] = []
        self.loss_fn = None
        if label_smoothing > 0:
            from transformers.trainer_pt_utils import LabelSmoother

            smoother = LabelSmoother(epsilon=label_smoothing)
            self.loss_fn = lambda model, batch: smoother(model(**batch), batch["labels"])

    def _report(self, model, label: str, stem: str) -> None:
        from hf_gradinit.diagnostics import first_step_report, plot_first_step

        target = target_for_optim(self.args.optim) or "adam"
        report = first_step_report(model, self.batch, self.args.learning_rate, target,  # type: ignore[arg-type]
                                   loss_fn=self.loss_fn, weight_decay=self.args.weight_decay, label=label)  # fmt: skip
        self.reports.append(report)
        if self.args.process_index != 0:
            return
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.save(out / f"{stem}.json")
        (out / f"{stem}.md").write_text(report.table() + "\n")
        plot_first_step(self.reports, out / "first_step_report.png")
        logger.info("First-step report (%s): %s", label, report.total())

    def base(self, model) -> None:
        self._report(model, "base init", "first_step_report")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and self.init_name != "default" and model is not None:
            self._report(model, f"after {self.init_name}", "first_step_report_init")


def diagnostic_batch(train_dataset, collator, recipe_args, training_args):
    """One deterministic training batch: the first token-bounded batch, or the first samples."""
    if recipe_args.max_tokens is not None:
        indices = token_batches(dataset_lengths(train_dataset), recipe_args.max_tokens, seed=training_args.seed)[0]
    else:
        indices = list(range(min(len(train_dataset), training_args.per_device_train_batch_size)))
    features = [{k: v for k, v in train_dataset[i].items() if k in ("input_ids", "attention_mask", "labels")}
                for i in indices]  # fmt: skip
    return collator(features)
