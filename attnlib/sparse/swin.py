"""Swin Transformer: window attention and shifted windows (W-MSA and SW-MSA).

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
ICCV 2021, arXiv:2103.14030, Sec. 3.2. Chapter: "Swin" (chapters/*/01_swin.ipynb).

Contract
--------
* :func:`swin_attention` (functional core): ``q, k, v: (B, h, N, d)`` over an ``H x W`` map
  (``N = H * W``, row-major) -> ``(B, h, N, d)``. It equals dense attention with the
  :func:`swin_pattern` mask and the same relative position bias
  (``windows.dense_biased_attention``; with no table, ``reference.attention(q, k, v, mask=pattern)``).
* :class:`SwinWindowAttention2d` (``nn.Module``): ``x: (B, H, W, C) -> (B, H, W, C)``, channels last.
  Its weights carry the official names and shapes: ``qkv`` (one fused Linear ``C -> 3C``),
  ``proj``, ``relative_position_bias_table`` ``((2M-1)^2, h)`` and the buffer ``relative_position_index``.
* :func:`swin_pattern`: the boolean ``(N, N)`` mask of which pixels each pixel sees, for tests
  and figures only. The library path never builds an ``N x N`` matrix: scores are ``(B * nW, h, T, T)``.

Equations
---------
Each non-overlapping ``M x M`` window runs self-attention with a relative position bias, Eq. (4):

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V,    B = table[relative_position_index]

which costs ``4 h w C^2 + 2 M^2 h w C`` instead of ``4 h w C^2 + 2 (h w)^2 C`` (Eq. (1), (2)).
Every second layer shifts the windows by ``s = floor(M / 2)`` pixels: the official code rolls the
map by ``-s`` (``torch.roll``), partitions it into windows as usual, masks the pairs of a window
that were not neighbours before the roll (they come from opposite borders), and rolls back.

Conventions, as in the official code (microsoft/Swin-Transformer, ``SwinTransformerBlock``)
----------------------------------------------------------------------------------------
* The shift mask labels the rolled map with 3 x 3 regions, cut at ``-M`` and ``-s`` along each
  side (``h_slices``/``w_slices``); two pixels of a window may attend to each other iff they carry
  the same label (:func:`swin_region_labels`). The official code adds -100 to masked scores; we
  mask them exactly (``-inf`` by masked_fill, as ``reference.attention``). The two agree up to
  ``exp(-100)`` only while every masked score stays well below 100 above the allowed ones: with
  large activations they do not (a randomly initialized layer fed inputs scaled by 12 can put
  over 99% of a row's weight on masked pixels under the -100 mask).
* Sides that are not multiples of ``M`` are padded at the bottom and right with zeros, then the
  output is cropped (the official detection code pads first, then rolls the padded map; so do we).
  The official code lets the zero-padded pixels be attended to as keys; we mask them out, so that
  a real pixel sees real pixels only and the result equals dense attention on the ``H x W`` map.
  timm (1.0.31, ``swin_transformer.py``) rolls first and then pads, with a mask built as if it
  had padded first, so on padded maps its output differs from this order (by about 0.6;
  timm issue #2438). On maps that are multiples of ``M`` the orders agree.
* A query row whose every allowed score is ``-inf`` (they overflowed) gives zeros, and a NaN or
  infinite key reaches only the rows that may attend to it, as in ``reference.attention``.
  Padding slots hold zeros, never a copy of a real pixel.
* When the map is no larger than the window (``min(H, W) <= M``) the official code does not
  partition: the window becomes ``min(H, W)`` and the shift is dropped (:func:`swin_window_and_shift`).
  Given ``input_resolution``, the module does this at construction, as the official code does, so its
  table is ``(2 min(H, W) - 1)^2`` rows. Without it the module clips at each call and reads the
  clipped window's offsets from its full table (``relative_position_index(M, Mt)``).

Shape legend
------------
    B   batch      h  heads     d  head dim     C = h * d channels
    H, W  map height and width   Hp, Wp  padded to multiples of M    N = H * W
    M   window side   s  shift   T = M * M tokens per window   nW = (Hp / M) * (Wp / M) windows
    Mt  window the bias table was made for
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .._checks import check_flag, check_positive_int, check_qkv, resolve_scale
from .windows import (
    GatherPlan,
    GroupedAttention2d,
    additive_bias_and_mask,
    block_partition,
    check_bias_table,
    check_map_size,
    from_groups,
    gather_plan,
    group_attention,
    relative_position_bias,
    relative_position_index,
    to_groups,
)

__all__ = [
    "swin_window_and_shift",
    "swin_region_labels",
    "swin_groups",
    "swin_pattern",
    "swin_plan",
    "swin_attention",
    "SwinWindowAttention2d",
    "swin_mixer",
]


def swin_window_and_shift(height: int, width: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """The window and shift the official code uses on an ``H x W`` map.

    ``if min(input_resolution) <= window_size: shift_size = 0; window_size = min(input_resolution)``.
    """
    check_map_size(height, width)
    _check_window_and_shift(window_size, shift_size)
    if min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, shift_size


def _check_window_and_shift(window_size, shift_size) -> None:
    check_positive_int("window_size", window_size)
    if isinstance(shift_size, bool) or not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be an int in [0, window_size) = [0, {window_size}), got {shift_size!r}")


def _padded(size: int, window: int) -> int:
    return -(-size // window) * window  # ceil to a multiple of the window


def _slice_labels(size: int, window: int, shift: int) -> torch.Tensor:
    """``(size,)`` 0, 1, 2 along one side of the rolled map: the official slices ``(0, -M), (-M, -s), (-s, None)``."""
    labels = torch.zeros(size, dtype=torch.long)  # (size,)
    if shift > 0:
        labels[size - window : size - shift] = 1
        labels[size - shift :] = 2
    return labels


def swin_region_labels(height: int, width: int, window_size: int = 7, shift_size: int = 0) -> torch.Tensor:
    """``(Hp, Wp)`` the official ``img_mask``: region 0..8 of each pixel of the *rolled*, padded map.

    In a shifted layer, two pixels of one window may attend to each other iff they have the same
    label. All zeros without a shift. (Window and shift are clipped as :func:`swin_window_and_shift`.)
    """
    M, s = swin_window_and_shift(height, width, window_size, shift_size)
    Hp, Wp = _padded(height, M), _padded(width, M)
    return _slice_labels(Hp, M, s)[:, None] * 3 + _slice_labels(Wp, M, s)[None, :]  # (Hp, Wp)


def swin_groups(height: int, width: int, window_size: int = 7, shift_size: int = 0) -> torch.Tensor:
    """``(H, W)`` long: the group of each pixel, in the map's own frame; two pixels see each other iff equal.

    group = 9 * window + region, where window and region are read on the rolled map at the
    pixel's rolled position ``((i - s) mod Hp, (j - s) mod Wp)``.
    """
    M, s = swin_window_and_shift(height, width, window_size, shift_size)
    Hp, Wp = _padded(height, M), _padded(width, M)
    rows = (torch.arange(height) - s) % Hp  # (H,) row of each pixel on the rolled map
    cols = (torch.arange(width) - s) % Wp  # (W,)
    window = (rows // M)[:, None] * (Wp // M) + (cols // M)[None, :]  # (H, W)
    region = swin_region_labels(height, width, window_size, shift_size)[rows[:, None], cols[None, :]]  # (H, W)
    return window * 9 + region  # (H, W)


def swin_pattern(height: int, width: int, window_size: int = 7, shift_size: int = 0) -> torch.Tensor:
    """Boolean ``(N, N)``: True where pixel ``p`` attends to pixel ``q`` (row-major tokens).

    For tests and figures only (it *is* ``N x N``). ``shift_size=0``: the plain window layer (W-MSA);
    ``shift_size=window_size // 2``: the shifted layer (SW-MSA).
    """
    groups = swin_groups(height, width, window_size, shift_size).flatten()  # (N,)
    return groups[:, None] == groups[None, :]  # (N, N)


def _shift_pad_partition(x: torch.Tensor, window: int, shift: int, pad_value: float = 0.0) -> torch.Tensor:
    """The textbook steps: ``(H, W, C) -> (nW, T, C)``: pad to multiples of ``M``, roll by ``-s``, partition."""
    H, W = x.shape[-3], x.shape[-2]
    pad_bottom, pad_right = _padded(H, window) - H, _padded(W, window) - W
    x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom), value=pad_value)  # (Hp, Wp, C)
    x = torch.roll(x, shifts=(-shift, -shift), dims=(-3, -2))  # (Hp, Wp, C): the cyclic shift
    return block_partition(x, window)  # (nW, T, C)


@functools.lru_cache(maxsize=64)
def swin_plan(height: int, width: int, window: int, shift: int) -> tuple[GatherPlan, torch.Tensor | None]:
    """The gather plan of one layer, and ``blocked: (nW, T, T)`` (True = may not attend) or None.

    The plan is :func:`_shift_pad_partition` applied to the token numbers (padding = -1), so that
    one ``index_select`` does pad, roll and partition, and one more undoes them (and crops).
    A key is blocked if it has another region label (the shift mask) or is padding. A padding
    query (its output is dropped) attends to itself only: no row is ever fully masked, and no real
    value reaches a padding row. Computed once per map size and cached, like the official
    ``attn_mask`` buffer. ``window`` and ``shift`` are clipped as :func:`swin_window_and_shift`.
    """
    window, shift = swin_window_and_shift(height, width, window, shift)
    tokens = torch.arange(height * width).view(height, width, 1)  # (H, W, 1) token numbers
    token_map = _shift_pad_partition(tokens, window, shift, pad_value=-1)  # (nW, T, 1)
    plan = gather_plan(token_map[..., 0])
    if shift == 0 and bool(plan.real.all()):
        return plan, None
    labels = swin_region_labels(height, width, window, shift)  # (Hp, Wp), on the rolled map
    label_windows = block_partition(labels[..., None], window)[..., 0]  # (nW, T)
    real = plan.real.view(plan.num_groups, plan.group_tokens)  # (nW, T)
    blocked = (label_windows[:, :, None] != label_windows[:, None, :]) | ~real[:, None, :]  # (nW, T, T)
    only_itself = ~torch.eye(plan.group_tokens, dtype=torch.bool)  # (T, T)
    blocked = torch.where(real[:, :, None], blocked, only_itself)  # (nW, T, T): padding queries see themselves
    return plan, blocked


def _bias_and_mask(table, table_window: int, height: int, width: int, window: int, shift: int, dtype, device):
    """The ``(nW or 1, h, T, T)`` term added to the scores, or None; and the layer's gather plan."""
    plan, blocked = swin_plan(height, width, window, shift)
    bias = None
    if table is not None:
        index = relative_position_index(window, table_window, device=device)  # (T, T)
        bias = relative_position_bias(table, index)  # (h, T, T)
    if bias is None and blocked is None:
        return None, plan
    blocked = None if blocked is None else blocked.to(device)
    num_heads = 1 if table is None else table.shape[1]
    return additive_bias_and_mask(bias, blocked, num_heads, dtype, device), plan


