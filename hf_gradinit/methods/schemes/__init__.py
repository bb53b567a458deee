"""Fixed initialisation schemes that other code bases use as their baseline.

``fairseq``: exactly what fairseq's ``transformer`` models get, the baseline of the GradInit
paper's machine-translation results (transformers initialises Marian with N(0, 0.02)
everywhere instead):

* attention q/k/v weights: Xavier-uniform with gain 1/sqrt(2) (fairseq's
  ``MultiheadAttention.reset_parameters``, as if the three were one fused matrix); their
  biases keep ``nn.Linear``'s default, U(-1/sqrt(fan_in), 1/sqrt(fan_in));
* attention output projection: Xavier-uniform (gain 1), bias 0;
* feed-forward ``fc1``/``fc2`` and every other linear layer: ``nn.Linear``'s own default
  (Kaiming-uniform with a = sqrt(5): weight std 1/sqrt(3 fan_in), bias as above), since
  fairseq builds them with plain ``nn.Linear``;
* embeddings: N(0, d^-1/2) with the padding row at 0; an output projection that is not
  tied to an embedding: N(0, d^-1/2), as fairseq's ``output_projection``;
* normalisation layers: weight 1, bias 0.

``xavier``: the simpler "Xavier everywhere" reading of it that this project used first:
the same q/k/v, output-projection, embedding and normalisation rules, but *every* linear
layer Xavier-uniform and every bias 0. Its feed-forward weights are larger than fairseq's
(fc2 of the IWSLT shape: std 0.036 against 0.018). Kept for the results measured with it.

In both, tied tensors are initialised once and frozen tensors (sinusoidal position tables)
are kept.

``fixup`` (:mod:`.fixup`) and ``tfixup`` (:mod:`.tfixup`) are the architecture-specific formulas
the GradInit paper names as alternatives: Fixup for residual networks without normalisation,
T-Fixup for Post-LN Transformers without warmup (and without LayerNorm).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...registry import register_initializer

_QKV_SUFFIXES = ("q_proj", "k_proj", "v_proj", "query", "key", "value")
_ATTN_OUT_SUFFIXES = ("out_proj",)


def _fresh_filter():
    done: set[int] = set()

    def fresh(p: nn.Parameter | None) -> bool:
        if p is None or not p.requires_grad or id(p) in done:
            return False
        done.add(id(p))
        return True

    return fresh


_NORMS = (nn.LayerNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm)


def _reset_norm(module: nn.Module, fresh) -> None:
    if fresh(getattr(module, "weight", None)):
        nn.init.ones_(module.weight)
    if fresh(getattr(module, "bias", None)):
        nn.init.zeros_(module.bias)


def _reset_embedding(module: nn.Embedding, fresh) -> None:
    # fairseq's Embedding(): N(0, d^-1/2), the padding row zero.
    if fresh(module.weight):
        nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()


def _linear_default_bias(module: nn.Linear) -> None:
    # nn.Linear.reset_parameters' bias rule, on its own (the weight is set separately).
    bound = 1 / math.sqrt(module.in_features) if module.in_features > 0 else 0.0
    nn.init.uniform_(module.bias, -bound, bound)


@torch.no_grad()
def fairseq_init(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place exactly as fairseq initialises its Transformer (see
    the module docstring): q/k/v Xavier (gain 1/sqrt(2)) with default biases, ``out_proj``
    Xavier with zero bias, the feed-forward and other linears at ``nn.Linear``'s default,
    N(0, d^-1/2) embeddings with a zero padding row, norms at 1/0.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> fc = torch.nn.Linear(300, 20)
        >>> _ = fairseq_init(torch.nn.ModuleDict({"fc1": fc}))
        >>> round(float(fc.weight.std()) * (3 * 300) ** 0.5, 1)  # std 1/sqrt(3 fan_in)
        1.0
    """
    fresh = _fresh_filter()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # Input embeddings first, so a head tied to one of them is seen as done when reached.
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            _reset_embedding(module, fresh)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            if module is output:
                if fresh(module.weight):
                    nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
                if fresh(module.bias):
                    nn.init.zeros_(module.bias)
            elif leaf in _QKV_SUFFIXES:
                if fresh(module.weight):
                    nn.init.xavier_uniform_(module.weight, gain=1 / math.sqrt(2))
                if fresh(module.bias):
                    _linear_default_bias(module)
            elif leaf in _ATTN_OUT_SUFFIXES:
                if fresh(module.weight):
                    nn.init.xavier_uniform_(module.weight)
                if fresh(module.bias):
                    nn.init.zeros_(module.bias)
            else:
                if fresh(module.weight):
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if fresh(module.bias):
                    _linear_default_bias(module)
        elif isinstance(module, _NORMS):
            _reset_norm(module, fresh)
    return model


@torch.no_grad()
def xavier_init(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place with the "Xavier everywhere" scheme (module
    docstring); :func:`fairseq_init` is fairseq's exact one.

    Example:
        >>> import torch
        >>> layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> _ = xavier_init(layer)
        >>> float(layer[0].bias.detach().abs().sum()), float(layer[1].weight.detach().sum())
        (0.0, 4.0)
    """
    fresh = _fresh_filter()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if fresh(module.weight):
                gain = 1 / math.sqrt(2) if name.rsplit(".", 1)[-1] in _QKV_SUFFIXES else 1.0
                nn.init.xavier_uniform_(module.weight, gain=gain)
            if fresh(module.bias):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _reset_embedding(module, fresh)
        elif isinstance(module, _NORMS):
            _reset_norm(module, fresh)
    return model


@register_initializer("xavier", needs_data=False, description="Xavier-uniform linears, zero biases (fairseq-like)")
def _xavier(model, data, config, *, loss_fn=None, distributed=None):
    xavier_init(model)


@register_initializer("fairseq", needs_data=False, description="fairseq's Transformer init (the paper's MT base)")
def _fairseq(model, data, config, *, loss_fn=None, distributed=None):
    fairseq_init(model)


from .fixup import fixup_init  # noqa: E402
from .tfixup import TFixupConfig, remove_layernorms, tfixup_init  # noqa: E402

__all__ = ["TFixupConfig", "fairseq_init", "fixup_init", "remove_layernorms", "tfixup_init", "xavier_init"]


@register_initializer(
    "fixup", needs_data=False, description="Fixup: zero last layer per residual branch, L^(-1/(2m-2)) (no-BN ResNets)"
)
def _fixup(model, data, config, *, loss_fn=None, distributed=None):
    return fixup_init(model)


@register_initializer(
    "tfixup", needs_data=False, config_class=TFixupConfig,
    description="T-Fixup: Xavier, depth-scaled v/out/FFN/embeddings, LayerNorm removed (Post-LN seq2seq)",
)  # fmt: skip
def _tfixup(model, data, config, *, loss_fn=None, distributed=None):
    return tfixup_init(model, config)
