"""The guarantees every data-driven initialiser gives, checked for each registered one (as PEFT's
``testing_common.py`` runs one set of checks over a matrix of methods).

They come from the shared driver (``hf_gradinit.driver``), so a new method that uses it gets them;
this module is where a method registered with ``needs_data=True`` and a ``config_class`` is
held to them: restore on failure (parameters, buffers, modes), the caller's RNG untouched,
determinism under the config's seed, half-precision models and inputs, bad input refused
before any work with a message naming the argument, and saved results that re-apply bit for bit
(and refuse another method's file by naming it).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import assert_same_state, mlp_batches, snapshot, xent
from torch import nn

from hf_gradinit import (
    GradInitConfig,
    GradInitError,
    LSUVConfig,
    MetaInitConfig,
    available_initializers,
    driver,
    get_initializer,
)
from hf_gradinit.config import InitConfig
from hf_gradinit.driver import DataDrivenInitializer

CONFIGS = {
    "gradinit": lambda: GradInitConfig(target="sgd", eta=0.1, iters=4, lr=0.05, show_progress=False),
    "lsuv": lambda: LSUVConfig(show_progress=False),
    "metainit": lambda: MetaInitConfig(steps=4, lr=0.01, show_progress=False),
}
METHODS = sorted(CONFIGS)


pytestmark = pytest.mark.usefixtures("one_thread")


def bn_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Linear + BatchNorm (running statistics, a buffer) + tanh + LayerNorm + Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 7), nn.LayerNorm(7), nn.Linear(7, 3)
    ).to(dtype)


def run(name: str, model: nn.Module, data, config=None, **kwargs):
    return get_initializer(name).fn(model, data, CONFIGS[name]() if config is None else config, loss_fn=xent, **kwargs)


def test_every_data_driven_initialiser_is_in_the_matrix():
    driven = {n for n in available_initializers() if get_initializer(n).needs_data}
    assert driven == set(METHODS), f"add the new method to CONFIGS: {driven - set(METHODS)}"


@pytest.mark.parametrize("name", METHODS)
def test_a_failure_midway_restores_parameters_buffers_and_modes(name):
    model = bn_mlp()
    model.train()
    model[1].eval()  # a mixed mode, to be given back as it was
    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    calls = {"n": 0}

    def failing(m, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # after the method has written into the model
            raise RuntimeError("boom on the third pass")
        return xent(m, batch)

    with pytest.raises(GradInitError, match="boom on the third pass") as info:
        get_initializer(name).fn(model, mlp_batches(4), CONFIGS[name](), loss_fn=failing)
    assert "restored" in str(info.value)
    assert calls["n"] == 3
    assert_same_state(model, before)
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("name", METHODS)
def test_the_callers_rng_is_untouched_and_a_seed_gives_the_same_result(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = bn_mlp(seed=1), bn_mlp(seed=1)
    torch.set_rng_state(state)
    run(name, a, mlp_batches(4))
    assert torch.equal(torch.get_rng_state(), state)
    run(name, b, mlp_batches(4))
    assert_same_state(b, snapshot(a))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), bn_mlp(seed=1).parameters(), strict=True))


@pytest.mark.parametrize("name", METHODS)
def test_half_precision_models_and_inputs(name):
    model = bn_mlp(dtype=torch.bfloat16)
    run(name, model, mlp_batches(4, dtype=torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_bad_input_is_refused_before_any_work(name):
    model = bn_mlp()
    before = snapshot(model)
    fn = get_initializer(name).fn
    config_class = type(CONFIGS[name]())
    cases = [
        (lambda: fn(model, mlp_batches(2), {"steps": 3}, loss_fn=xent),
         rf"must be a {config_class.__name__}, got a dict"),
        (lambda: fn(model, None, CONFIGS[name](), loss_fn=xent), "needs batches"),
        (lambda: fn(model, [], CONFIGS[name](), loss_fn=xent), "yielded no batch"),
        (lambda: fn("model", mlp_batches(2), CONFIGS[name](), loss_fn=xent), "needs an nn.Module"),
        (lambda: fn(copy.deepcopy(model).requires_grad_(False), mlp_batches(2), CONFIGS[name](), loss_fn=xent),
         "trainable"),
    ]  # fmt: skip
    for call, match in cases:
        with pytest.raises(GradInitError, match=match):
            call()
    with torch.inference_mode(), pytest.raises(GradInitError, match="inference_mode"):
        fn(model, mlp_batches(2), CONFIGS[name](), loss_fn=xent)
    with pytest.raises(ValueError, match=rf"{config_class.__name__}\.seed must be"):
        config_class(seed=-1)
    with pytest.raises(ValueError, match=rf"{config_class.__name__}\.exclude has an invalid regular expression"):
        config_class(exclude=["("])
    assert_same_state(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_result_reapplies_bit_for_bit_and_other_files_are_named(name, tmp_path):
    spec = get_initializer(name)
    model = bn_mlp(seed=2)
    result = run(name, model, mlp_batches(4))
    path = result.save(tmp_path / f"{name}.json")
    for again in (result, spec.load_result(path)):
        fresh = bn_mlp(seed=2)
        spec.reapply(fresh, again)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    for other in METHODS:
        if other != name:
            with pytest.raises(ValueError, match=rf"written by the initialiser '{name}', not '{other}'"):
                get_initializer(other).load_result(path)


def test_a_scales_file_written_before_the_refactor_still_loads():
    """A GradInit file saved by an earlier version (no initializer tag), committed with the results."""
    from pathlib import Path

    from hf_gradinit import GradInitResult

    path = Path(__file__).resolve().parents[1] / (
        "examples/translation/results/cpu_paper_small/first_step/gradinit_scales_lr0.001.json"
    )
    assert '"initializer"' not in path.read_text()
    result = get_initializer("gradinit").load_result(path)
    assert isinstance(result, GradInitResult) and result.iterations == 780
    weights = [a for n, a in result.scales.items() if result.kinds[n] == "weight"]
    # its floor-bound scales sit one float32 rounding below 0.01, and must still be accepted
    assert min(weights) < 0.01 and min(weights) == pytest.approx(0.01, rel=1e-6)


@dataclasses.dataclass
class UnitNormConfig(InitConfig):
    exclude: tuple[str, ...] = ()
    seed: int = 0
    show_progress: bool = False


@dataclasses.dataclass
class UnitNormResult:
    timings: dict

    def summary(self, max_rows=None) -> str:
        return "UnitNorm done"


class UnitNorm(DataDrivenInitializer):
    """The driver module's example method: every tensor scaled to unit norm, one step."""

    display_name = "UnitNorm"
    function_name = "unit_norm"
    config_class = UnitNormConfig

    def setup(self, prepared, batch):
        self.prepared = prepared
        return 1

    def step(self, step, batch):
        xent(self.model, batch)  # a forward pass, where a method would measure something
        return {"step": step}

    def final_values(self, first_batch):
        return [t / t.norm() if t.any() else None for t in self.prepared.theta0]

    def result(self, timings):
        return UnitNormResult(timings)


def test_a_new_method_on_the_driver_gets_its_guarantees():
    model = bn_mlp()
    result = driver.run(UnitNorm, model, mlp_batches(2))
    assert isinstance(result, UnitNormResult) and result.timings["total_s"] > 0
    norms = [torch.linalg.vector_norm(p).item() for p in model.parameters()]
    assert all(n == pytest.approx(1.0) or n == 0.0 for n in norms) and norms.count(0.0) == 2  # the norm layers' biases

    class Broken(UnitNorm):
        def final_values(self, first_batch):
            raise RuntimeError("no final values")

    model = bn_mlp()
    before = snapshot(model)
    with pytest.raises(GradInitError, match=r"UnitNorm failed .*no final values\nThe model was restored"):
        driver.run(Broken, model, mlp_batches(2))
    assert_same_state(model, before)
    with pytest.raises(GradInitError, match="unit_norm's config must be a UnitNormConfig"):
        driver.run(UnitNorm, model, mlp_batches(2), {"seed": 1})
