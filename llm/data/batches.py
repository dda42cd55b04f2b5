"""Batches of encoded task rows and preference pairs for the trainer (a BatchSource, as
llm.data.corpus.WindowBatches is for pretraining's token windows).

Training walks the rows epoch by epoch, each epoch in its own permutation seeded by (seed, epoch). The i-th
sequence of micro-batch `micro` at step `step` is row number (step * grad_accum + micro) * batch_size + i of
that endless walk, so a batch depends only on (seed, step, micro): a resumed run and a data-parallel run see
exactly the batches of one uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import torch

from llm.data.preferences import EncodedPairs
from llm.data.tasks import EncodedExamples

EVAL_SAMPLE_STREAM = 10**9  # seeds the fixed train sample scored at evaluations, apart from the epochs' seeds


class TaskBatches:
    """Batches of encoded rows, padded to the longest in the batch (targets -1), in the seeded walk above."""

    def __init__(
        self,
        train: EncodedExamples | EncodedPairs,
        val: EncodedExamples | EncodedPairs,
        batch_size: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        eval_rows: int = 0,
    ):
        assert train.items, "no training examples"
        self.train = train.items
        self.val = val.items[:eval_rows] if eval_rows else val.items  # what each evaluation scores
        self.batch_size, self.grad_accum, self.seed, self.pad_id = batch_size, grad_accum, seed, pad_id
        self.orders: dict[int, np.ndarray] = {}  # the current epoch's permutation

    def collate(self, items: list[tuple[list[int], list[bool]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) pairs -> x (B, T) inputs and y (B, T) next-token targets, -1 where there is no loss."""
        width = max(len(ids) for ids, _ in items) - 1
        x = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(items), width), -1, dtype=torch.long)
        for row, (ids, mask) in enumerate(items):
            n = len(ids) - 1
            tokens = torch.tensor(ids, dtype=torch.long)
            x[row, :n] = tokens[:-1]
            # Position i predicts ids[i+1]: it has a loss only where ids[i+1] is assistant text or its <|end|>.
            y[row, :n] = torch.where(torch.tensor(mask[1:]), tokens[1:], -1)
        return x, y

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self.orders:
            self.orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.train))}
        return self.orders[epoch]

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * self.grad_accum + micro) * self.batch_size
        picks = []
        for k in range(first, first + self.batch_size):
            epoch, position = divmod(k, len(self.train))
            picks.append(self.train[self.epoch_order(epoch)[position]])
        return self.collate(picks)

    def eval_batches(self, split: str, count: int):
        """ "val": the whole validation set in fixed batches. "train": a fixed sample of the training examples
        as large as the validation set (count batches when there is none), to compare the two losses."""
        if split == "val":
            items = self.val
        else:
            size = len(self.val) or count * self.batch_size
            order = np.random.default_rng([self.seed, EVAL_SAMPLE_STREAM]).permutation(len(self.train))[:size]
            items = [self.train[i] for i in np.sort(order)]
        for start in range(0, len(items), self.batch_size):
            yield self.collate(items[start : start + self.batch_size])


class PairBatches(TaskBatches):
    """TaskBatches over pairs: the same seeded walk through the training pairs (a batch depends only on
    seed, step and micro), each batch collated as its chosen sequences then its rejected ones."""

    def collate(self, pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
        return super().collate([chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs])
