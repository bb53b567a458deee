"""Fixed schemes: fairseq's Transformer init checked tensor by tensor against its formulas."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_marian

from hf_gradinit import get_initializer
from hf_gradinit.methods.schemes import fairseq_init, xavier_init

D = 128
FFN = 2 * D  # conftest.tiny_marian's feed-forward width


def fairseq_model(seed: int = 0):
    model = tiny_marian(
        seed=seed, layers=2, d_model=D, vocab=600, share_encoder_decoder_embeddings=False,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    fairseq_init(model)
    return model


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def test_fairseq_init_matches_the_formulas_tensor_by_tensor():
    model = fairseq_model()
    positions = {n: p.detach().clone() for n, p in model.named_parameters() if "embed_positions" in n}
    checked = 0
    for name, p in model.named_parameters():
        w = p.detach()
        leaf, kind = name.rsplit(".", 2)[-2:]
        if "embed_positions" in name:
            continue
        if "layer_norm" in leaf:
            expected = torch.ones_like(w) if kind == "weight" else torch.zeros_like(w)
            assert torch.equal(w, expected), name
        elif "embed_tokens" in name:
            assert torch.equal(w[0], torch.zeros(D)), f"{name}: padding row must be exactly zero"
            assert w[1:].std().item() == pytest.approx(D**-0.5, rel=0.03), name
        elif leaf in ("q_proj", "k_proj", "v_proj"):
            if kind == "weight":
                assert w.std().item() == pytest.approx(xavier_std(D, D, 1 / math.sqrt(2)), rel=0.04), name
            else:  # nn.Linear's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero
                bound = 1 / math.sqrt(D)
                assert w.abs().max().item() <= bound and w.abs().max().item() > 0.8 * bound, name
        elif leaf == "out_proj":
            if kind == "weight":
                assert w.std().item() == pytest.approx(xavier_std(D, D), rel=0.04), name
            else:
                assert torch.equal(w, torch.zeros_like(w)), f"{name}: out_proj bias must be exactly zero"
        elif leaf in ("fc1", "fc2"):
            fan_in = D if leaf == "fc1" else FFN
            if kind == "weight":  # Kaiming-uniform with a = sqrt(5): std 1/sqrt(3 fan_in)
                assert w.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.04), name
            else:
                bound = 1 / math.sqrt(fan_in)
                assert w.abs().max().item() <= bound and w.abs().max().item() > 0.8 * bound, name
        else:
            raise AssertionError(f"unexpected parameter {name}")
        checked += 1
    assert checked == len(list(model.named_parameters())) - len(positions)
    # Decoder-only tying: the encoder embedding is its own tensor, the head is the decoder's.
    enc, dec = model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight
    assert enc is not dec and model.lm_head.weight is dec
    assert not torch.equal(enc, dec)


def test_fairseq_init_keeps_frozen_positions_and_differs_from_xavier_in_the_ffn():
    model = tiny_marian(seed=0, layers=1, d_model=D, vocab=300)
    before = model.model.encoder.embed_positions.weight.detach().clone()
    torch.manual_seed(0)
    fairseq_init(model)
    assert torch.equal(model.model.encoder.embed_positions.weight, before)
    fc2_fairseq = model.model.encoder.layers[0].fc2.weight.detach().std().item()
    xavier_init(model)
    fc2_xavier = model.model.encoder.layers[0].fc2.weight.detach().std().item()
    # fairseq keeps nn.Linear's default for the FFN: 1/sqrt(3*256) against Xavier's sqrt(2/384).
    assert fc2_xavier / fc2_fairseq == pytest.approx(xavier_std(FFN, D) * math.sqrt(3 * FFN), rel=0.05)
    assert torch.equal(model.model.encoder.layers[0].fc2.bias, torch.zeros(D))  # xavier zeroes every bias


def test_fairseq_untied_output_projection_is_normal_with_the_model_width():
    model = tiny_marian(seed=0, layers=1, d_model=D, vocab=2000, tie_word_embeddings=False,
                        share_encoder_decoder_embeddings=False)  # fmt: skip
    assert model.lm_head.weight is not model.model.decoder.embed_tokens.weight
    fairseq_init(model)
    assert model.lm_head.weight.detach().std().item() == pytest.approx(D**-0.5, rel=0.03)


def test_fairseq_is_a_registered_initialiser_and_is_deterministic():
    spec = get_initializer("fairseq")
    assert not spec.needs_data
    a, b = tiny_marian(seed=0), tiny_marian(seed=0)
    torch.manual_seed(3)
    spec.fn(a, None, None)
    torch.manual_seed(3)
    spec.fn(b, None, None)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
