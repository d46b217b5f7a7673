"""Block masks: any attention pattern, seen at the granularity of FlashAttention's tiles.

Chapter: "One FlashAttention kernel for every sparse pattern" (chapters/*/14_block_sparse_flash.ipynb).
The kernels that read a :class:`BlockMask` are :mod:`attnlib.optim.block_sparse` (PyTorch tiles)
and the block-sparse kernels of :mod:`attnlib.optim.block_sparse_triton` (Triton).

The idea (PyTorch's FlexAttention, Dong et al., "Flex Attention: A Programming Model for
Generating Optimized Attention Kernels", arXiv:2412.05496, Sec. 3.2 "BlockMask")
------------------------------------------------------------------------------------------
Cut the boolean ``(N_q, N_k)`` pattern into ``block_q x block_k`` tiles (the tiles of
FlashAttention, FA-2 Alg. 1). Each tile is one of three kinds:

* **empty**: no query of the tile may see any key of it. The kernel never loads it;
* **full**: every query sees every key. The kernel runs the tile with no mask work at all;
* **partial**: some pairs are allowed. The kernel applies the element mask of this tile.

Per query tile the block mask lists its partial key tiles (``kv_num_blocks``, ``kv_indices``)
and its full ones (``full_kv_num_blocks``, ``full_kv_indices``), the names FlexAttention uses.
The backward's dK/dV loop runs over key tiles, so the same lists are also stored transposed
(``q_num_blocks``, ``q_indices``, ``full_q_num_blocks``, ``full_q_indices``). The element masks
of the partial tiles are kept tile by tile (``partial_tiles``, one ``(block_q, block_k)`` bool
tile each, found through ``partial_slot``): FlexAttention instead calls the ``mask_mod`` inside
the kernel, which needs a compiler that can inline Python; a stored tile works with any pattern.

Conventions
-----------
* The pattern is True where the query may attend to the key (:mod:`attnlib.reference`'s convention).
* Leading dimensions ``(B_m, H_m)``: 1 (one pattern for every batch element / head) or the
  batch size / number of query heads (BigBird's random blocks differ per head, document masks
  per batch element).
* A ragged last tile (``N % block != 0``) is never *full*: its out-of-range rows and columns
  count as masked, so it is partial (the kernels need bounds checks there anyway).
* Building from a ``mask_mod`` evaluates one row of tiles at a time (``block_q x N_k``
  elements): no ``N_q x N_k`` tensor exists. Building from a dense mask reads the mask you give.

Shape legend
------------
    B_m, H_m   batch and head dims of the pattern (1 or B, 1 or H)
    T_q, T_k   query tiles ceil(N_q / block_q), key tiles ceil(N_k / block_k)
    b_q, b_k   block_q, block_k: queries and keys per tile
    P          partial tiles in all
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import check_flag, check_positive_int
from ..sparse.swin import swin_window_and_shift

__all__ = [
    "EMPTY",
    "PARTIAL",
    "FULL",
    "BlockMask",
    "block_mask_from_dense",
    "block_mask_from_mask_mod",
    "causal_mask_mod",
    "sliding_window_mask_mod",
    "document_mask_mod",
    "swin_window_mask_mod",
    "bigbird_mask_mod",
    "bigbird_block_mask",
]

EMPTY, PARTIAL, FULL = 0, 1, 2  # the three tile kinds, as stored in BlockMask.kinds

DEFAULT_BLOCK = 64  # BigBird's block size: its pattern fits these tiles exactly


@dataclass(frozen=True)
class BlockMask:
    """A pattern at tile granularity: per query tile, its partial and full key tiles, and the transpose.

    Build one with :func:`block_mask_from_dense` or :func:`block_mask_from_mask_mod` (or a
    method's helper such as :func:`bigbird_block_mask`). Every index tensor is int32 and contiguous.
    Lists are padded with 0 past their count; entries are in increasing tile order.
    """

    N_q: int
    N_k: int
    block_q: int
    block_k: int
    kinds: torch.Tensor  # (B_m, H_m, T_q, T_k) int8: EMPTY, PARTIAL or FULL
    kv_num_blocks: torch.Tensor  # (B_m, H_m, T_q) partial key tiles of each query tile
    kv_indices: torch.Tensor  # (B_m, H_m, T_q, T_k) their indices
    full_kv_num_blocks: torch.Tensor  # (B_m, H_m, T_q) full key tiles of each query tile
    full_kv_indices: torch.Tensor  # (B_m, H_m, T_q, T_k)
    q_num_blocks: torch.Tensor  # (B_m, H_m, T_k) partial query tiles of each key tile (backward)
    q_indices: torch.Tensor  # (B_m, H_m, T_k, T_q)
    full_q_num_blocks: torch.Tensor  # (B_m, H_m, T_k)
    full_q_indices: torch.Tensor  # (B_m, H_m, T_k, T_q)
    partial_slot: torch.Tensor  # (B_m, H_m, T_q, T_k) int32: row of partial_tiles, -1 if not partial
    partial_slot_t: torch.Tensor  # (B_m, H_m, T_k, T_q) the same, transposed (for the dK/dV loop)
    partial_tiles: torch.Tensor  # (P, b_q, b_k) bool: the element mask of each partial tile

    def __post_init__(self) -> None:
        """Shapes, dtypes and devices of every field (the kernels index these tensors without bounds checks).

        The contents are trusted: the builders of this module make them consistent.
        """
        for name in ("N_q", "N_k", "block_q", "block_k"):
            check_positive_int(name, getattr(self, name))
        kinds = self.kinds
        if not isinstance(kinds, torch.Tensor) or kinds.dtype != torch.int8 or kinds.ndim != 4:
            got = f"{kinds.dtype} of shape {tuple(kinds.shape)}" if isinstance(kinds, torch.Tensor) else type(kinds)
            raise ValueError(f"kinds must have shape (B_m, H_m, T_q, T_k) and dtype torch.int8, got {got}")
        B_m, H_m, T_q, T_k = kinds.shape
        for N, block, tiles, axis in ((self.N_q, self.block_q, T_q, "query"), (self.N_k, self.block_k, T_k, "key")):
            if tiles != math.ceil(N / block):
                n, b, t = ("N_q", "block_q", "T_q") if axis == "query" else ("N_k", "block_k", "T_k")
                raise ValueError(
                    f"{n}={N} needs {t}={math.ceil(N / block)} {axis} tiles of {b}={block}, but kinds has {tiles} "
                    f"(kinds must have shape (B_m, H_m, T_q, T_k), got {tuple(kinds.shape)})"
                )
        if B_m == 0 or H_m == 0:
            raise ValueError(f"kinds must have batch and head dims of at least 1, got shape {tuple(kinds.shape)}")
        shapes = {
            "kv_num_blocks": (B_m, H_m, T_q), "kv_indices": (B_m, H_m, T_q, T_k),
            "full_kv_num_blocks": (B_m, H_m, T_q), "full_kv_indices": (B_m, H_m, T_q, T_k),
            "q_num_blocks": (B_m, H_m, T_k), "q_indices": (B_m, H_m, T_k, T_q),
            "full_q_num_blocks": (B_m, H_m, T_k), "full_q_indices": (B_m, H_m, T_k, T_q),
            "partial_slot": (B_m, H_m, T_q, T_k), "partial_slot_t": (B_m, H_m, T_k, T_q),
        }  # fmt: skip
        for name, shape in shapes.items():
            x = getattr(self, name)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.int32:
                got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
                raise TypeError(f"{name} must be an int32 tensor, got {got}")
            if tuple(x.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} (from kinds), got {tuple(x.shape)}")
        tiles = self.partial_tiles
        if not isinstance(tiles, torch.Tensor) or tiles.dtype != torch.bool:
            got = tiles.dtype if isinstance(tiles, torch.Tensor) else type(tiles).__name__
            raise TypeError(f"partial_tiles must be a bool tensor, got {got}")
        if tiles.ndim != 3 or tiles.shape[0] == 0 or tuple(tiles.shape[1:]) != (self.block_q, self.block_k):
            raise ValueError(
                f"partial_tiles must have shape (P, block_q, block_k) = (P, {self.block_q}, {self.block_k}) "
                f"with P >= 1, got {tuple(tiles.shape)}"
            )
        devices = {getattr(self, name).device for name in ("kinds", "partial_tiles", *shapes)}
        if len(devices) > 1:
            raise ValueError(f"the tensors of a BlockMask must be on one device, got {sorted(map(str, devices))}")

    @property
    def num_tiles(self) -> tuple[int, int]:
        """``(T_q, T_k)``, the tile grid."""
        return self.kinds.shape[-2], self.kinds.shape[-1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B_m, H_m, N_q, N_k)``: the shape of the pattern it was built from."""
        return self.kinds.shape[0], self.kinds.shape[1], self.N_q, self.N_k

    def tile_counts(self) -> dict[str, int]:
        """How many tiles of each kind, over every batch element and head of the pattern."""
        return {name: int((self.kinds == kind).sum()) for name, kind in (("empty", EMPTY), ("partial", PARTIAL),
                                                                          ("full", FULL))}  # fmt: skip

    def visited_density(self) -> float:
        """Fraction of tiles the kernel visits (partial + full): its work relative to dense attention."""
        return float((self.kinds != EMPTY).double().mean())

    def to_dense(self) -> torch.Tensor:
        """The ``(B_m, H_m, N_q, N_k)`` boolean pattern back (for tests and small figures only)."""
        B_m, H_m, T_q, T_k = self.kinds.shape
        dense = (self.kinds == FULL)[:, :, :, None, :, None]  # (B_m, H_m, T_q, 1, T_k, 1)
        dense = dense.expand(B_m, H_m, T_q, self.block_q, T_k, self.block_k).clone()  # (.., T_q, b_q, T_k, b_k)
        where = (self.partial_slot >= 0).nonzero(as_tuple=True)
        slots = self.partial_slot[where].long()  # (P,)
        dense[where[0], where[1], where[2], :, where[3], :] = self.partial_tiles[slots]
        dense = dense.reshape(B_m, H_m, T_q * self.block_q, T_k * self.block_k)  # (B_m, H_m, T_q b_q, T_k b_k)
        return dense[:, :, : self.N_q, : self.N_k]  # (B_m, H_m, N_q, N_k)

    def to(self, device) -> BlockMask:
        """The same block mask on ``device`` (its tensors are small: ``O(T_q T_k + P b_q b_k)``)."""
        device = _check_device(device)
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return BlockMask(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})

    @property
    def device(self) -> torch.device:
        return self.kinds.device

    def check_matches(self, B: int, H: int, N_q: int, N_k: int, *, block_q: int | None = None,
                      block_k: int | None = None) -> None:  # fmt: skip
        """ValueError naming ``block_mask`` unless it was built for these sizes (and tiles, if given)."""
        B_m, H_m = self.kinds.shape[:2]
        if (self.N_q, self.N_k) != (N_q, N_k):
            raise ValueError(
                f"block_mask was built for N_q={self.N_q}, N_k={self.N_k}, but q and k have N_q={N_q}, N_k={N_k}"
            )
        if B_m not in (1, B) or H_m not in (1, H):
            raise ValueError(
                f"block_mask has batch and head dims (B_m, H_m) = ({B_m}, {H_m}); expected 1 or B={B}, 1 or H={H}"
            )
        for name, want, got in (("block_q", block_q, self.block_q), ("block_k", block_k, self.block_k)):
            if want is not None and want != got:
                raise ValueError(f"block_mask was built with {name}={got}, but the kernel needs {name}={want}")


