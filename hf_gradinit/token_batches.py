"""Token-bounded batches, as fairseq's ``--max-tokens``: sentences grouped by length, each
batch at most ``max_tokens`` tokens counting padding.

The GradInit paper trains its Transformer on batches of up to 4,096 tokens and runs GradInit
on batches of up to 6,000, not on a fixed number of sentences; with sentences of very
different lengths the two differ a lot in how many tokens (and so how much gradient signal)
a step sees.

>>> sampler = TokenBatchSampler([3, 9, 4, 8, 2, 10], max_tokens=20, seed=0)
>>> batches = list(sampler)
>>> sorted(i for b in batches for i in b)
[0, 1, 2, 3, 4, 5]
>>> all(len(b) * max([3, 9, 4, 8, 2, 10][i] for i in b) <= 20 for b in batches)
True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch


def sample_length(sample: Any) -> int:
    """Tokens one sample takes in a batch: the longest of its sequence fields (for seq2seq,
    ``max(len(source), len(target))``, fairseq's ``num_tokens``)."""
    if isinstance(sample, Mapping):
        values = list(sample.values())
    elif isinstance(sample, (list, tuple)):
        values = list(sample)
    else:
        values = [sample]
    lengths = [len(v) for v in values if isinstance(v, (list, tuple)) or (torch.is_tensor(v) and v.dim() > 0)]
    if not lengths:
        raise ValueError(
            f"Cannot count the tokens of a sample of type {type(sample).__name__}: it has no sequence field."
            " Token-bounded batches need samples with token lists (input_ids, labels, ...)."
        )
    return max(lengths)


def dataset_lengths(dataset: Any) -> list[int]:
    """:func:`sample_length` of every sample; column-wise for a 🤗 ``datasets.Dataset``."""
    columns = getattr(dataset, "column_names", None)
    if columns:
        seq_columns = [c for c in ("input_ids", "labels", "decoder_input_ids") if c in columns]
        if seq_columns:
            per_column = [[len(x) for x in dataset[c]] for c in seq_columns]
            return [max(row) for row in zip(*per_column, strict=True)]
    return [sample_length(dataset[i]) for i in range(len(dataset))]


def token_batches(lengths: Sequence[int], max_tokens: int, seed: int | None = 0) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_tokens`` tokens (``len(batch) *
    longest``), fairseq's way: a random order (``seed``; ``None`` keeps the given order) made
    stable-sorted by length, cut greedily, and the batches themselves shuffled. A sample longer
    than ``max_tokens`` is an error (fairseq drops or refuses it; silently truncating a batch
    to one over-long sample would break the bound)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}.")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(
            f"{len(too_long)} samples are longer than max_tokens={max_tokens} (the longest has"
            f" {max(lengths[i] for i in too_long)} tokens): raise max_tokens or truncate the data."
        )
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    order = torch.randperm(len(lengths), generator=g).tolist() if g is not None else list(range(len(lengths)))
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        if current and (len(current) + 1) * max(longest, n) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    if g is not None:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
    return batches


class TokenBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A ``batch_sampler`` for ``DataLoader`` yielding :func:`token_batches`, reshuffled each
    epoch (``set_epoch``, which the Trainer and accelerate call) from ``seed + epoch``.

    Args:
        lengths: Tokens of each sample (:func:`dataset_lengths`).
        max_tokens: Bound on ``len(batch) * longest sample`` in every batch.
        seed: Seed of the order; ``None`` keeps the data's order (no shuffle).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int | None = 0):
        self.lengths = [int(n) for n in lengths]
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.epoch = 0
        self._batches = token_batches(self.lengths, self.max_tokens, self._epoch_seed())

    def _epoch_seed(self) -> int | None:
        return None if self.seed is None else self.seed + self.epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches = token_batches(self.lengths, self.max_tokens, self._epoch_seed())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches

    def __len__(self) -> int:
        return len(self._batches)
