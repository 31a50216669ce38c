"""The KV cache of a batch whose rows come and go.

transformers' `DynamicCache` holds, per layer, keys and values [rows, heads, columns, dim].
The rows are left-padded, so every row's newest token sits in the last column, and `mask`
[rows, columns] says which columns hold a real token. That layout lets a batch take in rows
prefilled elsewhere (pad the shorter side on the left, concatenate) and let rows go (index
them out, then drop the columns no remaining row uses). Because each row's tokens stay
contiguous, a column distance is a token distance, and sliding windows keep their meaning:
the cache is built without the model's config, so every layer keeps every column and the
window lives in the attention mask alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class KV:
    """A batch's cache and its padding mask (columns: the cached tokens, then those being fed)."""

    def __init__(self, mask: torch.Tensor, cache: DynamicCache | None = None):
        self.mask = mask
        self.cache = DynamicCache() if cache is None else cache

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def _layers(self):
        return [layer for layer in self.cache.layers if layer.is_initialized and layer.keys.numel()]

    def select(self, keep: list[int]) -> None:
        """Only these rows go on; columns left empty by every remaining row are dropped."""
        if len(keep) == self.rows:
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[idx]
        for layer in self._layers():
            layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        used = self.mask.any(0).nonzero()
        self._drop_columns(int(used[0]) if len(used) else self.mask.shape[1])

    def _drop_columns(self, first: int) -> None:
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self._layers():
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def merge(self, other: KV) -> None:
        """Take in the rows of `other` (after ours), both left-padded to the longer one."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        pad = lambda t, dim_from_end: F.pad(t, (0, 0) * (dim_from_end - 1) + (width - t.shape[-dim_from_end], 0))  # noqa: E731
        ours, theirs = self.cache.layers, other.cache.layers
        if len(ours) != len(theirs) or not all(a.is_initialized and b.is_initialized for a, b in zip(ours, theirs)):
            raise RuntimeError("pride's engine: KV caches of different layouts cannot be merged")
        for a, b in zip(ours, theirs):
            a.keys = torch.cat([pad(a.keys, 2), pad(b.keys, 2)])
            a.values = torch.cat([pad(a.values, 2), pad(b.values, 2)])
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])

    def extend(self, columns: int) -> None:
        """Room in the mask for `columns` tokens about to be fed to every row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, columns)], dim=1)
