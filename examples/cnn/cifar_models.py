"""The GradInit paper's CIFAR-10 networks, each with and without BatchNorm.

Names are ``{family}{depth}_{bn|nobn}``: ``vgg11``/``13``/``16``/``19`` and the CIFAR ResNets
``resnet20``/``32``/``44``/``56``/``110``/``1202`` (three stages of 16/32/64 channels, basic
blocks, identity shortcuts that subsample and zero-pad channels), e.g. ``vgg19_nobn`` or
``resnet110_bn``; the ResNets also come as ``_nobn_paper`` (below). ``width_mult`` scales every
channel count, for narrow CPU versions.

* **Default initialisation** (the paper's "Kaiming" baseline): convolutions Kaiming-normal with
  ``fan_out`` and ReLU gain, biases 0, BatchNorm weight 1 and bias 0; the VGG classifier
  N(0, 0.01); the ResNet classifier PyTorch's default with bias 0.
* **ResNets without BatchNorm, two of them**, as the authors' code has two:

  - ``resnet{d}_nobn``: the structure of the authors' ``fixup_resnet{d}`` (Fixup's block
    without Fixup's zero initialisation; ``--model_init fixup`` applies that): a learnable
    scalar bias before each convolution and before each activation, and a learnable scalar
    multiplier at the end of each residual branch (biases start at 0, multipliers at 1), so
    GradInit has a per-branch scale to learn. One difference from the authors' block: the
    identity path here also carries the first scalar bias (``x + bias1a``) in every block,
    theirs only where it is subsampled; the bias starts at 0, so the networks start alike.
    The reduced CPU tables and the H100/H200 ResNet-110 rows of ``RESULTS.md`` before
    2026-12-07 were measured with this one.
  - ``resnet{d}_nobn_paper``: the network of the paper's "ResNet-110 w/o BN" column, the
    authors' ``resnet{d}`` with ``--no_bn`` (their ``launch/run_gradinit.sh``): the BatchNorm
    ResNet with its BatchNorms removed and a bias on every convolution (biases start at 0), no
    scalar biases or multipliers. ``train_cifar.py`` trains it with the authors' optimizer rule
    for it (biases at a tenth of the learning rate, weight decay on every tensor).
* ``forward(pixel_values, labels=None)`` returns ``ImageClassifierOutput`` with the
  cross-entropy ``loss`` when labels are given, so the 🤗 ``Trainer`` trains these models and
  ``hf_gradinit`` finds the loss without a ``loss_fn``.

>>> model = build_model("resnet20_bn")
>>> out = model(torch.zeros(2, 3, 32, 32), labels=torch.tensor([0, 1]))
>>> tuple(out.logits.shape), out.loss.ndim
((2, 10), 0)
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import ImageClassifierOutput

VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
RESNET_DEPTHS = (20, 32, 44, 56, 110, 1202)
MODEL_NAMES = tuple(
    [f"vgg{d}_{bn}" for d in VGG_LAYOUTS for bn in ("nobn", "bn")]
    + [f"resnet{d}_{bn}" for d in RESNET_DEPTHS for bn in ("nobn", "bn", "nobn_paper")]
)


def _channels(c: int, width_mult: float) -> int:
    return max(1, round(c * width_mult))


class CifarClassifier(nn.Module):
    """A classifier whose ``forward`` also computes the loss (what ``Trainer`` expects)."""

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.logits(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


class VGG(CifarClassifier):
    def __init__(self, depth: int, batch_norm: bool, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in VGG_LAYOUTS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_ch = _channels(int(item), width_mult)
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(pixel_values), 1))


class ScalarBias(nn.Module):
    """``x + b`` with one learnable scalar ``b`` (starts at 0)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScalarScale(nn.Module):
    """``x * s`` with one learnable scalar ``s`` (starts at 1)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Shortcut(nn.Module):
    """Identity shortcut across a stage boundary: subsample by ``stride``, zero-pad the new
    channels (option A of the CIFAR ResNet), with a BatchNorm on the subsampled input in the
    BatchNorm variant (as the authors' ResNet has)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, batch_norm: bool):
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch
        self.norm = nn.BatchNorm2d(in_ch) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x[:, :, :: self.stride, :: self.stride])
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """``norm``: ``"bn"`` (BatchNorm after each convolution), ``"nobn"`` (the scalar biases and
    multiplier of Fixup's block) or ``"nobn_paper"`` (convolutions with biases, nothing else)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str):
        super().__init__()
        self.norm = norm
        conv_bias = norm == "nobn_paper"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=conv_bias)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=conv_bias)
        if norm == "bn":
            self.bn1, self.bn2 = nn.BatchNorm2d(out_ch), nn.BatchNorm2d(out_ch)
        elif norm == "nobn":
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (ScalarBias() for _ in range(4))
            self.scale = ScalarScale()
        batch_norm = norm == "bn"
        self.shortcut = Shortcut(in_ch, out_ch, stride, batch_norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "bn":
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            identity = x
        elif self.norm == "nobn_paper":
            out = self.conv2(F.relu(self.conv1(x)))
            identity = x
        else:
            x = self.bias1a(x)
            out = self.conv2(self.bias2a(F.relu(self.bias1b(self.conv1(x)))))
            out = self.bias2b(self.scale(out))
            identity = x
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        return F.relu(out + identity)


class ResNet(CifarClassifier):
    """``norm`` as in ``BasicBlock``."""

    def __init__(self, depth: int, norm: str, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"A CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, 1202, ...), not {depth}.")
        if norm not in ("bn", "nobn", "nobn_paper"):
            raise ValueError(f"norm must be 'bn', 'nobn' or 'nobn_paper', not {norm!r}.")
        blocks = (depth - 2) // 6
        widths = [_channels(c, width_mult) for c in (16, 32, 64)]
        self.norm = norm
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=norm == "nobn_paper")
        self.stem = {"bn": lambda: nn.BatchNorm2d(widths[0]), "nobn": ScalarBias, "nobn_paper": nn.Identity}[norm]()
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(in_ch if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1, norm)
                     for j in range(blocks)]  # fmt: skip
            stages.append(nn.Sequential(*stage))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.head_bias = ScalarBias() if norm == "nobn" else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(self.conv1(pixel_values)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.head_bias(x))


def _parse(name: str, width_mult: float = 1.0) -> tuple[str, int, str]:
    """``(family, depth, norm)`` of a model name, or a ``ValueError`` saying what is valid."""
    match = re.fullmatch(r"(vgg|resnet)(\d+)_(bn|nobn|nobn_paper)", name)
    depth = int(match.group(2)) if match else -1
    valid = (match is not None) and (
        depth in VGG_LAYOUTS and match.group(3) != "nobn_paper" if match.group(1) == "vgg" else (depth - 2) % 6 == 0
    )
    if not valid:
        raise ValueError(f"Unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)} (ResNets: any 6n+2 depth).")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}.")
    return match.group(1), depth, match.group(3)


def check_model(name: str, width_mult: float = 1.0) -> tuple[str, int, bool]:
    """``(family, depth, batch_norm)`` of a model name, or a ``ValueError`` saying what is valid."""
    kind, depth, norm = _parse(name, width_mult)
    return kind, depth, norm == "bn"


def build_model(name: str, num_classes: int = 10, width_mult: float = 1.0) -> CifarClassifier:
    """A model by name (see the module docstring), freshly initialised."""
    kind, depth, norm = _parse(name, width_mult)
    if kind == "vgg":
        return VGG(depth, batch_norm=norm == "bn", num_classes=num_classes, width_mult=width_mult)
    return ResNet(depth, norm=norm, num_classes=num_classes, width_mult=width_mult)


def family(name: str) -> str:
    """``"vgg"`` or ``"resnet"``, with ``"_bn"`` or ``"_nobn"``: the key of the GradInit presets
    (both no-BN ResNets are ``"resnet_nobn"``, as the authors' scripts give them one setting)."""
    kind, _, batch_norm = check_model(name)
    return f"{kind}_{'bn' if batch_norm else 'nobn'}"


def is_paper_nobn_resnet(name: str) -> bool:
    """Whether ``name`` is the authors' no-BN ResNet (``resnet{d}_nobn_paper``), which the paper's
    recipe trains with its biases at a tenth of the learning rate and weight decay everywhere."""
    return _parse(name)[2] == "nobn_paper"
