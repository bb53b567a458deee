"""Pictures of what an initialiser did: the scale of every tensor, by layer.

A learned initialisation is looked at, not read: :func:`plot_scales` draws one panel per part
of the model (encoder and decoder apart, when the names say so), one line per kind of tensor
across the stacked blocks, and the tensors outside the blocks (embeddings, final norms, heads)
as bars. Models whose names have no numbered blocks (``features.3.weight``) get one panel with
every tensor in model order. ``GradInitResult.plot``, ``MetaInitResult.plot`` and
``LSUVResult.plot`` call it; :func:`layer_means` is the per-layer summary the TensorBoard
writer logs.

matplotlib is imported only when a plot is drawn (it is an ``examples`` extra, not a core
dependency).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?|block)\.(\d+)\.")
_PARTS = ("encoder", "decoder", "model")
_NORM = re.compile(r"(?:^|[._])(?:\w*norm\w*|ln\w*|bn\w*)\.(?:weight|bias)$", re.IGNORECASE)


def tensor_position(name: str) -> tuple[str, int | None, str]:
    """``(part, layer, kind)`` of a parameter name: ``part`` is ``"encoder"``, ``"decoder"`` or
    ``"model"``; ``layer`` the index of the stacked block (``None`` outside the blocks); ``kind``
    the name inside the block (``self_attn.v_proj.weight``), or the full name outside.

    >>> tensor_position("model.decoder.layers.3.encoder_attn.v_proj.weight")
    ('decoder', 3, 'encoder_attn.v_proj.weight')
    >>> tensor_position("model.shared.weight")
    ('model', None, 'model.shared.weight')
    """
    match = _LAYER.search(name)
    prefix = name[: match.start()] if match else name.split(".layers.")[0]
    part = "encoder" if "encoder" in prefix else "decoder" if "decoder" in prefix else "model"
    if match is None:
        return part, None, name
    return part, int(match.group(1)), name[match.end() :]


def layer_means(values: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``{"<part>/<kind>": {layer: value}}`` for the tensors in stacked blocks, and the
    geometric mean over all kinds of a block as ``"<part>/all"`` (scales multiply).

    >>> layer_means({"enc.layers.0.fc1.weight": 0.5, "enc.layers.0.fc2.weight": 2.0})["model/all"]
    {0: 1.0}
    """
    out: dict[str, dict[int, float]] = defaultdict(dict)
    logs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, value in values.items():
        part, layer, kind = tensor_position(name)
        if layer is None:
            continue
        out[f"{part}/{kind}"][layer] = float(value)
        if value > 0:
            logs[part][layer].append(math.log(value))
    for part, by_layer in logs.items():
        out[f"{part}/all"] = {layer: math.exp(statistics.fmean(v)) for layer, v in sorted(by_layer.items())}
    return dict(out)


def tensor_kind(name: str, kinds: Mapping[str, str] | None = None) -> str:
    """``"weight"``, ``"norm"`` (a normalisation layer's weight) or ``"bias"``: ``kinds[name]``
    where given (a GradInit or MetaInit result's ``kinds``, read off the module types), otherwise guessed from the
    name, which cannot tell a BatchNorm in a ``Sequential`` from a convolution.

    >>> tensor_kind("model.encoder.layers.0.self_attn_layer_norm.weight")
    'norm'
    >>> tensor_kind("features.1.weight"), tensor_kind("features.1.weight", {"features.1.weight": "norm"})
    ('weight', 'norm')
    """
    if kinds is not None and name in kinds:
        return kinds[name]
    if name.endswith("bias"):
        return "bias"
    return "norm" if _NORM.search(name) else "weight"


_KIND_STYLE = {"weight": ("tab:blue", "weights"), "norm": ("tab:green", "normalisation weights"),
               "bias": ("tab:orange", "biases")}  # fmt: skip


def plot_scales(
    values: Mapping[str, float],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "scale",
    reference: float | None = 1.0,
    kinds: Mapping[str, str] | None = None,
) -> Path:
    """Save a PNG of ``values`` (one number per parameter name) by layer; returns the path.

    Args:
        values: By parameter name, e.g. ``GradInitResult.scales``.
        path: Where the PNG goes (folders are created).
        title: Figure title.
        ylabel: What the numbers are.
        reference: A value drawn as a grey line (1.0: "unchanged"); ``None`` for none.
        kinds: ``"weight"``, ``"norm"`` or ``"bias"`` by parameter name (see
            :func:`tensor_kind`), for the colours and panels; names not in it are guessed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not values:
        raise ValueError("plot_scales needs at least one tensor's value (the result holds none).")
    layered: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    group_of: dict[str, str] = {}  # a block's tensor name -> its panel row
    outside: list[tuple[str, float]] = []
    for name, value in values.items():
        part, layer, kind = tensor_position(name)
        if layer is None:
            outside.append((name, float(value)))
        else:
            layered[part][kind].append((layer, float(value)))
            # LayerNorm gains are not matrices: they are drawn with the biases.
            group_of[kind] = "weights" if tensor_kind(name, kinds) == "weight" else "norms and biases"
    positive = [v for v in values.values() if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 10

    parts = [p for p in _PARTS if p in layered]
    if not parts:
        fig, ax = plt.subplots(figsize=(max(8.0, 0.08 * len(values)), 4.5))
        names = list(values)
        for kind, (color, label) in _KIND_STYLE.items():
            xs = [i for i, n in enumerate(names) if tensor_kind(n, kinds) == kind]
            if xs:
                ax.scatter(xs, [values[names[i]] for i in xs], color=color, s=12, label=label)
        ax.set_xlabel("tensor, in model order")
        ax.legend(fontsize=7, loc="best")
        _finish(ax, ylabel, log, reference)
        if len(names) <= 40:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    else:
        groups = [g for g in ("weights", "norms and biases") if g in group_of.values()]
        rows = len(groups) + bool(outside)
        fig, axes = plt.subplots(rows, len(parts), figsize=(6.5 * len(parts), 3.6 * rows), squeeze=False)
        cmap = plt.get_cmap("tab20")
        block_kinds = sorted({k for p in parts for k in layered[p]})
        colors = {k: cmap(i % 20) for i, k in enumerate(block_kinds)}
        for col, part in enumerate(parts):
            for row, group in enumerate(groups):
                ax = axes[row][col]
                for kind in (k for k in block_kinds if group_of[k] == group and k in layered[part]):
                    layers, ys = zip(*sorted(layered[part][kind]), strict=True)
                    ax.plot(layers, ys, marker="o", ms=3, color=colors[kind], label=kind)
                ax.set_title(f"{part}: {group}", fontsize=9)
                ax.set_xlabel("layer")
                ax.xaxis.get_major_locator().set_params(integer=True)
                _finish(ax, ylabel, log, reference)
                if ax.lines:
                    ax.legend(fontsize=6, ncol=2, loc="best")
        if outside:
            gs = axes[-1][0].get_gridspec()
            for ax in axes[-1]:
                ax.remove()
            ax = fig.add_subplot(gs[-1, :])
            ax.bar(range(len(outside)), [v for _, v in outside], color="tab:gray")
            ax.set_xticks(range(len(outside)), [n for n, _ in outside], rotation=30, ha="right", fontsize=6)
            ax.set_title("outside the blocks", fontsize=9)
            _finish(ax, ylabel, log, reference)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(ax, ylabel: str, log: bool, reference: float | None) -> None:
    if log:
        ax.set_yscale("log")
    if reference is not None:
        ax.axhline(reference, color="0.6", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
