"""The CIFAR example's ``Trainer``: the paper's weight-decay rule, and the "+1 epoch (Const. LR)"
baseline's schedule. Imported when a run starts, not at parse time (importing ``Trainer`` pulls
in most of transformers)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, get_scheduler


class CifarTrainer(Trainer):
    """The paper's weight decay: on convolution and linear layers, not on BatchNorm parameters
    nor the scalar biases and multipliers of the ResNets without BatchNorm.

    ``paper_nobn_resnet=True``: the authors' rule for their no-BN ResNet (``train_cifar.py``,
    ``--no_bn`` on a ResNet): weight decay on every tensor, and every tensor named ``...bias``
    at a tenth of the learning rate (a group of its own, so the schedule scales it alike).

    ``const_lr_steps`` > 0: the first that many updates run at the constant ``const_lr``, then
    the run's own schedule (``--lr_scheduler_type``) starts from the peak over the remaining
    updates, so the constant phase comes before the schedule rather than replacing its start.
    """

    BIAS_LR_RATIO = 0.1  # the authors' base_lr / 10 for the no-BN ResNet's biases

    def __init__(self, *args: Any, const_lr_steps: int = 0, const_lr: float | None = None,
                 paper_nobn_resnet: bool = False, **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.const_lr_steps = const_lr_steps
        self.const_lr = const_lr
        self.paper_nobn_resnet = paper_nobn_resnet

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.paper_nobn_resnet:
            # Split before the first step (no state yet): biases move to groups of their own
            # at a tenth of their group's lr; LambdaLR schedules each group from its own lr.
            biases = {id(p) for n, p in (model or self.model).named_parameters() if "bias" in n.split(".")[-1]}
            for group in list(optimizer.param_groups):
                own = [p for p in group["params"] if id(p) in biases]
                if own:
                    group["params"] = [p for p in group["params"] if id(p) not in biases]
                    rest = {k: v for k, v in group.items() if k != "params"}
                    optimizer.add_param_group({**rest, "params": own, "lr": group["lr"] * self.BIAS_LR_RATIO})
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.const_lr_steps <= 0 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        n = self.const_lr_steps
        after = get_scheduler(self.args.lr_scheduler_type, optimizer, num_warmup_steps=0,
                              num_training_steps=max(1, num_training_steps - n)).lr_lambdas  # fmt: skip
        ratio = self.const_lr / self.args.learning_rate
        self.lr_scheduler = LambdaLR(optimizer, [lambda s, f=f: ratio if s < n else f(s - n) for f in after])
        return self.lr_scheduler

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.paper_nobn_resnet:
            return [n for n, _ in model.named_parameters()]
        norm = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        skipped = {id(p) for m in model.modules() if isinstance(m, norm) for p in m.parameters(recurse=False)} | {
            id(p) for p in model.parameters() if p.numel() == 1
        }
        return [n for n, p in model.named_parameters() if id(p) not in skipped]
