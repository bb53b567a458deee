"""Token-bounded batches (fairseq's --max-tokens), for training and for GradInit."""

from __future__ import annotations

import pytest
import torch

from hf_gradinit.token_batches import TokenBatchSampler, dataset_lengths, sample_length, token_batches


def lengths(n: int = 500, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 60, (n,), generator=g).tolist()


def test_every_sample_once_and_every_batch_within_the_bound():
    ls = lengths()
    batches = token_batches(ls, max_tokens=256, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(ls)))
    assert all(len(b) * max(ls[i] for i in b) <= 256 for b in batches)
    # Grouped by length: batches are nearly as full as the bound allows (little padding).
    fill = sum(sum(ls[i] for i in b) for b in batches) / sum(len(b) * max(ls[i] for i in b) for b in batches)
    assert fill > 0.9
    # Shuffled: the batch order is not the sorted order.
    firsts = [max(ls[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)


def test_seeded_and_reshuffled_per_epoch():
    ls = lengths()
    assert token_batches(ls, 256, seed=3) == token_batches(ls, 256, seed=3)
    sampler = TokenBatchSampler(ls, 256, seed=3)
    first = list(sampler)
    assert len(sampler) == len(first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_a_sample_longer_than_the_bound_is_refused_with_what_to_change():
    with pytest.raises(ValueError, match="raise max_tokens or truncate"):
        token_batches([5, 300, 7], max_tokens=100)
    with pytest.raises(ValueError, match="positive"):
        token_batches([5], max_tokens=0)


def test_lengths_of_seq2seq_samples_are_the_longer_side():
    assert sample_length({"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [4, 5, 6, 7, 8]}) == 5
    assert dataset_lengths([{"input_ids": torch.ones(4), "labels": torch.ones(2)}]) == [4]
    with pytest.raises(ValueError, match="no sequence field"):
        sample_length({"x": 3})


def test_datasets_columns_are_read_in_bulk():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [1, 2, 3, 4]], "labels": [[1, 2, 3], [1]]})
    assert dataset_lengths(ds) == [3, 4]


def test_gradinit_batches_from_the_trainers_data_are_token_bounded():
    """What the callback and model_init routes iterate when --gradinit_max_tokens is given."""
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    from hf_gradinit.trainer.callback import _ShardedBatches

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "a": 1}, "a")),
                                  pad_token="<pad>")  # fmt: skip
    ls = lengths(200)
    rows = [{"input_ids": [1] * n, "attention_mask": [1] * n} for n in ls]
    batches = _ShardedBatches(rows, DataCollatorWithPadding(tok), batch_size=8, seed=0, max_tokens=300)
    first, second = list(batches), list(batches)
    assert sum(b["input_ids"].shape[0] for b in first) == len(rows)
    assert all(b["input_ids"].numel() <= 300 for b in first + second)
    assert [b["input_ids"].shape for b in first] != [b["input_ids"].shape for b in second]  # a new order each pass