# --------------------------------------------------------------------------------------
# From the tile kinds to the lists
# --------------------------------------------------------------------------------------
def _lists(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``selected: (..., T)`` bool -> ``(num: (...), indices: (..., T))`` int32, selected first, in order."""
    T = selected.shape[-1]
    order = torch.arange(T, device=selected.device)  # (T,)
    # sort key: selected tiles first (key < T), in increasing index; the rest after (key >= T)
    key = torch.where(selected, order, order + T)  # (..., T)
    indices = key.argsort(dim=-1, stable=True)  # (..., T)
    num = selected.sum(dim=-1)  # (...)
    padded = torch.where(order < num[..., None], indices, torch.zeros_like(indices))  # (..., T) pad with 0
    return num.to(torch.int32).contiguous(), padded.to(torch.int32).contiguous()


def _from_kinds(N_q: int, N_k: int, block_q: int, block_k: int, kinds: torch.Tensor,
                partial_tiles: torch.Tensor) -> BlockMask:  # fmt: skip
    """Assemble a :class:`BlockMask` from ``kinds: (B_m, H_m, T_q, T_k)`` and the partial tiles, row by row.

    ``partial_tiles: (P, b_q, b_k)`` lists the partial tiles in the order (query tile, b, h, key tile).
    """
    is_partial = kinds == PARTIAL  # (B_m, H_m, T_q, T_k)
    # slots number the partial tiles query-tile row by row: order (T_q, B_m, H_m, T_k)
    by_row = is_partial.permute(2, 0, 1, 3)  # (T_q, B_m, H_m, T_k)
    slot = torch.full(by_row.shape, -1, dtype=torch.int32, device=kinds.device)  # (T_q, B_m, H_m, T_k)
    slot[by_row] = torch.arange(int(is_partial.sum()), dtype=torch.int32, device=kinds.device)
    slot = slot.permute(1, 2, 0, 3).contiguous()  # (B_m, H_m, T_q, T_k)
    kv_num, kv_idx = _lists(is_partial)
    full_kv_num, full_kv_idx = _lists(kinds == FULL)
    q_num, q_idx = _lists(is_partial.transpose(-2, -1))
    full_q_num, full_q_idx = _lists((kinds == FULL).transpose(-2, -1))
    return BlockMask(
        N_q, N_k, block_q, block_k, kinds.contiguous(),
        kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx,
        slot, slot.transpose(-2, -1).contiguous(), partial_tiles.contiguous(),
    )  # fmt: skip


def _check_blocks(block_q, block_k) -> None:
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)


def _check_device(device) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None); ValueError/TypeError naming ``device`` otherwise."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError(f"device must be a torch.device or a device string such as 'cpu', got {type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device must be a torch.device or a device string such as 'cpu' or 'cuda', got {device!r}"
        ) from None


def _classify_row(allowed: torch.Tensor, block_k: int, T_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of tiles. ``allowed: (B_m, H_m, b_q, T_k * b_k)`` bool, out-of-range entries False.

    Returns ``kinds: (B_m, H_m, T_k)`` int8 and ``tiles: (B_m, H_m, T_k, b_q, b_k)`` (the element masks).
    """
    B_m, H_m, b_q, _ = allowed.shape
    by_tile = allowed.view(B_m, H_m, b_q, T_k, block_k)  # (B_m, H_m, b_q, T_k, b_k), a view
    count = by_tile.sum(dim=-1, dtype=torch.int32).sum(dim=2)  # (B_m, H_m, T_k) allowed pairs per tile
    any_, all_ = count > 0, count == b_q * block_k  # (B_m, H_m, T_k)
    tiles = by_tile.permute(0, 1, 3, 2, 4)  # (B_m, H_m, T_k, b_q, b_k), a view
    kinds = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)  # (B_m, H_m, T_k)
    return kinds, tiles


