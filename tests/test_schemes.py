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


# -- Fixup and T-Fixup ------------------------------------------------------------------------


def _cifar_models():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "cnn"))
    import cifar_models

    return cifar_models


def test_fixup_follows_the_three_rules_on_the_no_bn_resnet():
    from hf_gradinit.methods.schemes import fixup_init

    torch.manual_seed(0)
    model = _cifar_models().build_model("resnet56_nobn", width_mult=1.0)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    for p in model.parameters():  # scramble, so every value below was set by fixup
        p.data.normal_()
    result = fixup_init(model)
    L, m = len(blocks), 2
    assert (result.config["L"], result.config["m"]) == (27, 2)
    factor = L ** (-1 / (2 * m - 2))
    for block in blocks:
        w = block.conv1.weight
        he = math.sqrt(2 / (w.shape[0] * w.shape[2] * w.shape[3]))  # fan_out, as the authors' code
        assert float(w.detach().std()) == pytest.approx(he * factor, rel=0.06)
        assert not block.conv2.weight.any()  # rule 1: the branch's last layer at 0
        assert float(block.scale.weight.detach()) == 1.0
        assert all(float(getattr(block, b).bias) == 0.0 for b in ("bias1a", "bias1b", "bias2a", "bias2b"))
    assert not model.fc.weight.any() and not model.fc.bias.any()  # the classifier at 0
    stem = model.conv1.weight
    assert float(stem.std()) == pytest.approx(math.sqrt(2 / (stem.shape[0] * 9)), rel=0.15)
    assert float(model.stem.bias) == 0.0 and float(model.head_bias.bias) == 0.0
    assert result.scales["layer1.0.conv1.weight"] == pytest.approx(factor)
    assert result.scales["layer1.0.conv2.weight"] == 0.0 and "fixup" in result.headline()


def test_fixup_reads_a_models_own_branches_and_refuses_what_it_cannot_read():
    from hf_gradinit.errors import GradInitError
    from hf_gradinit.methods.schemes import fixup_init

    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
            self.b = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
            self.head = torch.nn.Linear(8, 2)

        def fixup_branches(self):
            return [list(self.a), list(self.b)]

    model = TwoBranches()
    result = fixup_init(model)
    assert result.config["L"] == 2 and result.config["m"] == 3
    assert result.scales["a.0.weight"] == pytest.approx(2 ** (-1 / 4)) and not model.b[2].weight.any()
    assert not model.head.weight.any()

    with_bn = _cifar_models().build_model("resnet20_bn", width_mult=0.25)
    before = {n: p.clone() for n, p in with_bn.state_dict().items()}
    with pytest.raises(GradInitError, match=r"normalisation layers .* The model is unchanged"):
        get_initializer("fixup").fn(with_bn, None, None)
    assert all(torch.equal(before[n], p) for n, p in with_bn.state_dict().items())
    with pytest.raises(GradInitError, match="found no residual branch"):
        fixup_init(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    plain = _cifar_models().build_model("resnet20_nobn_paper", width_mult=0.25)  # the paper's: no multipliers
    before = {n: p.clone() for n, p in plain.state_dict().items()}
    with pytest.raises(GradInitError, match=r"9 residual blocks .* without the scalar multiplier"):
        fixup_init(plain)
    assert all(torch.equal(before[n], p) for n, p in plain.state_dict().items())


def test_tfixup_matches_the_formulas_and_removes_layernorm():
    from hf_gradinit.methods.schemes import TFixupConfig, tfixup_init

    model = tiny_marian(seed=3, layers=3, d_model=96, vocab=400, dropout=0.0)
    result = tfixup_init(model, TFixupConfig(seed=0))
    n, m = 3, 3
    dec, enc = (9 * m) ** -0.25, 0.67 * n**-0.25
    d = model.config.d_model

    def xavier(w):
        return math.sqrt(2 / sum(w.shape))

    for i in range(m):
        layer = model.model.decoder.layers[i]
        for w, f in [(layer.self_attn.v_proj.weight, dec), (layer.self_attn.out_proj.weight, dec),
                     (layer.encoder_attn.v_proj.weight, dec), (layer.encoder_attn.out_proj.weight, dec),
                     (layer.fc1.weight, dec), (layer.fc2.weight, dec), (layer.self_attn.q_proj.weight, 1.0),
                     (layer.encoder_attn.k_proj.weight, 1.0)]:  # fmt: skip
            assert float(w.std()) == pytest.approx(xavier(w) * f, rel=0.08)
        assert not layer.fc1.bias.any() and not layer.self_attn.v_proj.bias.any()
    for layer in model.model.encoder.layers:
        for w in (layer.self_attn.v_proj.weight, layer.self_attn.out_proj.weight, layer.fc1.weight, layer.fc2.weight):
            assert float(w.std()) == pytest.approx(xavier(w) * enc, rel=0.08)
        assert float(layer.self_attn.k_proj.weight.std()) == pytest.approx(
            xavier(layer.self_attn.k_proj.weight), rel=0.08
        )
    emb = model.model.shared.weight  # tied: encoder, decoder and output, one tensor
    rows = [i for i in range(emb.shape[0]) if i != model.config.pad_token_id]
    assert float(emb[rows].std()) == pytest.approx(d**-0.5 * dec, rel=0.05)
    assert not emb[model.config.pad_token_id].any()
    assert not any(isinstance(mod, torch.nn.LayerNorm) for mod in model.modules())
    assert len(result.removed) == 2 * n + 3 * m and "model.decoder.layers.0.final_layer_norm" in result.removed
    batch = {"input_ids": torch.randint(1, 400, (2, 6)), "labels": torch.randint(1, 400, (2, 5))}
    assert torch.isfinite(model(**batch).loss)


def test_tfixup_can_keep_layernorm_is_seeded_and_refuses_other_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_gradinit.errors import GradInitError
    from hf_gradinit.methods.schemes import TFixupConfig, tfixup_init

    a, b = tiny_marian(seed=1), tiny_marian(seed=2)
    ra = tfixup_init(a, TFixupConfig(seed=5, keep_layernorm=True))
    tfixup_init(b, TFixupConfig(seed=5, keep_layernorm=True))
    assert ra.removed == [] and any(isinstance(mod, torch.nn.LayerNorm) for mod in a.modules())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16))
    before = {n: p.clone() for n, p in gpt2.state_dict().items()}
    with pytest.raises(GradInitError, match=r"BART/Marian .* The model is unchanged"):
        tfixup_init(gpt2)
    assert all(torch.equal(before[n], p) for n, p in gpt2.state_dict().items())