def swin_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    height: int,
    width: int,
    window_size: int = 7,
    shift_size: int = 0,
    relative_position_bias_table: torch.Tensor | None = None,
    table_window: int | None = None,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """(Shifted) window attention, Sec. 3.2 and Eq. (4), on row-major tokens of an ``H x W`` map.

    Args:
        q, k, v: ``(B, h, N, d)`` with ``N = height * width``.
        window_size: ``M``; clipped to ``min(H, W)`` (and the shift dropped) on small maps.
        shift_size: ``s``; 0 for W-MSA, ``M // 2`` for SW-MSA; ``0 <= s < M``.
        relative_position_bias_table: ``((2Mt-1)^2, h)``, or None for no bias.
        table_window: ``Mt``, the window the table was made for (default ``window_size``).
        scale: multiplies ``q k^T``; default ``d ** -0.5``.
        fused: PyTorch's fused kernel inside the windows (False: the softmax written out).

    Returns ``(B, h, N, d)``. Sides that are not multiples of ``M`` are padded with zeros, the
    padded keys masked out (``-inf``, as ``reference.attention``), and the output cropped.
    """
    B, h, h_kv, N, N_k, d = check_qkv(q, k, v)
    if h_kv != h or N_k != N:
        raise ValueError(
            f"q, k, v must have the same heads and tokens (self-attention), got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    check_map_size(height, width)
    if height * width != N:
        raise ValueError(f"q must have N = height * width = {height} * {width} = {height * width} tokens, got {N}")
    M, s = swin_window_and_shift(height, width, window_size, shift_size)
    Mt = window_size if table_window is None else table_window
    if relative_position_bias_table is not None:
        check_positive_int("table_window", Mt)
        if Mt < M:
            raise ValueError(f"table_window must be >= the window ({M}), got {Mt}")
        check_bias_table(relative_position_bias_table, h, Mt, device=q.device)
    scale = resolve_scale(scale, d**-0.5)
    check_flag("fused", fused)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    additive, plan = _bias_and_mask(relative_position_bias_table, Mt, height, width, M, s, compute_dtype, q.device)

    def grouped(t):  # (B, h, N, d) -> (B, nW, h, T, d)
        return to_groups(t.transpose(1, 2).reshape(B, N, h * d), plan).unflatten(-1, (h, d)).transpose(2, 3)

    out = group_attention(grouped(q), grouped(k), grouped(v), scale=scale, additive=additive, fused=fused)
    out = from_groups(out.transpose(2, 3).flatten(-2), plan)  # (B, N, h*d)
    return out.view(B, N, h, d).transpose(1, 2).to(q.dtype)  # (B, h, N, d)


class SwinWindowAttention2d(GroupedAttention2d):
    """Swin's (shifted) window multi-head self-attention, ``x: (B, H, W, C) -> (B, H, W, C)``.

    The attention of one ``SwinTransformerBlock`` of the official code (without norm, MLP and
    residual): pad, roll, partition, ``qkv``, Eq. (4) per window, ``proj``, reverse, roll back, crop.
    Use ``shift_size=0`` and ``shift_size=window_size // 2`` in alternate layers.

    Built with ``input_resolution=(H, W)``, the layer clips its window and shift for that map
    (as the official code, whose ``attn_mask`` buffer is made for it) and refuses any other map
    size: a layer clipped for 6 x 6 (window 6, no shift) is not the layer a 14 x 14 map needs.
    Built without it, the layer takes any size and clips the window at each call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window_size: int = 7,
        shift_size: int = 0,
        input_resolution: tuple[int, int] | None = None,
        qkv_bias: bool = True,
        fused: bool = True,
    ):
        _check_window_and_shift(window_size, shift_size)
        if input_resolution is not None:  # the official clipping, once, at construction
            if not (isinstance(input_resolution, tuple | list) and len(input_resolution) == 2):
                raise ValueError(f"input_resolution must be (height, width), got {input_resolution!r}")
            window_size, shift_size = swin_window_and_shift(*input_resolution, window_size, shift_size)
            input_resolution = tuple(input_resolution)
        super().__init__(dim, num_heads, window_size, qkv_bias=qkv_bias, fused=fused)
        self.window_size, self.shift_size = window_size, shift_size
        self.input_resolution = input_resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        B, H, W, C = x.shape
        if self.input_resolution is not None and (H, W) != self.input_resolution:
            raise ValueError(
                f"this layer was built for input_resolution={self.input_resolution} (its window and shift are "
                f"clipped for that map), got a {H} x {W} map; build one with input_resolution=({H}, {W}), or "
                f"with input_resolution=None to clip at each call"
            )
        M, s = swin_window_and_shift(H, W, self.window_size, self.shift_size)
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        additive, plan = _bias_and_mask(
            self.relative_position_bias_table, self.window_size, H, W, M, s, compute_dtype, x.device
        )  # (nW or 1, h, T, T)
        return self.attend_groups(x, plan, additive)  # pad, roll, partition; attention; reverse, roll back, crop

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}"
        )


def swin_mixer(dim: int, num_heads: int, height: int, width: int) -> SwinWindowAttention2d:
    """Registry factory: the shifted layer (SW-MSA: the regular layer plus a roll and a mask), window 7, shift 3."""
    return SwinWindowAttention2d(dim, num_heads, window_size=7, shift_size=3, input_resolution=(height, width))
