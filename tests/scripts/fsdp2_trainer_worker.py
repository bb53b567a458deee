"""Two gloo processes: GradInitCallback inside Trainer.train() on a model accelerate shards with FSDP2.

On a machine without GPUs accelerate turns an FSDP request into DDP (``MULTI_CPU``), so this
worker sets accelerate's state by hand after building the Trainer (distributed type FSDP, an
FSDP2 plugin wrapping each GPT-2 block): ``Trainer.train()`` then shards the model with
accelerate's own ``fsdp2_prepare_model`` before ``on_train_begin``, as it does on GPUs. The same
training is run again without FSDP (plain DDP) as the reference. Writes ``OUT/trainer_rank<r>.pt``.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import hf_gradinit as hg

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_trainer import training_args


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 96):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 51, (n, 10), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Seen(TrainerCallback):
    """What on_train_begin is handed (registered after GradInit's callback, so it sees the result)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.is_fsdp = isinstance(model, FSDPModule)
        self.param_type = type(next(model.parameters())).__name__


def run(out: Path, fsdp: bool) -> dict:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=51, n_embd=32, n_layer=2, n_head=4, n_positions=16))
    args = training_args(out / ("fsdp" if fsdp else "ddp"), cls=TrainingArguments, learning_rate=1e-3, max_steps=2)
    gradinit = hg.GradInitCallback(hg.GradInitConfig(iters=5, gamma=60.0, lr=5e-2, show_progress=False))
    seen = Seen()
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[gradinit, seen])
    gradinit.attach(trainer)
    if fsdp:
        state = trainer.accelerator.state
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["GPT2Block"]
        )
        trainer.is_fsdp_enabled = True
    trainer.train()
    weights = {}
    for name, p in trainer.model.named_parameters():
        weights[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
    return {
        "is_fsdp": seen.is_fsdp,
        "param_type": seen.param_type,
        "scales": gradinit.result.scales,
        "kinds": [h["kind"] for h in gradinit.result.history],
        "weights_after_training": weights,
        "logged": [h for h in trainer.state.log_history if any(k.startswith("gradinit/") for k in h)],
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record = {"fsdp": run(out, fsdp=True)}
    # A fresh accelerate state for the reference run (the forced FSDP state is a singleton).
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state()
    PartialState._reset_state()
    record["ddp"] = run(out, fsdp=False)
    torch.save(record, out / f"trainer_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":  # pytest imports this file when collecting doctests
    main()
