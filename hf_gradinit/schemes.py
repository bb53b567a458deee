"""Fixed initialisation schemes that other code bases use as their baseline.

``xavier``: the scheme of fairseq's Transformer, the baseline of the GradInit paper's
machine-translation results (transformers initialises Marian with N(0, 0.02) everywhere):

* attention q/k/v projections: Xavier-uniform with gain 1/sqrt(2) (fairseq initialises the
  three as one fused matrix would be);
* every other linear layer (attention output, feed-forward): Xavier-uniform, gain 1;
* every bias: 0; embeddings: N(0, d_model^-1/2) with the padding row at 0;
* normalisation layers: weight 1, bias 0.

Tied tensors are initialised once; frozen tensors (sinusoidal position tables) are kept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .initializers import register_initializer

_QKV_SUFFIXES = ("q_proj", "k_proj", "v_proj", "query", "key", "value")


@torch.no_grad()
def xavier_init(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place with fairseq's Transformer scheme (module docstring).

    Example:
        >>> import torch
        >>> layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> _ = xavier_init(layer)
        >>> float(layer[0].bias.detach().abs().sum()), float(layer[1].weight.detach().sum())
        (0.0, 4.0)
    """
    done: set[int] = set()

    def fresh(p: nn.Parameter | None) -> bool:
        if p is None or not p.requires_grad or id(p) in done:
            return False
        done.add(id(p))
        return True

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if fresh(module.weight):
                gain = 1 / math.sqrt(2) if name.rsplit(".", 1)[-1] in _QKV_SUFFIXES else 1.0
                nn.init.xavier_uniform_(module.weight, gain=gain)
            if fresh(module.bias):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if fresh(module.weight):
                nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            if fresh(getattr(module, "weight", None)):
                nn.init.ones_(module.weight)
            if fresh(getattr(module, "bias", None)):
                nn.init.zeros_(module.bias)
    return model


@register_initializer("xavier", needs_data=False, description="fairseq's Transformer scheme (Xavier-uniform linears)")
def _xavier(model, data, config, *, loss_fn=None, distributed=None):
    xavier_init(model)
