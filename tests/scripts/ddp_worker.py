"""Run by test_distributed.py under `torchrun --nproc_per_node 2` on CPU (gloo DDP).

Each rank trains a tiny Post-LN Marian for one step with GradInitCallback and saves what
it holds after GradInit and after the step.
"""

from __future__ import annotations

import os
import sys

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import tiny_marian
from test_trainer import reversal_dataset

from hf_gradinit import GradInitCallback, GradInitConfig

# Gradient norms of this run are 22.9, 20.9, 22.3, 19.2: gamma 22 alternates the two kinds of step.
GAMMA = float(os.environ.get("GRADINIT_TEST_GAMMA", "22"))
CONFIG = GradInitConfig(iters=4, overlap=1.0, lr=5e-2, gamma=GAMMA, show_progress=False)


class WeightsAtStart(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    args = Seq2SeqTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=6,
        learning_rate=5e-3,
        max_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_backend="gloo",
    )
    callback = GradInitCallback(CONFIG, batch_size=6)
    probe = WeightsAtStart()
    trainer = Seq2SeqTrainer(
        model=tiny_marian(seed=0), args=args, train_dataset=reversal_dataset(), callbacks=[callback, probe]
    )
    trainer.train()
    torch.save(
        {
            "world": torch.distributed.get_world_size(),
            "wrapped": type(trainer.model_wrapped).__name__,
            "after_init": probe.weights,
            "after_step": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            "scales": callback.result.scales,
            "history": callback.result.history,
            "config": callback.result.config,
            "total_s": callback.result.timings["total_s"],
            "logged": next(h for h in trainer.state.log_history if "gradinit/seconds" in h),
        },
        os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
