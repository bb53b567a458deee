"""The CIFAR example's ``Trainer``: the paper's weight-decay rule. Imported when a run starts, not
at parse time (importing ``Trainer`` pulls in most of transformers)."""

from __future__ import annotations

from torch import nn
from transformers import Trainer


class CifarTrainer(Trainer):
    """The paper's weight decay: on convolution and linear layers, not on BatchNorm parameters
    nor the scalar biases and multipliers of the ResNets without BatchNorm."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        norm = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        skipped = {id(p) for m in model.modules() if isinstance(m, norm) for p in m.parameters(recurse=False)} | {
            id(p) for p in model.parameters() if p.numel() == 1
        }
        return [n for n, p in model.named_parameters() if id(p) not in skipped]
