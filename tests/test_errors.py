"""Bad input gets a clear error, before any work, and the model is left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same_state, mlp_batches, reversal_batches, smooth_mlp, snapshot, tiny_marian, xent
from torch import nn

from hf_gradinit import GradInitConfig, GradInitError, GradInitResult, gradinit


def _cfg(**kwargs) -> GradInitConfig:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("iters", 3)
    return GradInitConfig(**kwargs)


def test_empty_data():
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="no batch"):
        gradinit(model, [], _cfg(), loss_fn=xent)
    assert_same_state(model, before)


def test_exhausted_iterator():
    it = iter(mlp_batches(2))
    list(it)
    with pytest.raises(GradInitError, match="already consumed"):
        gradinit(smooth_mlp(), it, _cfg(), loss_fn=xent)


def test_data_not_iterable():
    with pytest.raises(GradInitError, match="iterable of batches"):
        gradinit(smooth_mlp(), 42, _cfg(), loss_fn=xent)


def test_batch_without_labels_when_model_returns_no_loss():
    model = tiny_marian()
    before = snapshot(model)
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in reversal_batches(2)]
    batches[0]["decoder_input_ids"] = batches[0]["input_ids"]
    batches[1]["decoder_input_ids"] = batches[1]["input_ids"]
    with pytest.raises(GradInitError, match=r"returned no loss.*labels"):
        gradinit(model, batches, _cfg())
    assert_same_state(model, before)


def test_non_scalar_loss():
    with pytest.raises(GradInitError, match="scalar"):
        gradinit(smooth_mlp(), mlp_batches(2), _cfg(), loss_fn=lambda m, b: m(b[0]))


def test_batch_that_does_not_fit_the_model():
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match=r"(?s)first batch.*forward signature"):
        gradinit(
            model, [(torch.randn(6, 4, dtype=torch.float64), torch.zeros(6, dtype=torch.long))], _cfg(), loss_fn=xent
        )
    assert_same_state(model, before)


def test_batch_too_small_to_split():
    batches = [(torch.randn(1, 5, dtype=torch.float64), torch.zeros(1, dtype=torch.long))]
    with pytest.raises(GradInitError, match="at least 2 samples"):
        gradinit(smooth_mlp(), batches, _cfg(), loss_fn=xent)
    # overlap=1.0 uses the same samples for S and S~, so one sample is enough.
    gradinit(smooth_mlp(), batches, _cfg(overlap=1.0, target="sgd"), loss_fn=xent)


def test_model_with_nothing_trainable():
    model = smooth_mlp()
    model.requires_grad_(False)
    with pytest.raises(GradInitError, match="no trainable floating-point parameter"):
        gradinit(model, mlp_batches(2), _cfg(), loss_fn=xent)


def test_model_with_only_zero_or_excluded_tensors():
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match=r"No tensor .* can be rescaled"):
        gradinit(model, mlp_batches(2), _cfg(exclude=(r".*",)), loss_fn=xent)
    assert_same_state(model, before)
    zero = nn.Linear(5, 3).double()
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    with pytest.raises(GradInitError, match="zero"):
        gradinit(zero, mlp_batches(2), _cfg(), loss_fn=xent)


def test_model_on_meta_device():
    with torch.device("meta"):
        model = nn.Linear(5, 3)
    with pytest.raises(GradInitError, match="meta device"):
        gradinit(model, mlp_batches(2, dtype=torch.float32), _cfg(), loss_fn=xent)


def test_not_a_module():
    with pytest.raises(GradInitError, match=r"nn\.Module"):
        gradinit(lambda x: x, mlp_batches(2), _cfg(), loss_fn=xent)


def test_non_finite_loss_at_start():
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="first batch, before GradInit changed anything"):
        gradinit(model, mlp_batches(2), _cfg(), loss_fn=lambda m, b: xent(m, b) * float("inf"))
    assert_same_state(model, before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "rmsprop"}, "target must be one of"),
        ({"hvp": "approx"}, "hvp must be one of"),
        ({"eta": 0.0}, "eta must be a finite number > 0"),
        ({"eta": float("nan")}, "eta must be a finite number"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"iters": 0}, "iters must be an integer >= 1"),
        ({"overlap": 1.5}, "overlap must lie in"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
        ({"min_scale": 0.5, "max_scale": 0.1}, "max_scale=0.1 must be a finite number >= min_scale"),
        ({"norm_max_scale": 0.001}, "norm_max_scale"),
        ({"clip": -1.0}, "clip must be"),
        ({"exclude": ("(",)}, "invalid regular expression"),
        ({"eta": 2.0, "weight_decay": 0.6}, "flip the sign"),
    ],
)
def test_contradictory_or_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradInitConfig(**kwargs)


def test_normalized_step_with_adam_target_is_rejected_before_work():
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="normalize_step=True is a setting of the SGD target"):
        gradinit(model, mlp_batches(2), _cfg(target="adam", normalize_step=True), loss_fn=xent)
    assert_same_state(model, before)


def test_result_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a GradInit result"):
        GradInitResult.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="Cannot read"):
        GradInitResult.load(tmp_path / "missing.json")


def test_config_round_trip_and_resolution():
    cfg = GradInitConfig(target="sgd", iters=7, exclude="lm_head")
    assert cfg.exclude == ("lm_head",)
    assert GradInitConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.resolve()
    assert (resolved.eta, resolved.gamma, resolved.normalize_step, resolved.iters, resolved.clip) == (
        0.1,
        1.0,
        True,
        7,
        1.0,
    )
    adam = GradInitConfig().resolve()
    assert (adam.eta, adam.gamma, adam.lr, adam.betas, adam.norm_order) == (1e-3, 1000.0, 2.5e-3, (0.9, 0.98), 1)
    with pytest.raises(ValueError, match="Unknown GradInitConfig fields"):
        GradInitConfig.from_dict({"eta": 1e-3, "learning_rate": 1})
    # A config saved before fd_scheme existed ran central differences, and loads so.
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("fd_scheme", "compile")}
    assert GradInitConfig.from_dict(saved).fd_scheme == "central"
    assert GradInitConfig.from_dict(cfg.to_dict()).fd_scheme == "forward"
    with pytest.raises(ValueError, match="fd_scheme must be one of"):
        GradInitConfig(fd_scheme="backward")


def _saved_result(tmp_path):
    model = smooth_mlp()
    result = gradinit(model, mlp_batches(2), _cfg(target="sgd", eta=0.1, iters=2), loss_fn=xent)
    path = result.save(tmp_path / "scales.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "holds a JSON list"),
        ("3", "holds a JSON int"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "Cannot read"),
        ('{"format_version": 1, "scales": {}}', "missing fields"),
    ],
)
def test_result_load_says_what_is_wrong_with_a_file_that_is_not_a_result(tmp_path, content, match):
    path = tmp_path / "x.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        GradInitResult.load(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.update(scales=[1.0, 2.0]), "'scales' must map parameter names"),
        (lambda d: d["scales"].update({"0.weight": -0.5}), "finite numbers >= 0"),
        (lambda d: d["scales"].update({"0.weight": 0.0}), "scale 0, which would zero it out"),
        (lambda d: d["scales"].update({"0.weight": 0.001}), "below the run's min_scale"),
        (lambda d: d["scales"].update({"0.weight": "1"}), "finite numbers >= 0"),
        (lambda d: d.pop("kinds"), "missing fields"),
    ],
)
def test_result_load_refuses_scales_a_run_cannot_have_produced(tmp_path, change, match):
    data = _saved_result(tmp_path)
    assert GradInitResult.load(tmp_path / "scales.json").scales  # the untouched file loads
    change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        GradInitResult.load(tmp_path / "bad.json")


def test_scales_learned_on_another_architecture_are_refused_unless_partial(quiet):
    from conftest import reversal_batches, tiny_marian

    from hf_gradinit.methods.schemes import fairseq_init

    result = gradinit(tiny_marian(seed=0, layers=1), reversal_batches(2), _cfg(iters=2, eta=1e-3))
    deeper = tiny_marian(seed=0, layers=2)
    before = snapshot(deeper)
    with pytest.raises(ValueError, match=r"cover \d+ of the \d+ tensors.*--init_scales_partial"):
        result.apply(deeper)
    assert_same_state(deeper, before)
    fc1 = deeper.model.encoder.layers[0].fc1.weight.detach().clone()
    with pytest.warns(UserWarning, match="do not have the norm"):  # a 2-layer build draws other weights
        result.apply(deeper, allow_partial=True)  # the explicit opt-out applies what the file names
    assert not torch.equal(deeper.model.encoder.layers[0].fc1.weight, fc1)
    # The same architecture built another way (fairseq's init): the norms do not match.
    other = tiny_marian(seed=0, layers=1)
    fairseq_init(other)
    with pytest.raises(ValueError, match="norms far from the ones these scales were learned on"):
        result.apply(other)
    result.apply(tiny_marian(seed=0, layers=1))  # as the run built it: fine


def test_unclear_inputs_get_messages_that_name_the_argument():
    import numpy as np

    from hf_gradinit import LSUVConfig, MetaInitConfig, apply_scales, register_initializer

    assert GradInitConfig(iters=np.int64(3)).iters == 3  # numpy integers are integers
    assert LSUVConfig(max_tries=np.int64(4)).max_tries == 4 and MetaInitConfig(steps=np.int32(5)).steps == 5
    for build in (lambda: GradInitConfig(iters=True), lambda: LSUVConfig(max_tries=True),
                  lambda: MetaInitConfig(steps=2.0)):  # fmt: skip
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            build()
    with pytest.raises(TypeError, match=r"got the path '/no/such\.json': load the file first"):
        apply_scales(smooth_mlp(), "/no/such.json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        GradInitConfig(seed=2**70)
    with pytest.raises(TypeError, match=r"GradInitConfig\.gamma must be a number, got '1'"):
        GradInitConfig(gamma="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"GradInitConfig\.exclude must be a regular expression or a list"):
        GradInitConfig(exclude=5)  # type: ignore[arg-type]
    model = smooth_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match=r"must be a GradInitConfig, got a dict\. Build it with GradInitConfig"):
        gradinit(model, mlp_batches(2), {"iters": 3}, loss_fn=xent)  # type: ignore[arg-type]
    with torch.inference_mode(), pytest.raises(GradInitError, match="inference_mode"):
        gradinit(model, mlp_batches(2), _cfg(), loss_fn=xent)
    with pytest.raises(GradInitError, match="does not depend on the model's parameters"):
        gradinit(model, mlp_batches(2), _cfg(), loss_fn=lambda m, b: xent(m, b).detach())
    assert_same_state(model, before)
    with torch.no_grad():  # allowed: GradInit turns gradients on for its own passes
        gradinit(smooth_mlp(), mlp_batches(2), _cfg(target="sgd", eta=0.1), loss_fn=xent)
    with pytest.raises(ValueError, match="register_initializer\\(name\\): the name must be a non-empty string"):
        register_initializer(123)  # type: ignore[arg-type]
    meta = torch.nn.Linear(3, 3, device="meta")
    with pytest.raises(ValueError, match="on the meta device"):
        apply_scales(meta, {"weight": 0.5})


@pytest.mark.parametrize("how", ["views", "same storage twice"])
def test_parameters_sharing_memory_are_refused_not_scaled_twice(how):
    from hf_gradinit import apply_scales

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            base = torch.randn(4, 6, dtype=torch.float64)
            if how == "views":
                self.a = torch.nn.Parameter(base[:2])
                self.b = torch.nn.Parameter(base[1:3])  # overlapping rows
            else:
                self.a = torch.nn.Parameter(base)
                self.b = torch.nn.Parameter(base.view(4, 6))

        def forward(self, x):
            return x @ (self.a.sum(0) + self.b.sum(0))

    model = Shared()
    before = snapshot(model)
    with pytest.raises(GradInitError, match="'a' and 'b' share memory"):
        gradinit(model, [(torch.randn(4, 6, dtype=torch.float64),)] * 2, _cfg(target="sgd", eta=0.1),
                 loss_fn=lambda m, b: m(b[0]).pow(2).mean())  # fmt: skip
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="share memory"):
        apply_scales(model, {"a": 0.5})
    # Disjoint views of one tensor are fine: each is its own memory.
    base = torch.randn(4, 6)
    ok = torch.nn.Module()
    ok.a, ok.b = torch.nn.Parameter(base[:2]), torch.nn.Parameter(base[2:])
    apply_scales(ok, {"a": 0.5, "b": 2.0})


@pytest.mark.parametrize("name", ["GradInitConfig", "LSUVConfig", "MetaInitConfig"])
def test_every_config_names_a_bad_seed_or_exclude(name):
    import hf_gradinit

    cls = getattr(hf_gradinit, name)
    with pytest.raises(ValueError, match=rf"{name}\.seed must be .*an integer in \[0, 2\*\*63\)"):
        cls(seed=2**70)
    with pytest.raises(TypeError, match=rf"{name}\.exclude must be a regular expression or a list"):
        cls(exclude=5)
