"""Spikes saved for the backward pass as bits: eight 0/1 values a byte, restored exactly.

A layer that reads spikes (a convolution, a pooling, a linear layer) saves its input for its own
backward pass (the weight gradient of a convolution is its input times the output gradient). In
the compute dtype that is 32 (fp32) or 16 (bf16) bits for a value that is 0 or 1. Inside
:func:`spikes_saved_as_bits`, a saved tensor that is a LIF's spike output, or a view of one, is kept
as bits instead and unpacked, with its shape, strides and dtype, when the backward pass reads it
(each spike tensor packed once, whichever layers save it).

Which tensors are spikes is said explicitly, never guessed from their values: the layer that makes
them calls :func:`mark_spikes`, which notes on the tensor (on the base of a view) the version it had
then; a tensor changed in place afterwards is no longer taken for spikes. Everything else is saved
as autograd would save it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_MARK = "_imloss_spikes_at_version"  # attribute on a spike tensor's base: its version when marked


def _base(t: Tensor) -> Tensor:
    """The tensor that owns ``t``'s memory (``t`` itself unless it is a view)."""
    return t._base if t._base is not None else t


def mark_spikes(spike_seq: Tensor) -> Tensor:
    """Say that ``spike_seq`` holds only 0 and 1 (a LIF's output); returns it."""
    base = _base(spike_seq)
    setattr(base, _MARK, base._version)
    return spike_seq


def is_marked_spikes(t: Tensor) -> bool:
    """Whether ``t`` is (a view of) a tensor marked as spikes and not changed in place since."""
    base = _base(t)
    return t.is_floating_point() and getattr(base, _MARK, None) == base._version and _dense(base)


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory with no gaps or overlaps (in any dim order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def pack_bits(flat: Tensor) -> Tensor:
    """uint8 [ceil(n / 8)]: value i of the 0/1 tensor ``flat`` [n] in bit i % 8 of byte i // 8.

    Eight bytes of 0/1 are one int64 word w with value i at bit 8i (bytes in memory order, as the
    int64 view reads them on this machine; :func:`unpack_bits` reads them back the same way). Three
    shift-ors gather them into the lowest byte: w | w >> 7 puts value i + 1 beside value i (bits
    0-1 of each byte), | >> 14 four values (bits 0-3), | >> 28 all eight (bits 0-7 of byte 0).
    """
    b = flat.to(torch.bool).view(torch.uint8)
    if b.numel() % 8:
        b = F.pad(b, (0, 8 - b.numel() % 8))
    w = b.view(torch.int64)
    w = w | (w >> 7)
    w |= w >> 14
    w |= w >> 28
    return (w & 0xFF).to(torch.uint8)


def unpack_bits(bits: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """The first ``n`` values packed by :func:`pack_bits`, as a [n] tensor of ``dtype``: the shift-ors
    in reverse (bits 4-7 to byte 4, then 2-3 of bytes 0 and 4 to bytes 2 and 6, then each odd bit
    to the next byte), each byte's lowest bit kept."""
    w = bits.to(torch.int64)
    w |= w << 28
    w |= w << 14
    w |= w << 7
    w &= 0x0101010101010101
    return w.view(torch.uint8)[:n].view(torch.bool).to(dtype)


@dataclass(frozen=True)
class SpikeBits:
    """The values of a dense spike tensor in memory order, as bits (one copy for all its saved views)."""

    bits: Tensor  # uint8, 8 spikes a byte
    numel: int
    dtype: torch.dtype

    @classmethod
    def of(cls, base: Tensor) -> SpikeBits:
        # The base is dense: its elements in memory order are one flat run from its first element.
        flat = base.as_strided((base.numel(),), (1,), base.storage_offset())
        return cls(pack_bits(flat), base.numel(), base.dtype)


@dataclass(frozen=True)
class PackedSpikes:
    """A saved spike tensor: the bits of its base, and where the saved view lies in them."""

    values: SpikeBits
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # storage offset of the view from the base's first element

    def unpack(self) -> Tensor:
        """The saved tensor: same values, shape, strides and dtype (its own memory)."""
        v = self.values
        return unpack_bits(v.bits, v.numel, v.dtype).as_strided(self.shape, self.stride, self.offset)


class _SpikePacker:
    """The saved-tensor hooks of one forward pass. A spike tensor saved by several layers (a block's
    input feeds its first convolution and its shortcut) is packed once: the bits are cached by
    base, with a weak reference that tells a live base from a new tensor at a freed one's address."""

    def __init__(self) -> None:
        self.cache: dict[int, tuple[weakref.ref[Tensor], int, SpikeBits]] = {}

    def pack(self, t: Tensor) -> Tensor | PackedSpikes:
        if not is_marked_spikes(t):
            return t
        base = _base(t)
        hit = self.cache.get(id(base))
        if hit is None or hit[0]() is not base or hit[1] != base._version:
            hit = (weakref.ref(base), base._version, SpikeBits.of(base))
            self.cache[id(base)] = hit
        return PackedSpikes(hit[2], tuple(t.shape), tuple(t.stride()), t.storage_offset() - base.storage_offset())

    @staticmethod
    def unpack(saved: Tensor | PackedSpikes) -> Tensor:
        return saved.unpack() if isinstance(saved, PackedSpikes) else saved


@contextlib.contextmanager
def spikes_saved_as_bits() -> Iterator[None]:
    """Within: every tensor autograd saves that is marked spikes (:func:`mark_spikes`) is kept as bits."""
    packer = _SpikePacker()
    try:
        with torch.autograd.graph.saved_tensors_hooks(packer.pack, packer.unpack):
            yield
    finally:  # the saved tensors hold their bits; the cache would hold them to the end of the backward pass
        packer.cache.clear()
