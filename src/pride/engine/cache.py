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
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class SlabLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values sit at the front of a buffer with room to grow: a
    decode step writes its token in place, where `DynamicLayer` concatenates the whole cache
    again (a copy of everything cached, every token: measured as the largest cost after the
    matmuls). `KV.rebuild` lays out a new buffer when rows leave or join."""

    slab: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[-2] if self.keys.numel() else 0
        new = old + key_states.shape[-2]
        slab = self.slab
        if (slab is None or slab[0].shape[-2] < new or slab[0].shape[0] != key_states.shape[0]
                or (old and self.keys.data_ptr() != slab[0].data_ptr())):
            b, h, _, d = key_states.shape
            room = max(2 * new, 64)
            slab = (key_states.new_empty(b, h, room, d), value_states.new_empty(b, h, room, value_states.shape[-1]))
            if old:
                slab[0][:, :, :old], slab[1][:, :, :old] = self.keys, self.values
            self.slab = slab
        slab[0][:, :, old:new], slab[1][:, :, old:new] = key_states, value_states
        self.keys, self.values = slab[0][:, :, :new], slab[1][:, :, :new]
        return self.keys, self.values


class KV:
    """A batch's cache and its padding mask (columns: the cached tokens, then those being fed)."""

    def __init__(self, mask: torch.Tensor, cache: DynamicCache | None = None):
        self.mask = mask
        if cache is None:
            cache = DynamicCache()
            cache.layer_class_to_replicate = SlabLayer  # every layer full (see above), growing in place
        self.cache = cache

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def select(self, keep: list[int]) -> None:
        """Only these rows go on; columns left empty by every remaining row are dropped."""
        if len(keep) < self.rows:
            self.rebuild(keep)

    def rebuild(self, keep: list[int], other: KV | None = None) -> None:
        """Rows `keep` of ours, then every row of `other`, right-aligned in one new buffer per
        layer with room to grow: one copy of what stays, whatever leaves or joins; the columns
        no remaining row uses are dropped. Padding is zeros (masked, but never garbage: a
        masked score still multiplies its value)."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask[idx]
        used = mask.any(0).nonzero()
        first = int(used[0]) if len(used) else mask.shape[1]
        mask = mask[:, first:]
        ours_w, theirs_w = mask.shape[1], other.mask.shape[1] if other is not None else 0
        width, n = max(ours_w, theirs_w), len(keep) + (other.rows if other is not None else 0)
        self.mask = mask.new_zeros(n, width)
        self.mask[:len(keep), width - ours_w:] = mask
        if other is not None:
            self.mask[len(keep):, width - theirs_w:] = other.mask
        theirs = other.cache.layers if other is not None else [None] * len(self.cache.layers)
        if other is not None and len(theirs) != len(self.cache.layers):
            raise RuntimeError("pride's engine: KV caches of different layouts cannot be merged")
        for a, b in zip(self.cache.layers, theirs):
            if not a.is_initialized:
                continue
            slab = []
            for ours_t, their_t in ((a.keys, b.keys if b else None), (a.values, b.values if b else None)):
                t = ours_t.new_zeros(n, ours_t.shape[1], max(2 * width, 64), ours_t.shape[3])
                t[:len(keep), :, width - ours_w:width] = ours_t[idx][:, :, first:]
                if their_t is not None:
                    t[len(keep):, :, width - theirs_w:width] = their_t
                slab.append(t)
            a.slab = (slab[0], slab[1])
            a.keys, a.values = slab[0][:, :, :width], slab[1][:, :, :width]

    def place(self, slots: list[int], other: KV) -> bool:
        """Every row of `other` written into rows `slots` of ours (rows that finished), in place:
        a copy of the joining rows alone, where `rebuild` copies the whole batch. Only when
        they fit our columns (right-aligned, left-padded with zeros); False, untouched, if not."""
        width, theirs_w = self.mask.shape[1], other.mask.shape[1]
        if theirs_w > width or len(slots) != other.rows or len(other.cache.layers) != len(self.cache.layers):
            return False
        idx = torch.tensor(slots, dtype=torch.long, device=self.mask.device)
        self.mask[idx] = 0
        self.mask[idx, width - theirs_w:] = other.mask
        for a, b in zip(self.cache.layers, other.cache.layers):
            if not a.is_initialized:
                continue
            for ours_t, their_t in ((a.keys, b.keys), (a.values, b.values)):
                ours_t[idx] = 0
                ours_t[idx, :, width - theirs_w:] = their_t
        return True

    def unused_columns(self, rows: list[int]) -> int:
        """Leading columns none of `rows` uses (those `rebuild(rows)` drops)."""
        used = self.mask[rows].any(0).nonzero()
        return int(used[0]) if len(used) else self.mask.shape[1]

    def extend(self, columns: int) -> None:
        """Room in the mask for `columns` tokens about to be fed to every row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, columns)], dim=1)