def _assemble(N_q, N_k, block_q, block_k, rows) -> BlockMask:
    """``rows``: an iterable over query tiles of ``allowed: (B_m, H_m, b_q, T_k * b_k)``."""
    T_k = math.ceil(N_k / block_k)
    kinds_rows, partial = [], []
    for allowed in rows:
        kinds, tiles = _classify_row(allowed, block_k, T_k)  # (B_m, H_m, T_k), (B_m, H_m, T_k, b_q, b_k)
        kinds_rows.append(kinds)
        partial.append(tiles[kinds == PARTIAL])  # (p, b_q, b_k): a copy, so the row itself is freed
    kinds = torch.stack(kinds_rows, dim=2)  # (B_m, H_m, T_q, T_k)
    partial_tiles = torch.cat(partial)  # (P, b_q, b_k) in the order (query tile, b, h, key tile)
    if partial_tiles.shape[0] == 0:  # the kernels take a pointer to at least one tile
        partial_tiles = torch.zeros(1, block_q, block_k, dtype=torch.bool, device=kinds.device)
    return _from_kinds(N_q, N_k, block_q, block_k, kinds, partial_tiles)


def block_mask_from_dense(mask: torch.Tensor, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                          N_q: int | None = None, N_k: int | None = None) -> BlockMask:  # fmt: skip
    """A :class:`BlockMask` from a boolean pattern ``(N_q, N_k)``, ``(H, N_q, N_k)`` or ``(B, H, N_q, N_k)``.

    True = the query may attend to the key. ``N_q``, ``N_k``, if given, are checked against the
    mask's last two dims (a mask of the wrong shape is a ValueError naming ``mask``).
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = the query may attend to the key), got {mask.dtype}")
    if mask.ndim not in (2, 3, 4):
        raise ValueError(f"mask must have shape (N_q, N_k), (H, N_q, N_k) or (B, H, N_q, N_k), got {tuple(mask.shape)}")
    if mask.numel() == 0:
        raise ValueError(
            f"mask must have at least one query and one key (and batch and head dims of at least 1), "
            f"got shape {tuple(mask.shape)}"
        )
    for name, value in (("N_q", N_q), ("N_k", N_k)):
        if value is not None:
            check_positive_int(name, value)
    if (N_q is not None and mask.shape[-2] != N_q) or (N_k is not None and mask.shape[-1] != N_k):
        raise ValueError(f"mask must have shape (..., N_q, N_k) = (..., {N_q}, {N_k}), got {tuple(mask.shape)}")
    _check_blocks(block_q, block_k)
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (B_m, H_m, N_q, N_k)
    N_q, N_k = mask.shape[-2:]
    T_q, T_k = math.ceil(N_q / block_q), math.ceil(N_k / block_k)
    padded = torch.nn.functional.pad(mask, (0, T_k * block_k - N_k, 0, T_q * block_q - N_q))  # False outside

    def rows():
        for m in range(T_q):
            yield padded[:, :, m * block_q : (m + 1) * block_q]  # (B_m, H_m, b_q, T_k b_k)

    return _assemble(N_q, N_k, block_q, block_k, rows())


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def block_mask_from_mask_mod(mask_mod: MaskMod, B: int | None, H: int | None, N_q: int, N_k: int, *,
                             block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                             device=None) -> BlockMask:  # fmt: skip
    """A :class:`BlockMask` from ``mask_mod(b, h, q_idx, kv_idx) -> bool``, FlexAttention's signature.

    ``mask_mod`` is called with broadcasting index tensors, one row of tiles at a time:
    ``b: (B_m, 1, 1, 1)``, ``h: (1, H_m, 1, 1)``, ``q_idx: (1, 1, b_q, 1)``, ``kv_idx: (1, 1, 1, T_k b_k)``,
    and must return a boolean tensor that broadcasts to ``(B_m, H_m, b_q, T_k b_k)``. Only
    in-range indices are passed (out-of-range ones are clamped, and masked afterwards), so a
    ``mask_mod`` may index tables of length ``N_q`` / ``N_k``. ``B=None`` or ``H=None``: one
    pattern for every batch element / head (``b`` / ``h`` are then 0), as in FlexAttention.
    No ``N_q x N_k`` tensor is built: the peak is one row of tiles, ``block_q x N_k`` booleans.

    The mask_mods of this module know the sizes they were made for (``mask_mod.check_sizes``):
    a ValueError says so when ``B``, ``H``, ``N_q``, ``N_k`` do not fit them.
    """
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be callable as mask_mod(b, h, q_idx, kv_idx), got {type(mask_mod).__name__}")
    B_m = 1 if B is None else B
    H_m = 1 if H is None else H
    for name, value in (("B", B_m), ("H", H_m), ("N_q", N_q), ("N_k", N_k)):
        check_positive_int(name, value)
    _check_blocks(block_q, block_k)
    device = _check_device(device)
    check_sizes = getattr(mask_mod, "check_sizes", None)
    if check_sizes is not None:
        check_sizes(B, H, N_q, N_k)
    T_q, T_k = math.ceil(N_q / block_q), math.ceil(N_k / block_k)
    b = torch.arange(B_m, device=device).view(B_m, 1, 1, 1)
    h = torch.arange(H_m, device=device).view(1, H_m, 1, 1)
    kv_pos = torch.arange(T_k * block_k, device=device)  # (T_k b_k,)
    kv_idx = kv_pos.clamp(max=N_k - 1).view(1, 1, 1, -1)  # (1, 1, 1, T_k b_k)
    kv_ok = (kv_pos < N_k).view(1, 1, 1, -1)  # (1, 1, 1, T_k b_k)
    row_shape = (B_m, H_m, block_q, T_k * block_k)

    def rows():
        for m in range(T_q):
            q_pos = torch.arange(m * block_q, (m + 1) * block_q, device=device)  # (b_q,)
            q_idx = q_pos.clamp(max=N_q - 1).view(1, 1, -1, 1)  # (1, 1, b_q, 1)
            allowed = mask_mod(b, h, q_idx, kv_idx)
            if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
                got = allowed.dtype if isinstance(allowed, torch.Tensor) else type(allowed).__name__
                raise TypeError(f"mask_mod must return a boolean tensor (True = may attend), got {got}")
            try:
                allowed = allowed.expand(row_shape)  # (B_m, H_m, b_q, T_k b_k)
            except RuntimeError:
                raise ValueError(
                    f"mask_mod must return a tensor broadcastable to (B_m, H_m, block_q, keys) = {row_shape}, "
                    f"got shape {tuple(allowed.shape)}"
                ) from None
            yield allowed & kv_ok & (q_pos < N_q).view(1, 1, -1, 1)  # (B_m, H_m, b_q, T_k b_k)

    return _assemble(N_q, N_k, block_q, block_k, rows())


# --------------------------------------------------------------------------------------
# Patterns as mask_mods (every one evaluated tile by tile)
# --------------------------------------------------------------------------------------
def _with_size_check(mask_mod: MaskMod, check_sizes) -> MaskMod:
    """Attach ``check_sizes(B, H, N_q, N_k)``: :func:`block_mask_from_mask_mod` calls it before evaluating.

    The check lives outside the mask_mod so that the mask_mod stays a pure function of its
    indices (FlexAttention traces mask_mods with vmap, where a data-dependent check would fail).
    """
    mask_mod.check_sizes = check_sizes
    return mask_mod


def causal_mask_mod(N_q: int, N_k: int) -> MaskMod:
    """Query ``i`` sees key ``j <= i + N_k - N_q`` (queries aligned to the end, as :mod:`attnlib.reference`)."""
    check_positive_int("N_q", N_q)
    check_positive_int("N_k", N_k)
    offset = N_k - N_q

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    def check_sizes(B, H, n_q, n_k):
        if (n_q, n_k) != (N_q, N_k):
            raise ValueError(
                f"causal_mask_mod was made for N_q={N_q}, N_k={N_k}, but the block mask is for N_q={n_q}, "
                f"N_k={n_k}: make it with causal_mask_mod({n_q}, {n_k})"
            )

    return _with_size_check(mask_mod, check_sizes)


def sliding_window_mask_mod(window: int, *, causal: bool = False) -> MaskMod:
    """Query ``i`` sees keys ``j`` with ``|i - j| <= window`` (``i - window <= j <= i`` if causal)."""
    check_positive_int("window", window)
    check_flag("causal", causal)
    if causal:
        return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx <= window)
    return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() <= window


def document_mask_mod(document_ids: torch.Tensor, *, causal: bool = False) -> MaskMod:
    """Packed sequences: a token sees the tokens of its own document, ``document_ids: (N,)`` or ``(B, N)``.

    For self-attention over those ``N`` tokens (``N_q = N_k = N``); ``(B, N)``: one row per batch
    element, so the block mask is built with that ``B``.
    """
    if not isinstance(document_ids, torch.Tensor) or document_ids.dtype.is_floating_point:
        raise TypeError("document_ids must be an integer torch.Tensor of shape (N,) or (B, N)")
    if document_ids.ndim not in (1, 2):
        raise ValueError(f"document_ids must have shape (N,) or (B, N), got {tuple(document_ids.shape)}")
    if document_ids.numel() == 0:
        shape = tuple(document_ids.shape)
        raise ValueError(f"document_ids must have at least one token (and one row), got shape {shape}")
    check_flag("causal", causal)
    ids = document_ids.reshape(-1, document_ids.shape[-1])  # (B or 1, N)
    rows, N = ids.shape

    def mask_mod(b, h, q_idx, kv_idx):
        per_row = ids[b.flatten()] if rows > 1 else ids  # (B_m, N)
        q_doc = per_row[:, q_idx.flatten()].view(-1, 1, q_idx.shape[-2], 1)  # (B_m, 1, b_q, 1)
        kv_doc = per_row[:, kv_idx.flatten()].view(-1, 1, 1, kv_idx.shape[-1])  # (B_m, 1, 1, keys)
        same = q_doc == kv_doc  # (B_m, 1, b_q, keys)
        return same & (kv_idx <= q_idx) if causal else same

    def check_sizes(B, H, N_q, N_k):
        if (N_q, N_k) != (N, N):
            raise ValueError(
                f"document_ids has {N} tokens, but the block mask is for N_q={N_q}, N_k={N_k}: "
                "give one document id per token (N_q = N_k = N)"
            )
        if rows > 1 and B != rows:
            raise ValueError(
                f"document_ids has {rows} rows (one per batch element), but the block mask is built with B={B}: "
                f"build it with B={rows}"
            )

    return _with_size_check(mask_mod, check_sizes)


def swin_window_mask_mod(height: int, width: int, window_size: int, shift: int = 0) -> MaskMod:
    """Swin windows on the row-major flattened ``height x width`` image (Liu et al., ICCV 2021, Sec. 3.2).

    Tokens see each other iff they fall in the same ``window_size x window_size`` window. With
    ``shift`` the windows move by ``shift`` pixels; the result is what Swin's cyclic shift plus
    its attention mask computes (:func:`attnlib.sparse.swin.swin_pattern`). The official code rolls
    the map by ``-s`` and masks the pieces that wrap around; in the map's own frame the first
    ``s`` rows form a window of their own and the others follow every ``M`` rows, so the window
    of row ``r`` is ``(r + M - s) // M`` (and the same for columns). As in the official code, a
    map no larger than the window (``min(height, width) <= M``) is one window of ``min(height, width)``
    with no shift (:func:`attnlib.sparse.swin.swin_window_and_shift`).
    """
    for name, value in (("height", height), ("width", width), ("window_size", window_size)):
        check_positive_int(name, value)
    if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < window_size:
        raise ValueError(f"shift must be an int in [0, window_size={window_size}), got {shift!r}")
    M, s = swin_window_and_shift(height, width, window_size, shift)  # clipped for small maps

    def window_id(idx):
        row, col = idx // width, idx % width
        # (row + M - s) // M is at most height, so width + M ids per row of windows keep windows apart
        return ((row + M - s) // M) * (width + M) + (col + M - s) // M

    def mask_mod(b, h, q_idx, kv_idx):
        return window_id(q_idx) == window_id(kv_idx)

    def check_sizes(B, H, N_q, N_k):
        if N_q != height * width or N_k != height * width:
            raise ValueError(
                f"swin_window_mask_mod was made for a {height} x {width} map ({height * width} tokens), "
                f"but the block mask is for N_q={N_q}, N_k={N_k} tokens"
            )

    return _with_size_check(mask_mod, check_sizes)


def bigbird_mask_mod(categories: torch.Tensor, block_size: int, *, causal: bool = False) -> MaskMod:
    """BigBird's pattern from its ``(H, nb, nb)`` block table (:func:`attnlib.sparse.bigbird.bigbird_block_categories`).

    Query ``i`` sees key ``j`` iff block ``(i // block_size, j // block_size)`` is visible for the
    head (global, window or random), and ``j <= i`` if causal. The table is ``O((N / block)^2)``.
    It is for ``N`` tokens with ``ceil(N / block_size) = nb``; a table with ``H > 1`` heads needs
    the block mask built with that ``H``.
    """
    if not isinstance(categories, torch.Tensor):
        raise TypeError(f"categories must be a torch.Tensor of shape (H, nb, nb), got {type(categories).__name__}")
    if categories.dtype.is_floating_point or categories.dtype.is_complex:
        raise TypeError(f"categories must be an integer tensor (0 = not visible), got {categories.dtype}")
    if categories.ndim != 3 or categories.shape[-1] != categories.shape[-2] or 0 in categories.shape:
        raise ValueError(f"categories must have shape (H, nb, nb) with H, nb >= 1, got {tuple(categories.shape)}")
    check_positive_int("block_size", block_size)
    check_flag("causal", causal)
    visible = categories > 0  # (H, nb, nb)
    heads, nb = visible.shape[0], visible.shape[-1]

    def mask_mod(b, h, q_idx, kv_idx):
        head = h.flatten() if heads > 1 else torch.zeros_like(h).flatten()
        table = visible[head]  # (H_m, nb, nb)
        allowed = table[:, q_idx.flatten() // block_size][:, :, kv_idx.flatten() // block_size]  # (H_m, b_q, keys)
        allowed = allowed.unsqueeze(0)  # (1, H_m, b_q, keys)
        return allowed & (kv_idx <= q_idx) if causal else allowed

    def check_sizes(B, H, N_q, N_k):
        if math.ceil(N_q / block_size) != nb or math.ceil(N_k / block_size) != nb:
            raise ValueError(
                f"categories covers {nb} blocks of {block_size} tokens ({(nb - 1) * block_size + 1} to "
                f"{nb * block_size} tokens), but the block mask is for N_q={N_q}, N_k={N_k}"
            )
        if heads > 1 and H != heads:
            raise ValueError(
                f"categories has {heads} heads (a pattern per head), but the block mask is built with H={H}: "
                f"build it with H={heads}"
            )

    return _with_size_check(mask_mod, check_sizes)


def bigbird_block_mask(N: int, *, block_size: int = 64, num_random_blocks: int = 3, num_heads: int = 1,
                       causal: bool = False, seed: int = 0, block_q: int | None = None,
                       block_k: int | None = None) -> BlockMask:  # fmt: skip
    """The :class:`BlockMask` of :func:`attnlib.sparse.bigbird.bigbird_pattern` with the same arguments.

    Tiles default to BigBird's own blocks, so every visible block is a full tile (no mask work)
    unless ``causal`` or ``N`` is not a multiple of ``block_size``. Built from the ``(H, nb, nb)``
    block table, never from the ``N x N`` pattern.
    """
    from ..sparse.bigbird import bigbird_block_categories

    check_flag("causal", causal)
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if value is not None:
            check_positive_int(name, value)
    cats = bigbird_block_categories(
        N, block_size=block_size, num_random_blocks=num_random_blocks, num_heads=num_heads, causal=causal, seed=seed
    )  # (H, nb, nb)
    H = cats.shape[0] if cats.shape[0] > 1 else None
    mask_mod = bigbird_mask_mod(cats, block_size, causal=causal)
    if (block_q or block_size) != block_size or (block_k or block_size) != block_size:
        return block_mask_from_mask_mod(mask_mod, None, H, N, N, block_q=block_q or block_size,
                                        block_k=block_k or block_size)  # fmt: skip
    # Tiles = BigBird's blocks: a visible block is a full tile, except on the causal diagonal and in
    # the ragged last row/column of blocks, whose element masks come from mask_mod, tile by tile.
    T = math.ceil(N / block_size)
    visible = (cats > 0)[:, :T, :T].unsqueeze(0)  # (1, H_m, T, T)
    needs_elements = torch.zeros_like(visible)  # (1, H_m, T, T)
    if causal:
        needs_elements |= torch.eye(T, dtype=torch.bool)
    if N % block_size:
        needs_elements[..., -1, :] = True
        needs_elements[..., :, -1] = True
    needs_elements &= visible
    kinds = torch.where(visible, FULL, EMPTY).to(torch.int8)  # (1, H_m, T, T)
    offsets = torch.arange(block_size)
    partial = []
    by_row = needs_elements.permute(2, 0, 1, 3).nonzero().tolist()  # (query tile, b, h, key tile), row by row
    for m, b, h, n in by_row:
        q_pos, kv_pos = m * block_size + offsets, n * block_size + offsets  # (b_q,), (b_k,)
        tile = mask_mod(torch.tensor([[[[b]]]]), torch.tensor([[[[h]]]]), q_pos.clamp(max=N - 1).view(1, 1, -1, 1),
                        kv_pos.clamp(max=N - 1).view(1, 1, 1, -1))[0, 0]  # fmt: skip  # (b_q, b_k)
        tile = tile & (q_pos < N)[:, None] & (kv_pos < N)[None, :]  # (b_q, b_k)
        kinds[b, h, m, n] = FULL if bool(tile.all()) else PARTIAL if bool(tile.any()) else EMPTY
        if kinds[b, h, m, n] == PARTIAL:
            partial.append(tile)
    partial_tiles = torch.stack(partial) if partial else torch.zeros(1, block_size, block_size, dtype=torch.bool)
    return _from_kinds(N, N, block_size, block_size, kinds, partial_tiles)
