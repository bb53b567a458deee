"""examples/cnn: the paper's CIFAR networks, the data, train_cifar.py and the sweep (CPU, small)."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script_main
from torch import nn

pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "cnn"))
DATA = Path(os.environ.get("HF_GRADINIT_DATA", REPO.parent / "shared" / "data"))
CIFAR_ARCHIVE = DATA / "cifar10" / "cifar10-jpeg.tar.xz"

import cifar_data  # noqa: E402
import train_cifar  # noqa: E402
from cifar_models import MODEL_NAMES, ScalarScale, build_model  # noqa: E402

TINY = [
    "--width_mult", "0.25", "--builtin_train_size", "96", "--builtin_test_size", "64", "--num_train_epochs", "2",
    "--per_device_train_batch_size", "32", "--disable_tqdm", "true", "--logging_steps", "1",
]  # fmt: skip


@pytest.mark.parametrize("name", ["vgg11_nobn", "vgg19_bn", "resnet20_nobn", "resnet56_bn", "resnet20_nobn_paper"])
def test_architectures_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, width_mult=0.25)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x, labels=y)
    assert out.logits.shape == (4, 10) and out.loss.ndim == 0
    assert model(x).loss is None
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == name.endswith("_bn")


def test_parameter_counts_match_the_paper():
    assert sum(p.numel() for p in build_model("vgg19_nobn").parameters()) / 1e6 == pytest.approx(20.03, abs=0.01)
    resnet110 = sum(p.numel() for p in build_model("resnet110_bn").parameters()) / 1e6
    assert resnet110 == pytest.approx(1.73, abs=0.01)
    assert sum(p.numel() for p in build_model("resnet20_bn").parameters()) / 1e6 == pytest.approx(0.27, abs=0.01)


def test_resnet_without_bn_has_scalar_biases_and_a_multiplier_per_branch():
    model = build_model("resnet20_nobn")
    assert sum(isinstance(m, ScalarScale) for m in model.modules()) == 9  # one per residual block
    scalars = [n for n, p in model.named_parameters() if p.numel() == 1]
    assert len(scalars) == 9 * 5 + 2  # 4 biases + 1 multiplier per block; stem and head biases
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_the_papers_no_bn_resnet_is_the_authors_plain_network():
    """resnet*_nobn_paper: the BatchNorm ResNet without its BatchNorms, a zero bias on every
    convolution, no scalar biases or multipliers; a block computes relu(conv2(relu(conv1 x)) + x)."""
    torch.manual_seed(0)
    model = build_model("resnet110_nobn_paper")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(1.73, abs=0.01)
    assert not [n for n, p in model.named_parameters() if p.numel() == 1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 109 and all(c.bias is not None and not c.bias.any() for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    w = model.layer2[3].conv1.weight  # 32 -> 32 channels: Kaiming fan_out
    assert w.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)
    block = model.layer1[1]
    with torch.no_grad():
        for c in (block.conv1, block.conv2):
            c.bias.normal_()  # so the biases take part in what is checked
        x = torch.randn(2, 16, 8, 8)
        expected = torch.relu(block.conv2(torch.relu(block.conv1(x))) + x)
        assert torch.allclose(block(x), expected)
    assert "resnet110_nobn_paper" in MODEL_NAMES and "vgg19_nobn_paper" not in MODEL_NAMES
    with pytest.raises(ValueError, match="choose one of"):
        build_model("vgg19_nobn_paper")


def test_the_papers_no_bn_resnet_trains_with_the_authors_optimizer_rule():
    """The authors' train_cifar.py for a ResNet with --no_bn: every bias at a tenth of the lr,
    weight decay on every tensor; the schedule scales each group from its own lr."""
    from cifar_trainer import CifarTrainer
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", learning_rate=0.1, optim="sgd", optim_args="momentum=0.9",
                             weight_decay=1e-4, report_to="none", lr_scheduler_type="cosine")  # fmt: skip
    model = build_model("resnet20_nobn_paper", width_mult=0.25)
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = CifarTrainer(model=model, args=args, paper_nobn_resnet=True).create_optimizer()
    groups = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    groups = [g for g in groups if g[2]]
    biases = {n for n in names.values() if n.endswith(".bias")}
    assert len(biases) == 20  # 19 convolutions and the classifier
    assert [(lr, wd) for lr, wd, _ in groups] == [(0.1, 1e-4), (pytest.approx(0.01), 1e-4)]
    assert groups[0][2] == set(names.values()) - biases and groups[1][2] == biases
    trainer = CifarTrainer(model=model, args=args, paper_nobn_resnet=True)
    optimizer = trainer.create_optimizer()
    trainer.create_scheduler(10, optimizer)
    optimizer.step()
    trainer.lr_scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups if g["params"]]
    assert lrs[1] == pytest.approx(lrs[0] / 10) and lrs[0] < 0.1
    # Every other model keeps the project's rule: one lr, no decay on scalars and norms.
    other = CifarTrainer(model=build_model("resnet20_nobn", width_mult=0.25), args=args).create_optimizer()
    assert {g["lr"] for g in other.param_groups} == {0.1}


def test_default_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    conv = build_model("vgg19_nobn").features[2]  # 64 -> 64 channels, 3x3
    assert isinstance(conv, nn.Conv2d)
    expected = math.sqrt(2 / (64 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02) and conv.bias.abs().sum() == 0


def test_unknown_model_and_bad_width_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        build_model("vgg12_bn")
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet21_bn")
    with pytest.raises(ValueError, match="positive"):
        build_model("resnet20_bn", width_mult=0)
    assert "resnet110_nobn" in MODEL_NAMES and "vgg19_bn" in MODEL_NAMES


def test_builtin_shapes_are_balanced_and_seeded():
    x, y = cifar_data.builtin_shapes(50, seed=3)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10
    x2, y2 = cifar_data.builtin_shapes(50, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_augmentation_keeps_shape_and_eval_is_deterministic():
    x, y = cifar_data.builtin_shapes(4, seed=0)
    train = cifar_data.CifarDataset(x, y, train=True, cutout=16)
    test = cifar_data.CifarDataset(x, y, train=False)
    torch.manual_seed(0)
    item = train[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"] == y[0]
    assert torch.equal(test[1]["pixel_values"], test[1]["pixel_values"])
    mean = torch.tensor(cifar_data.CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(cifar_data.CIFAR_STD).view(3, 1, 1)
    assert torch.allclose(test[1]["pixel_values"], (x[1].float() / 255 - mean) / std)


def _train(tmp_path, *argv: str) -> dict:
    return train_cifar.main(["--output_dir", str(tmp_path / "out"), *TINY, *argv])


@pytest.mark.parametrize(
    ("model", "init"),
    [
        ("resnet20_bn", "default"),
        ("vgg11_nobn", "gradinit"),
        ("resnet20_nobn", "fixup"),
        ("resnet20_nobn_paper", "gradinit"),
    ],
)
def test_train_script_end_to_end_on_builtin_data(tmp_path, capsys, recwarn, model, init):
    results = _train(tmp_path, "--model", model, "--model_init", init, "--gradinit_iters", "3")
    out = capsys.readouterr().out
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]  # pinning follows the device
    # the console ends as upstream's scripts do, then says where the results went
    assert "***** train metrics *****" in out and "***** eval metrics *****" in out
    assert f"results in {tmp_path / 'out' / 'all_results.json'}" in out
    assert (tmp_path / "out" / "train_results.json").is_file()
    picture = tmp_path / "out" / "init_scales.png"
    assert picture.is_file() == (init != "default")
    if init == "gradinit":
        assert picture.stat().st_size > 10_000 and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out.count("[hf_gradinit] GradInit: 3 iterations") == 1
        assert results["gradinit/iterations"] == 3 and results["init_summary"].startswith("GradInit: 3 iterations")
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["acc1"] == results["acc1"] and 0 <= results["acc1"] <= 100
    assert [e for e, _ in results["accuracy_curve"]] == [1.0, 2.0]
    assert results["acc_best"] == max(a for _, a in results["accuracy_curve"])
    assert results["machine"] and results["command"] and results["wall_time_s"] > 0
    if init == "gradinit":
        config = results["init_config"]
        # the paper's preset (VGG without BN 1e-2, ResNet without BN 5e-2); SGD target with the
        # normalised step at the training lr
        preset = 1e-2 if model.startswith("vgg") else 5e-2
        assert (config["lr"], config["target"], config["eta"], config["normalize_step"]) == (preset, "sgd", 0.1, True)
        assert config["gamma"] == 1.0 and config["iters"] == 3
        assert results["init_seconds"] > 0 and results["init_fraction_of_train_runtime"] > 0
    else:
        assert "init_seconds" not in results


def test_presets_and_recipe_resolution(tmp_path, monkeypatch):
    """Iterations default to one epoch of batches, the scale lr to the family's; gradient
    clipping is on without BatchNorm only; weight decay skips BatchNorm and scalar parameters."""
    seen = {}
    import cifar_trainer

    real_init = cifar_trainer.CifarTrainer.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen["trainer"] = self

    monkeypatch.setattr(cifar_trainer.CifarTrainer, "__init__", spy)
    results = _train(tmp_path, "--model", "resnet20_bn", "--model_init", "gradinit", "--num_train_epochs", "1",
                     "--warmup_epochs", "1")  # fmt: skip
    assert results["init_config"]["iters"] == 3 and results["init_config"]["lr"] == 1e-3  # ceil(96/32); ResNet+BN
    trainer = seen["trainer"]
    assert trainer.args.max_grad_norm == 0.0 and trainer.args.warmup_steps == 3
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    assert "conv1.weight" in decayed and "fc.weight" in decayed
    assert not any(".bn" in n or n.startswith("stem") or "shortcut.norm" in n for n in decayed)
    # The folder holds that run now and no checkpoint: a second run stops rather than overwrite
    # it (upstream's rule), before any data work, unless told to.
    with pytest.raises(SystemExit):
        _train(tmp_path, "--model", "resnet20_nobn", "--num_train_epochs", "1")
    _train(tmp_path, "--model", "resnet20_nobn", "--num_train_epochs", "1", "--overwrite_output_dir", "true")
    trainer = seen["trainer"]
    assert trainer.args.max_grad_norm == 1.0
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    scalars = {n for n, p in trainer.model.named_parameters() if p.numel() == 1}  # biases, multipliers
    assert "layer1.0.conv1.weight" in decayed and "fc.bias" in decayed and not decayed & scalars
    # MetaInit as the GradInit authors ran it takes their batch, the training batch (GradInit's
    # preset is 1.5x); the sign-SGD MetaInit keeps the shared default
    from hf_gradinit.trainer import callback

    sizes = []
    real_size = callback.gradinit_batch_size
    monkeypatch.setattr(callback, "gradinit_batch_size", lambda *a: sizes.append(real_size(*a)) or sizes[-1])
    for optimizer in ("adam", "sign_sgd"):
        _train(tmp_path, "--model", "resnet20_nobn_paper", "--num_train_epochs", "1", "--overwrite_output_dir", "true",
               "--model_init", "metainit", "--metainit_optimizer", optimizer, "--metainit_steps", "1")  # fmt: skip
    assert sizes == [32, 48]


def _fails(tmp_path, capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        _train(tmp_path, *argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bad_arguments_exit_with_clear_messages(tmp_path, capsys):
    assert "choose one of" in _fails(tmp_path, capsys, "--model", "vgg12_bn")
    assert "no such file or folder" in _fails(tmp_path, capsys, "--data_dir", str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    assert "no train or test/ folder" in _fails(tmp_path, capsys, "--data_dir", str(tmp_path / "flat"))
    (tmp_path / "cifar.zip").write_bytes(b"PK")
    assert "expected a folder or a .tar" in _fails(tmp_path, capsys, "--data_dir", str(tmp_path / "cifar.zip"))
    assert "--train_samples must be positive" in _fails(tmp_path, capsys, "--train_samples", "0")
    assert "--cutout" in _fails(tmp_path, capsys, "--cutout", "-2")
    assert "'nope' is not a registered initialiser" in _fails(tmp_path, capsys, "--model_init", "nope")
    # GradInit's options are checked before the data is read (the data_dir does not exist).
    err = _fails(tmp_path, capsys, "--model_init", "gradinit", "--gradinit_lr", "-1", "--data_dir", "/nonexistent")
    assert "--gradinit_lr must be a finite number > 0" in err
    err = _fails(tmp_path, capsys, "--model_init", "gradinit", "--gradinit_beta2", "0.9")
    assert err.startswith("train_cifar.py: error: Give both --gradinit_beta1")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], "--model_init"), (["--model", "vgg12_bn"], "choose one of"),
     (["--model_init", "gradinit", "--gradinit_lr", "-1"], "--gradinit_lr")],
)  # fmt: skip
def test_help_and_argument_errors_answer_without_the_slow_imports(argv, expected):
    """--help and a bad option must not wait for the Trainer, the models and the data code to import."""
    output, loaded = run_script_main(
        REPO / "examples" / "cnn" / "train_cifar.py",
        argv,
        ("transformers.trainer", "transformers.modeling_utils", "hf_gradinit.trainer.callback", "cifar_data"),
    )
    assert expected in output and loaded == [], (loaded, output[-800:])


@pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason=f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
def test_real_cifar_slice_from_the_shared_archive(tmp_path):
    results = _train(
        tmp_path, "--data_dir", str(CIFAR_ARCHIVE), "--cache_dir", str(tmp_path / "cache"),
        "--train_samples", "128", "--eval_samples", "64", "--num_train_epochs", "1", "--model", "resnet20_bn",
    )  # fmt: skip
    assert results["train_samples"] == 128 and results["test_samples"] == 64 and results["acc1"] is not None


def _image_folder(root: Path, classes: tuple[str, ...], per_class: int, seed: int = 0) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (40, 36, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{c}_{i:03d}.png")


def test_image_folder_reads_as_datasets_imagefolder_does(tmp_path, monkeypatch):
    """load_cifar reads the folder itself (datasets' Arrow conversion took most of a full
    CIFAR-10 load); order, labels, class names and pixels must be what imagefolder gives."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    _image_folder(tmp_path / "data", ("truck", "bird", "cat"), per_class=4)
    splits, names = cifar_data.load_cifar(tmp_path / "data", tmp_path / "cache")
    raw = load_dataset("imagefolder", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "hf"))
    assert names == raw["train"].features["label"].names == ["bird", "cat", "truck"]
    for split in ("train", "test"):
        images, labels = splits[split]
        assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.tolist() == raw[split]["label"]
        expected = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((32, 32))))
                                for im in raw[split]["image"]]).permute(0, 3, 1, 2)  # fmt: skip
        assert torch.equal(images, expected)
    # a subset is the seeded choice of the same list, decoded alone
    part, _ = cifar_data.load_cifar(tmp_path / "data", tmp_path / "other", train_samples=5, seed=3)
    idx = cifar_data.subset_indices(12, 5, 3)
    assert torch.equal(part["train"][0], splits["train"][0][idx]) and torch.equal(
        part["train"][1], splits["train"][1][idx]
    )


