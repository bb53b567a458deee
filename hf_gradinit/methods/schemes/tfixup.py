"""T-Fixup (Huang, Perez, Ba & Volkovs, ICML 2020): Post-LN encoder-decoder Transformers trained
without warmup and without LayerNorm.

The paper's three steps, for an encoder of ``N`` layers and a decoder of ``M``:

1. Xavier-uniform for every weight matrix but the input embeddings (biases 0); the input
   embeddings N(0, d^-1/2) (the padding row 0);
2. in the decoder, the value and output projections of every attention block (self- and
   cross-attention), the two feed-forward matrices, and the input embeddings of encoder and
   decoder multiplied by ``(9 M)^(-1/4)``;
3. in the encoder, the value and output projections and the feed-forward matrices multiplied
   by ``0.67 N^(-1/4)``.

And LayerNorm removed: every ``nn.LayerNorm`` in the model is replaced by ``nn.Identity``, and
the replaced modules are listed in the result (``removed``), so the change is visible.
``keep_layernorm=True`` keeps them (the scaling only). Every trainable ``nn.Embedding`` counts
as an input embedding (so do learned position embeddings, as BART's; Marian's sinusoidal ones
are frozen and kept). The model's own embedding scale
(Marian multiplies embeddings by sqrt(d) when ``scale_embedding``) is left as it is.

Removing modules changes the model's structure: a checkpoint saved afterwards has no LayerNorm
weights, and ``from_pretrained`` rebuilds the LayerNorms from the config (at weight 1, bias 0);
call :func:`remove_layernorms` on the loaded model to get the trained network back. Under DDP,
which registers the parameters when it wraps the model, run it before wrapping (the Trainer's
``model_init`` route); the callback refuses it on a DDP-wrapped model.

It reads Hugging Face encoder-decoder models laid out as BART/Marian
(``model.encoder.layers`` / ``model.decoder.layers`` with ``self_attn``, ``encoder_attn``,
``fc1``/``fc2``); anything else is refused before any change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...config import InitConfig
from ...errors import GradInitError
from .result import SchemeResult

_VO = ("v_proj", "out_proj")
_FFN = ("fc1", "fc2")


@dataclass
class TFixupConfig(InitConfig):
    """Settings of T-Fixup.

    Attributes:
        keep_layernorm: Keep the LayerNorm modules (only the scaling); the paper removes them.
        exclude: Regular expressions of parameter names to leave as they are.
        seed: Seed of the fresh Xavier / normal draws (``None``: the global RNG, as a model's
            own initialisation).
    """

    seed_optional = True

    keep_layernorm: bool = field(
        default=False, metadata={"help": "T-Fixup: keep LayerNorm (scaling only); the paper removes it."}
    )
    exclude: tuple[str, ...] = field(default_factory=tuple, metadata={"help": "T-Fixup: parameter names to skip."})
    seed: int | None = field(default=None, metadata={"help": "T-Fixup: seed of the draws (default: global RNG)."})


def _stacks(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    inner = getattr(model, "model", model)
    enc, dec = getattr(inner, "encoder", None), getattr(inner, "decoder", None)
    layers = [getattr(x, "layers", None) for x in (enc, dec)]
    ok = (
        all(isinstance(ls, nn.ModuleList) and len(ls) > 0 for ls in layers)
        and all(all(hasattr(layer, a) for a in ("self_attn", "fc1", "fc2")) for layer in layers[0])
        and all(hasattr(layer, "encoder_attn") for layer in layers[1])
    )
    if not ok:
        raise GradInitError(
            f"tfixup cannot initialise {type(model).__name__}: it reads encoder-decoder Transformers laid out as"
            " BART/Marian (model.encoder.layers and model.decoder.layers, each layer with self_attn, fc1, fc2, the"
            " decoder's with encoder_attn). The model is unchanged."
        )
    return enc, dec


def remove_layernorms(model: nn.Module) -> list[str]:
    """Replace every ``nn.LayerNorm`` in ``model`` by ``nn.Identity``; returns their names."""
    removed = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    for name in removed:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, nn.Identity())
    return removed


@torch.no_grad()
def tfixup_init(model: nn.Module, config: TFixupConfig | None = None) -> SchemeResult:
    """Re-initialise ``model`` in place by T-Fixup (module docstring); returns the record.

    Example::

        model = MarianMTModel(config)
        result = tfixup_init(model)           # result.removed: the LayerNorms now nn.Identity
    """
    import re

    config = config or TFixupConfig()
    enc, dec = _stacks(model)
    n_enc, n_dec = len(enc.layers), len(dec.layers)
    dec_factor = (9 * n_dec) ** -0.25
    enc_factor = 0.67 * n_enc**-0.25
    aliases: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)
    names = {k: v[0] for k, v in aliases.items()}  # a tied tensor by its first name, as named_parameters()
    skip = lambda w: any(re.search(p, n) for p in config.exclude for n in aliases[id(w)])
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]
    embedding_weights = {id(m.weight) for m in embeddings}
    factors: dict[int, float] = {}

    def mark(module: nn.Module, factor: float) -> None:
        factors[id(module.weight)] = factor

    for layer in dec.layers:
        for attn in (layer.self_attn, layer.encoder_attn):
            for leaf in _VO:
                mark(getattr(attn, leaf), dec_factor)
        for leaf in _FFN:
            mark(getattr(layer, leaf), dec_factor)
    for layer in enc.layers:
        for leaf in _VO:
            mark(getattr(layer.self_attn, leaf), enc_factor)
        for leaf in _FFN:
            mark(getattr(layer, leaf), enc_factor)

    fork = torch.random.fork_rng(devices=[]) if config.seed is not None else _nullcontext()
    with fork:
        if config.seed is not None:
            torch.manual_seed(config.seed)
        done: set[int] = set()
        scales: dict[str, float] = {}
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or id(weight) in done or not weight.requires_grad:
                continue
            name = names[id(weight)]
            if skip(weight):
                continue
            if isinstance(module, nn.Embedding):
                nn.init.normal_(weight, 0.0, module.embedding_dim**-0.5)
                if module.padding_idx is not None:
                    weight[module.padding_idx].zero_()
                factor = dec_factor  # step 2: the input embeddings of both sides
            elif isinstance(module, nn.Linear) and id(weight) not in embedding_weights:
                nn.init.xavier_uniform_(weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                factor = factors.get(id(weight), 1.0)
            else:
                continue
            weight.mul_(factor)
            done.add(id(weight))
            scales[name] = factor
    removed = [] if config.keep_layernorm else remove_layernorms(model)
    return SchemeResult(
        "tfixup",
        scales=scales,
        removed=removed,
        config={
            "N": n_enc,
            "M": n_dec,
            "decoder_factor": dec_factor,
            "encoder_factor": enc_factor,
            "keep_layernorm": config.keep_layernorm,
            "seed": config.seed,
        },
    )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