def test_review_cases_bottleneck_branches_named_head_tied_names_and_plot_parts():
    from hf_gradinit.errors import GradInitError
    from hf_gradinit.methods.schemes import TFixupConfig, fixup_init, tfixup_init
    from hf_gradinit.plotting import tensor_position

    class Bottleneck(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.conv3 = (torch.nn.Conv2d(4, 4, 1) for _ in range(3))
            self.scale = torch.nn.Module()
            self.scale.weight = torch.nn.Parameter(torch.ones(1))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)  # registered before the blocks
            self.blocks = torch.nn.Sequential(Bottleneck(), Bottleneck())
            self.extra = torch.nn.Linear(4, 4)

    net = Net()
    result = fixup_init(net)
    assert result.config["m"] == 3  # conv3 is the branch's last layer, zeroed
    assert not net.blocks[0].conv3.weight.any() and net.blocks[0].conv2.weight.any()
    assert result.scales["blocks.0.conv1.weight"] == pytest.approx(2 ** (-1 / 4))
    assert not net.fc.weight.any() and net.extra.weight.any()  # the named head, not the last Linear

    class Ambiguous(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(Bottleneck())
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    with pytest.raises(GradInitError, match="cannot tell the classifier"):
        fixup_init(Ambiguous())

    # a tied tensor goes by its first name, and exclude reaches it by any of its names
    model = tiny_marian(seed=1)
    before = model.model.shared.weight.detach().clone()
    result = tfixup_init(model, TFixupConfig(exclude=("embed_tokens",), keep_layernorm=True))
    assert torch.equal(model.model.shared.weight, before) and "lm_head.weight" not in result.scales
    result = tfixup_init(tiny_marian(seed=1), TFixupConfig(keep_layernorm=True))
    assert "model.shared.weight" in result.scales and "lm_head.weight" not in result.scales
    assert tensor_position("model.decoder.blocks.2.encoder_attn.v_proj.weight")[0] == "decoder"