def test_runs_started_together_share_one_cache(tmp_path, monkeypatch):
    """Sweeps start runs side by side, and each decodes a stale cache (the shared archive is
    re-placed every session): the two writes must not collide. Both saves finish before either
    rename, the order in which one temporary file for all made the second run fail."""
    import tarfile
    import threading

    _image_folder(tmp_path / "data", ("a", "b"), per_class=2)
    archive = tmp_path / "cifar.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "data", arcname="cifar")
    both_saved = threading.Barrier(2, timeout=30)
    real_save = torch.save

    def save_then_wait(*args, **kwargs):
        real_save(*args, **kwargs)
        both_saved.wait()

    monkeypatch.setattr(torch, "save", save_then_wait)
    outcomes: list[object] = []

    def load() -> None:
        try:
            outcomes.append(cifar_data.load_cifar(archive, tmp_path / "cache")[0]["train"][1].tolist())
        except Exception as err:  # reported below, with the other thread's outcome
            outcomes.append(err)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [[0, 0, 1, 1]] * 2, outcomes
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(left) == 2 and left[0] == "cifar" and left[1].startswith("decoded-cifar-") and left[1].endswith(".pt")


def test_image_folders_with_different_classes_are_refused(tmp_path):
    _image_folder(tmp_path / "data", ("a", "b"), per_class=1)
    (tmp_path / "data" / "test" / "b").rename(tmp_path / "data" / "test" / "c")
    with pytest.raises(cifar_data.DataError, match="different class folders"):
        cifar_data.load_cifar(tmp_path / "data", tmp_path / "cache")


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import sweep_cifar

    argv = [
        "--out", str(tmp_path / "sweep"), "--models", "resnet20_nobn", "--variants", "default", "gradinit+warmup",
        "--seeds", "0", "1", "--jobs", "2", "--threads_per_run", "1",
        "--", *TINY, "--num_train_epochs", "1", "--gradinit_iters", "2",
    ]  # fmt: skip
    records = sweep_cifar.main(argv)
    assert len(records) == 4 and all(r["returncode"] == 0 for r in records), [r["returncode"] for r in records]
    warm = next(r for r in records if r["variant"] == "gradinit+warmup")
    assert "--warmup_epochs 1" in warm["command"] and "--model_init gradinit" in warm["command"]
    assert warm["init_seconds"] > 0
    # GradInit's scales are kept beside the table (runs/ is scratch); Kaiming saves nothing.
    from hf_gradinit import GradInitResult

    assert "--save_init_scales true" in warm["command"] and warm["init_file"] == f"init/{warm['key']}.json"
    kept = GradInitResult.load(tmp_path / "sweep" / warm["init_file"])
    original = GradInitResult.load(tmp_path / "sweep" / "runs" / warm["key"] / "init_scales.json")
    assert kept.scales and kept.scales == original.scales
    assert (tmp_path / "sweep" / "init" / f"{warm['key']}.png").read_bytes()[:4] == b"\x89PNG"
    plain = next(r for r in records if r["variant"] == "default")
    assert "init_file" not in plain and "--save_init_scales" not in plain["command"]
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "| default | Acc1 |" in table and "| gradinit+warmup | Acc_best |" in table and "(n=2)" in table
    assert (tmp_path / "sweep" / "accuracy.png").stat().st_size > 0
    assert all(r["loss_curve"] and r["loss_curve"][0][0] == 1 for r in records)  # kept: loss.png reads it
    assert (tmp_path / "sweep" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not sweep_cifar.write_loss_plot([{**records[0], "loss_curve": None}], tmp_path / "none.png",
                                           ["resnet20_nobn"], ["default"])  # fmt: skip
    assert not (tmp_path / "none.png").exists()
    capsys.readouterr()
    again = sweep_cifar.main(argv)
    assert len(again) == 4 and "4 runs already done, 0 to go" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep_cifar.main(["--out", str(tmp_path / "x"), "--variants", "magic"])


def test_sweep_variant_options_reach_the_initialiser(tmp_path, capsys):
    """``INIT:KEY=VALUE,...`` runs the initialiser with ``--INIT_KEY VALUE``: here MetaInit as
    the GradInit authors ran it, on the paper's no-BN ResNet, next to the plain variant name."""
    pytest.importorskip("matplotlib")
    import sweep_cifar

    variant = "metainit:optimizer=adam,steps=2+warmup"
    run = sweep_cifar.Run("resnet20_nobn_paper", variant, 0)
    assert run.init == "metainit" and sweep_cifar.init_options(variant) == [("optimizer", "adam"), ("steps", "2")]
    records = sweep_cifar.main([
        "--out", str(tmp_path / "sweep"), "--models", "resnet20_nobn_paper", "--variants", variant, "--seeds", "0",
        "--jobs", "1", "--", *TINY, "--num_train_epochs", "1",
    ])  # fmt: skip
    assert [r["returncode"] for r in records] == [0]
    assert "--metainit_optimizer adam --metainit_steps 2 --warmup_epochs 1" in records[0]["command"]
    saved = json.loads((tmp_path / "sweep" / "runs" / run.key / "all_results.json").read_text())
    assert (saved["init_config"]["optimizer"], saved["init_config"]["lr"], saved["metainit/steps"]) == ("adam", 1e-3, 2)
    from hf_gradinit import MetaInitResult

    assert len(MetaInitResult.load(tmp_path / "sweep" / records[0]["init_file"]).history) == 2
    assert f"| {variant} | Acc1 |" in (tmp_path / "sweep" / "results.md").read_text()
    for bad in ("metainit:optimizer", "magic:steps=2"):
        with pytest.raises(SystemExit):
            sweep_cifar.main(["--out", str(tmp_path / "x"), "--variants", bad])
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_const_lr_epoch_runs_at_the_constant_lr_then_the_schedule_from_its_peak(tmp_path):
    import cifar_trainer
    from transformers import TrainingArguments

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(str(tmp_path), learning_rate=0.1, lr_scheduler_type="cosine", use_cpu=True,
                             report_to="none")  # fmt: skip
    trainer = cifar_trainer.CifarTrainer(model=model, args=args, const_lr_steps=4, const_lr=0.01)
    trainer.create_optimizer_and_scheduler(num_training_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[:4] == pytest.approx([0.01] * 4)
    assert lrs[4] == pytest.approx(0.1)  # the schedule starts from its peak after the constant phase
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))  # then the cosine decays
    assert lrs[-1] < 0.01


def test_const_lr_and_warmup_are_two_baselines(tmp_path, capsys):
    err = _fails(tmp_path, capsys, "--const_lr_epochs", "1", "--warmup_epochs", "1")
    assert "two baselines" in err
    results = _train(tmp_path, "--model", "resnet20_bn", "--const_lr_epochs", "1")
    assert results["const_lr_epochs"] == 1 and results["const_lr"] == 0.01
