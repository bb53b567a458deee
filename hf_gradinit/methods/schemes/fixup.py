"""Fixup (Zhang, Dauphin & Ma, ICLR 2019): residual networks trained without normalisation.

The three rules of the paper, for a network of ``L`` residual branches of ``m`` weight layers:

1. the classification layer and the last weight layer of every branch start at 0;
2. every other layer gets a standard initialisation (He: normal, ``fan_out`` mode, ReLU gain,
   as the authors' code), and the weight layers inside the branches are multiplied by
   ``L^(-1/(2m-2))``;
3. the scalar multipliers of the branches start at 1 and the scalar biases at 0.

Fixup is a formula, so it must know the branches. It reads two kinds of model:

* a model with a ``fixup_branches()`` method returning, per branch, its weight layers in
  order (``[[conv1, conv2], ...]``); scalar multipliers and biases are found by name
  (parameters with one element named ``...scale...`` / ``...bias...``);
* the no-BatchNorm CIFAR ResNets of ``examples/cnn`` (and any model built the same way):
  blocks with ``conv1``, ``conv2`` and a scalar multiplier ``scale``; their scalar biases
  (``bias1a``, ``bias1b``, ``bias2a``, ``bias2b``) and the stem's and head's are Fixup's own.

Anything else (a model with BatchNorm, which Fixup is meant to replace, or one whose blocks
it cannot find) is refused with a message saying what it reads, before anything is changed.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import GradInitError
from .result import SchemeResult

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _weight_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]


def _numbered_convs(block: nn.Module) -> list[nn.Module]:
    # conv1, conv2, ... in order: a bottleneck block's conv3 is its branch's last layer.
    convs, k = [], 1
    while isinstance(getattr(block, f"conv{k}", None), nn.Module):
        convs.append(getattr(block, f"conv{k}"))
        k += 1
    return convs


def _has_convs(module: nn.Module) -> bool:
    """A residual block's shape as Fixup reads it: ``conv1`` and ``conv2`` submodules."""
    return all(isinstance(getattr(module, name, None), nn.Module) for name in ("conv1", "conv2"))


def fixup_branches(model: nn.Module) -> list[list[nn.Module]]:
    """The residual branches of ``model`` as lists of their weight layers, or a
    :class:`~hf_gradinit.GradInitError` saying what Fixup can read."""
    own = getattr(model, "fixup_branches", None)
    if callable(own):
        branches = [list(b) for b in own()]
    else:
        branches = [
            _numbered_convs(m)
            for m in model.modules()
            if _has_convs(m) and isinstance(getattr(getattr(m, "scale", None), "weight", None), nn.Parameter)
        ]
    norms = [n for n, m in model.named_modules() if isinstance(m, _NORMS)]
    if not branches or norms:
        unscaled = sum(_has_convs(m) for m in model.modules())
        if norms:
            why = (f"it has normalisation layers ({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}), which"
                   " Fixup replaces: use it on the network without them")  # fmt: skip
        elif unscaled:
            why = (f"it has {unscaled} residual blocks (conv1, conv2) without the scalar multiplier `scale`"
                   " (and scalar biases) that Fixup adds to every branch: build the network with them")  # fmt: skip
        else:
            why = "it found no residual branch"
        raise GradInitError(
            f"fixup cannot initialise {type(model).__name__}: {why}. It reads blocks with conv1, conv2 and a scalar"
            " multiplier `scale` (the no-BN CIFAR ResNets of examples/cnn), or a model's fixup_branches() method"
            " returning each branch's weight layers in order. The model is unchanged."
        )
    lengths = {len(b) for b in branches}
    if min(lengths) < 2:
        raise GradInitError(
            "fixup needs at least two weight layers per residual branch (m >= 2); the model is unchanged."
        )
    return branches


def _classifier(model: nn.Module, in_branch: set[int]) -> nn.Module | None:
    """The classification layer: ``get_output_embeddings()``, an ``fc`` / ``classifier`` /
    ``head`` attribute, or the only Linear outside the branches; ``None`` if there is none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        head = next((getattr(model, a) for a in ("fc", "classifier", "head") if isinstance(getattr(model, a, None),
                     nn.Linear)), None)  # fmt: skip
    if head is None:
        outside = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in in_branch]
        if len(outside) > 1:
            raise GradInitError(
                f"fixup cannot tell the classifier of {type(model).__name__} among {len(outside)} linear layers"
                " outside the residual branches: name it fc, classifier or head (or define get_output_embeddings)."
                " The model is unchanged."
            )
        head = outside[0] if outside else None
    if head is not None:
        get_in = getattr(model, "get_input_embeddings", None)
        embedding = get_in() if callable(get_in) else None
        if embedding is not None and getattr(embedding, "weight", None) is head.weight:
            raise GradInitError(
                "fixup would zero the classifier, which is tied to the input embeddings here (every token"
                " embedding would be 0): untie them first. The model is unchanged."
            )
    return head


@torch.no_grad()
def fixup_init(model: nn.Module) -> SchemeResult:
    """Re-initialise ``model`` in place by Fixup's rules (module docstring); returns the record.

    Example::

        from cifar_models import build_model           # examples/cnn
        model = build_model("resnet20_nobn")
        fixup_init(model).config                       # {'L': 9, 'm': 2, 'branch_factor': 0.333...}
    """
    branches = fixup_branches(model)
    names = {id(p): n for n, p in model.named_parameters()}
    L = len(branches)
    in_branch = {id(layer) for branch in branches for layer in branch}
    head = _classifier(model, in_branch)
    scales: dict[str, float] = {}
    for layer in _weight_layers(model):
        if id(layer) in in_branch or layer is head:
            continue
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        scales[names[id(layer.weight)]] = 1.0
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    for branch in branches:
        factor = L ** (-1.0 / (2 * len(branch) - 2))  # each branch by its own m
        *inner, last = branch
        for layer in inner:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            layer.weight.mul_(factor)
            scales[names[id(layer.weight)]] = factor
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(last.weight)
        scales[names[id(last.weight)]] = 0.0
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    if head is not None:
        nn.init.zeros_(head.weight)
        scales[names[id(head.weight)]] = 0.0
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    for name, p in model.named_parameters():
        if p.numel() == 1 and "scale" in name:
            p.fill_(1.0)
        elif p.numel() == 1 and "bias" in name:
            p.zero_()
    lengths = sorted({len(b) for b in branches})
    m = lengths[0] if len(lengths) == 1 else lengths
    factors = {n: L ** (-1.0 / (2 * n - 2)) for n in lengths}
    return SchemeResult("fixup", scales=scales, config={"L": L, "m": m, "branch_factor": factors[lengths[0]]
                        if len(lengths) == 1 else factors})  # fmt: skip
