"""Pictures of results: every result type draws its PNG, and the layer reading of names is right."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reversal_batches, tiny_marian

from hf_gradinit import GradInitConfig, LSUVConfig, MetaInitConfig, gradinit, lsuv, metainit
from hf_gradinit.plotting import layer_means, plot_scales, tensor_kind, tensor_position

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 10_000 and path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("method", ["gradinit", "metainit", "lsuv"])
def test_every_result_plots_its_scales(method, tmp_path):
    model = tiny_marian(seed=1)
    batches = reversal_batches(3)
    if method == "gradinit":
        result = gradinit(model, batches, GradInitConfig(iters=3, eta=1e-3, target="adam", show_progress=False))
    elif method == "metainit":
        result = metainit(model, batches, MetaInitConfig(steps=2, show_progress=False))
    else:
        result = lsuv(model, batches, LSUVConfig(show_progress=False))
    path = result.plot(tmp_path / "sub" / f"{method}.png")
    assert _is_png(path)
    assert result.scales and all(v > 0 for v in result.scales.values())


def test_names_read_as_part_layer_kind_and_layer_means_are_geometric():
    assert tensor_position("model.encoder.layers.10.fc2.bias") == ("encoder", 10, "fc2.bias")
    assert tensor_position("transformer.h.2.attn.c_attn.weight") == ("model", 2, "attn.c_attn.weight")
    assert tensor_position("features.3.weight") == ("model", None, "features.3.weight")
    means = layer_means({
        "model.decoder.layers.0.fc1.weight": 4.0, "model.decoder.layers.0.fc2.weight": 0.25,
        "model.decoder.layers.1.fc1.weight": 2.0, "model.shared.weight": 9.0,
    })  # fmt: skip
    assert means["decoder/fc1.weight"] == {0: 4.0, 1: 2.0}
    assert means["decoder/all"][0] == pytest.approx(1.0) and means["decoder/all"][1] == pytest.approx(2.0)
    assert not any("shared" in k for k in means)


def test_models_without_numbered_blocks_get_one_panel_and_empty_input_is_refused(tmp_path):
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 3))
    values = {n: 1.0 + i / 10 for i, (n, _) in enumerate(cnn.named_parameters())}
    assert _is_png(plot_scales(values, tmp_path / "cnn.png", title="cnn"))
    with pytest.raises(ValueError, match="at least one tensor"):
        plot_scales({}, tmp_path / "none.png")


@pytest.mark.parametrize("method", ["gradinit", "metainit"])
def test_a_picture_tells_batchnorm_weights_from_convolutions(method, tmp_path):
    """In a ``Sequential`` the names cannot say which tensor is a BatchNorm's; GradInit's and
    MetaInit's results know it from the module types, and the picture colours by that."""
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    )
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    if method == "gradinit":
        result = gradinit(cnn, batches, GradInitConfig(iters=2, show_progress=False), loss_fn=loss_fn)
    else:  # the authors' variant scales 1-D tensors, so the BatchNorm weight gets a scale
        result = metainit(cnn, batches, MetaInitConfig(optimizer="adam", steps=2, show_progress=False), loss_fn=loss_fn)
    kinds = result.plot_kinds()
    assert {n: tensor_kind(n, kinds) for n in ("0.weight", "1.weight", "4.weight")} == {
        "0.weight": "weight", "1.weight": "norm", "4.weight": "weight"
    }  # fmt: skip
    assert tensor_kind("1.weight") == "weight"  # the names alone cannot tell
    assert tensor_kind("model.decoder.layers.0.final_layer_norm.weight") == "norm"
    assert kinds["0.bias"] == "bias"
    assert _is_png(result.plot(tmp_path / "cnn.png"))
    # the kinds travel with the saved result; a file that names other tensors is refused
    path = result.save(tmp_path / "result.json")
    assert type(result).load(path).plot_kinds() == kinds
    data = json.loads(path.read_text())
    for wrong in ({**kinds, "9.weight": "weight"}, {n: k for n, k in kinds.items() if n != "1.weight"}):
        path.write_text(json.dumps({**data, "kinds": wrong}))
        with pytest.raises(ValueError, match="must name the same tensors"):
            type(result).load(path)
    if method == "metainit":  # files written before MetaInit recorded kinds still load
        del data["kinds"]
        path.write_text(json.dumps(data))
        assert type(result).load(path).plot_kinds() is None
