"""DAT deformable attention: every query attends to keys sampled at a few learned, data-dependent points.

Xia et al., "Vision Transformer with Deformable Attention", CVPR 2022, arXiv:2201.00520,
Sec. 3.2-3.3, Eq. (6)-(9); official module ``DAttentionBaseline`` (``models/dat_blocks.py``).
Chapter: "DAT" (chapters/*/04_dat.ipynb).

Contract
--------
:class:`DeformableAttention` maps ``x: (B, H, W, C)`` to the same shape. With ``g`` offset groups
and a downsampling factor ``r`` (the official ``stride``):

    p          = uniform reference grid of Hk x Wk = ceil(H / r) x ceil(W / r) points
    q          = x W_q,   dp = s * tanh(theta_offset(q)) * (1 / Hk, 1 / Wk)     Eq. (6)
    x~         = phi(x; p + dp)          bilinear sampling at the deformed points   Eq. (6)-(7)
    k~ = x~ W_k,  v~ = x~ W_v
    z^(m)      = sigma(q^(m) k~^(m)T / sqrt(d) + phi(B^; R)) v~^(m)                Eq. (9)
    z          = Concat(z^(0), ..., z^(nh-1)) W_o

``theta_offset`` (``conv_offset``) is a depthwise convolution (kernel ``k``, stride ``r``,
padding ``k // 2``), LayerNorm over channels, GELU and a 1 x 1 convolution to 2 channels
(the offsets in y and x); it runs on each group's ``C / g`` query channels with shared weights,
so the ``nh / g`` heads of a group share one set of points. ``phi(B^; R)`` is the relative
position bias: a learned table ``rpe_table: (nh, 2H - 1, 2W - 1)`` interpolated bilinearly at
the displacement ``R`` between each query and each deformed point. Each query attends to
``Ns = Hk * Wk`` keys, so the scores are ``(N, Ns)``, never ``(N, N)``.

Conventions (the CVPR 2022 release of the official code; we say where we read it)
---------------------------------------------------------------------------------
* Coordinates are normalized to ``[-1, 1]`` as ``grid_sample`` expects, stored ``(y, x)`` and
  flipped to ``(x, y)`` for ``grid_sample``. Reference point ``i`` of ``Hk`` sits at
  ``(i + 0.5) / Hk * 2 - 1`` (the centre of cell ``i``), and the sampling uses
  ``align_corners=True``, which maps ``-1`` and ``1`` to the centres of the first and last
  pixel. The two conventions are mixed in the official code, so a zero offset samples at pixel
  ``(i + 0.5) / Hk * (H - 1)``, near but not at the cell centre ``(i + 0.5) * H / Hk - 0.5``;
  we keep it. (The later DAT++ release divides by ``Hk - 1`` instead.)
* Offsets: ``tanh``, times ``(1 / Hk, 1 / Wk)``, times ``offset_range_factor`` ``s`` (> 0): a
  point moves at most ``s / 2`` reference-grid spacings. Points outside the map read zeros
  (``grid_sample``'s zero padding).
* Queries' positions for the bias use the same cell-centre normalization over the ``H x W``
  pixels; the displacement ``(query - point) / 2`` lies in ``[-1, 1]`` and indexes the table
  with ``align_corners=True`` (the table's centre is displacement 0).
* The official module uses 1 x 1 convolutions ``proj_q``, ``proj_k``, ``proj_v``, ``proj_out``
  on ``(B, C, H, W)``; we use ``nn.Linear`` layers of the same names on ``(B, H, W, C)`` (the
  same maps). Keys and values are projected *after* sampling ``x``, as there.
* **H or W not divisible by r**: the official code does not pad: the offset convolution
  (padding ``k // 2``, odd ``k``) gives ``ceil(H / r) x ceil(W / r)`` points, and
  ``grid_sample`` reads any map size. We do the same. ``r`` larger than the map is refused
  (``ValueError``), as is a map of another size than the one the bias table was built for
  (the official code's reshape fails there too).

Shape legend
------------
    B     batch             H, W   map height and width     C   channels     N = H * W queries
    nh    heads             d      head dim = C / nh        g   offset groups, Cg = C / g, hg = nh / g
    r     stride            Hk, Wk reference grid = ceil(H / r), ceil(W / r)  Ns = Hk * Wk sampled keys
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    check_batch,
    check_fits_map,
    check_flag,
    check_heads,
    check_like_module,
    check_positive_finite,
    check_positive_int,
    check_query_key_value,
    check_tensor,
    resolve_scale,
)

# Query chunks handed to grid_sample as batch entries (it parallelizes over its batch axis only).
_BIAS_CHUNKS = 8
# The forward builds the position bias for blocks of queries of about this many values (2 MiB in float32).
_BIAS_BLOCK_ELEMENTS = 2**19

__all__ = [
    "reference_points",
    "bounded_offsets",
    "sample_at",
    "bilinear_weights",
    "relative_position_bias",
    "deformable_attention",
    "DeformableAttention",
    "dat_mixer",
]


def reference_points(rows: int, cols: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(rows, cols, 2)`` normalized ``(y, x)`` of a uniform grid: ``(i + 0.5) / rows * 2 - 1``.

    The official ``_get_ref_points`` (CVPR 2022 release): the reference points for ``(Hk, Wk)``,
    and the query positions of the bias for ``(H, W)``.
    """
    check_positive_int("rows", rows)
    check_positive_int("cols", cols)
    ys = (torch.arange(rows, dtype=dtype, device=device) + 0.5) / rows * 2 - 1  # (rows,)
    xs = (torch.arange(cols, dtype=dtype, device=device) + 0.5) / cols * 2 - 1  # (cols,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # each (rows, cols)
    return torch.stack((grid_y, grid_x), dim=-1)  # (rows, cols, 2)


def _coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinates and sampling run in float32 for half-precision input (float64 stays float64).

    In half precision a normalized coordinate carries about 3 significant digits: a point of a
    56 x 56 map would land up to a few hundredths of a pixel off. (On the CPU, ``grid_sample`` in
    float16 on a strided view also returns non-finite samples, and complex views do not exist
    for bfloat16.)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def bounded_offsets(raw: torch.Tensor, offset_range_factor: float) -> torch.Tensor:
    """Eq. (6)'s offsets, bounded: raw ``(..., 2, Hk, Wk)`` -> ``s tanh(raw) (1/Hk, 1/Wk)``, ``(..., Hk, Wk, 2)``."""
    check_tensor("raw", raw)
    if raw.ndim < 3 or raw.shape[-3] != 2:
        raise ValueError(f"raw must be (..., 2, Hk, Wk): the offsets in y and x, got shape {tuple(raw.shape)}")
    check_positive_finite("offset_range_factor", offset_range_factor)
    Hk, Wk = raw.shape[-2:]
    offset_range = torch.tensor([1.0 / Hk, 1.0 / Wk], dtype=raw.dtype, device=raw.device)  # (2,)
    return raw.movedim(-3, -1).tanh() * offset_range * offset_range_factor  # (..., Hk, Wk, 2)


def sample_at(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Eq. (7): bilinear sampling of ``(Bg, Cg, H, W)`` features at ``(Bg, Hk, Wk, 2)`` normalized ``(y, x)``.

    Returns ``(Bg, Cg, Hk, Wk)``. ``align_corners=True`` and zero padding, as the official code.
    Half-precision input is sampled in float32 and rounded once at the end.
    """
    check_tensor("features", features, ndim=4)
    check_tensor("positions", positions, ndim=4)
    if positions.shape[0] != features.shape[0] or positions.shape[-1] != 2:
        raise ValueError(
            f"positions must be (Bg, Hk, Wk, 2) with Bg = {features.shape[0]} (the batch of features) and "
            f"normalized (y, x) pairs last, got shape {tuple(positions.shape)}"
        )
    if positions.dtype != features.dtype:
        raise TypeError(f"positions must have the dtype of features ({features.dtype}), got {positions.dtype}")
    if positions.device != features.device:
        raise ValueError(f"positions must be on the device of features ({features.device}), got {positions.device}")
    work = _coordinate_dtype(features.dtype)
    sampled = F.grid_sample(
        features.to(work), positions.to(work).flip(-1), mode="bilinear", align_corners=True
    )  # (Bg, Cg, Hk, Wk)
    return sampled.to(features.dtype)


def bilinear_weights(positions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pattern: ``(..., Ns, 2)`` normalized ``(y, x)`` -> ``(..., Ns, H * W)`` bilinear weights over pixels.

    Row ``n`` holds the weights with which sampled point ``n`` mixes the input pixels
    (at most four non-zero, summing to 1 inside the map; fewer outside, which reads zeros).
    ``sample_at(f, p)`` equals ``bilinear_weights(p) @ f`` per channel. For figures and tests.
    """
    check_tensor("positions", positions)
    if positions.ndim < 1 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be (..., 2): normalized (y, x) pairs, got shape {tuple(positions.shape)}")
    check_positive_int("height", height)
    check_positive_int("width", width)
    py = (positions[..., 0] + 1) / 2 * (height - 1)  # (..., Ns) pixel rows, align_corners=True
    px = (positions[..., 1] + 1) / 2 * (width - 1)  # (..., Ns)
    y0, x0 = py.floor(), px.floor()
    weights = positions.new_zeros(*positions.shape[:-1], height * width)  # (..., Ns, N)
    for dy in (0, 1):
        for dx in (0, 1):
            y, x = y0 + dy, x0 + dx
            w = (1 - (py - y).abs()) * (1 - (px - x).abs())  # (..., Ns) bilinear weight of this corner
            inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
            index = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).long()  # (..., Ns)
            weights.scatter_add_(-1, index[..., None], (w * inside)[..., None])
    return weights  # (..., Ns, N)


def relative_position_bias(
    rpe_table: torch.Tensor, query_positions: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``phi(B^; R)`` of Eq. (9): the table interpolated at each query-to-point displacement.

    Args:
        rpe_table: ``(nh, 2H - 1, 2W - 1)`` learned bias.
        query_positions: ``(..., 2)`` normalized ``(y, x)`` of the ``N`` queries (:func:`reference_points`).
        positions: ``(B, g, Ns, 2)`` normalized ``(y, x)`` of the deformed points.

    Returns ``(B, nh, N, Ns)``; head ``m`` reads its group's points ``m // (nh / g)``.
    As the official code: ``grid_sample(rpe_table, (query - point) / 2, align_corners=True)``.
    Computed in the dtype of ``positions``, float32 for half precision (the table is cast to it).
    """
    check_tensor("rpe_table", rpe_table, ndim=3)
    check_tensor("query_positions", query_positions)
    check_tensor("positions", positions, ndim=4)
    if query_positions.ndim < 1 or query_positions.shape[-1] != 2 or query_positions.numel() == 0:
        raise ValueError(
            f"query_positions must be (..., 2): normalized (y, x) pairs, got shape {tuple(query_positions.shape)}"
        )
    if positions.shape[-1] != 2 or 0 in positions.shape:
        raise ValueError(f"positions must be (B, g, Ns, 2), none empty, got shape {tuple(positions.shape)}")
    if query_positions.dtype != positions.dtype:
        raise TypeError(
            f"query_positions must have the dtype of positions ({positions.dtype}), got {query_positions.dtype}"
        )
    if not (rpe_table.device == query_positions.device == positions.device):
        raise ValueError(
            f"rpe_table, query_positions and positions must be on one device, got {rpe_table.device}, "
            f"{query_positions.device} and {positions.device}"
        )
    B, g, Ns, _ = positions.shape
    nh, table_h, table_w = rpe_table.shape
    if nh % g != 0:
        raise ValueError(
            f"the heads of rpe_table ({nh}) must be a multiple of the groups of positions ({g}): "
            "the heads of a group share its points"
        )
    work = _coordinate_dtype(positions.dtype)
    rpe_table, query_positions, positions = rpe_table.to(work), query_positions.to(work), positions.to(work)
    hg, N = nh // g, query_positions.numel() // 2
    # (query - point) / 2 in (x, y) order for grid_sample, for every query and point. A pair (x, y)
    # is read as one complex number x + iy: the subtraction then runs over whole pairs (a broadcast
    # over a last axis of size 2 is ten times slower on a CPU); view_as_real gives the pairs back.
    queries_xy = torch.view_as_complex((query_positions.flip(-1) * 0.5).reshape(N, 2).contiguous())  # (N,)
    points_xy = torch.view_as_complex((positions.flip(-1) * 0.5).reshape(B * g, Ns, 2).contiguous())  # (B*g, Ns)
    displacement = torch.view_as_real(queries_xy[None, :, None] - points_xy[:, None, :])  # (B*g, N, Ns, 2)
    # grid_sample runs its batch axis in parallel: cut the queries into c chunks made batch entries
    # (each reads the same table, a view), so that every thread has work. Same values as one call.
    c = max(c for c in range(1, _BIAS_CHUNKS + 1) if N % c == 0)
    table = rpe_table.view(1, g, 1, hg, table_h, table_w).expand(B, g, c, hg, table_h, table_w)
    bias = F.grid_sample(
        table.reshape(B * g * c, hg, table_h, table_w),  # (B*g*c, hg, 2H-1, 2W-1)
        displacement.view(B * g * c, N // c, Ns, 2),  # (B*g*c, N/c, Ns, 2)
        mode="bilinear",
        align_corners=True,
    )  # (B*g*c, hg, N/c, Ns)
    bias = bias.view(B, g, c, hg, N // c, Ns).transpose(2, 3)  # (B, g, hg, c, N/c, Ns)
    return bias.reshape(B, nh, N, Ns)  # (B, nh, N, Ns): copies only when hg > 1 and c > 1


def deformable_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Eq. (9): ``softmax(q k^T * scale + bias) v`` over the sampled keys.

    ``q: (B, nh, N, d)``, ``k, v: (B, nh, Ns, d)``, ``bias: (B, nh, N, Ns)`` or None ->
    ``(B, nh, N, d)``. The scores are ``(N, Ns)``. ``fused=True`` runs PyTorch's fused kernel
    with the bias as an additive mask; ``fused=False`` writes softmax out. Same result.
    The bias is cast to the dtype of ``q``.
    """
    check_query_key_value(q, k, v, key_tokens="Ns")
    if bias is not None:
        _check_bias(bias, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), q.device)
        bias = bias.to(q.dtype)
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    check_flag("fused", fused)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)  # (B, nh, N, d)
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, nh, N, Ns)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v  # (B, nh, N, d)


def _check_bias(bias, target: tuple[int, int, int, int], device) -> None:
    """``bias`` must be a floating tensor broadcastable to ``(B, nh, N, Ns)``, on ``device``."""
    check_tensor("bias", bias)
    padded = (1,) * (4 - bias.ndim) + tuple(bias.shape)
    if bias.ndim > 4 or any(got not in (1, want) for got, want in zip(padded, target)):
        raise ValueError(f"bias must be broadcastable to (B, nh, N, Ns) = {target}, got shape {tuple(bias.shape)}")
    if bias.device != device:
        raise ValueError(f"bias must be on the device of q ({device}), got {bias.device}")


class _LayerNormChannels(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (the official ``LayerNormProxy``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


class DeformableAttention(nn.Module):
    """DAT's deformable multi-head attention, ``x: (B, H, W, C) -> (B, H, W, C)`` (Eq. (6)-(9)).

    Names as in the official ``DAttentionBaseline``: ``proj_q``, ``proj_k``, ``proj_v``,
    ``proj_out``, ``conv_offset``, ``rpe_table``. The map size is fixed at construction
    (the bias table depends on it). Chapter: chapters/*/04_dat.ipynb.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        height: int,
        width: int,
        *,
        n_groups: int = 1,
        stride: int = 8,
        offset_range_factor: float = 2.0,
        offset_kernel_size: int = 9,
        use_pe: bool = True,
    ):
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("num_heads", num_heads),
            ("height", height),
            ("width", width),
            ("n_groups", n_groups),
            ("stride", stride),
            ("offset_kernel_size", offset_kernel_size),
        ):
            check_positive_int(name, value)
        check_heads(dim, num_heads)
        if num_heads % n_groups != 0:
            raise ValueError(
                f"num_heads must be divisible by n_groups (heads of a group share offsets), "
                f"got num_heads={num_heads}, n_groups={n_groups}"
            )
        if offset_kernel_size % 2 == 0:
            raise ValueError(
                f"offset_kernel_size must be odd (padding k // 2 keeps the grid), got {offset_kernel_size}"
            )
        check_positive_finite("offset_range_factor", offset_range_factor)
        check_flag("use_pe", use_pe)
        check_fits_map("stride", stride, height, width)
        self.dim, self.num_heads, self.height, self.width = dim, num_heads, height, width
        self.n_groups, self.stride, self.offset_range_factor = n_groups, stride, float(offset_range_factor)
        self.head_dim = dim // num_heads
        self.group_channels = dim // n_groups
        self.scale = self.head_dim**-0.5
        k = offset_kernel_size
        self.conv_offset = nn.Sequential(  # theta_offset, shared by the groups
            nn.Conv2d(self.group_channels, self.group_channels, k, stride, k // 2, groups=self.group_channels),
            _LayerNormChannels(self.group_channels),
            nn.GELU(),
            nn.Conv2d(self.group_channels, 2, 1, 1, 0, bias=False),
        )
        self.proj_q = nn.Linear(dim, dim)
        self.proj_k = nn.Linear(dim, dim)
        self.proj_v = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.use_pe = use_pe
        if use_pe:
            self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * height - 1, 2 * width - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, map={self.height}x{self.width}, n_groups={self.n_groups}, "
            f"stride={self.stride}, offset_range_factor={self.offset_range_factor}, use_pe={self.use_pe}"
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(Hk, Wk)``: the reference grid, ``ceil(H / r) x ceil(W / r)``."""
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    def _check_input(self, x) -> None:
        check_tensor("x", x, ndim=4)
        if tuple(x.shape[1:]) != (self.height, self.width, self.dim):
            raise ValueError(
                f"x must be (B, H, W, C) = (B, {self.height}, {self.width}, {self.dim}) (the bias table is built "
                f"for this map), got shape {tuple(x.shape)}"
            )
        check_batch("x", x)
        check_like_module("x", x, self)

    def _positions(self, q: torch.Tensor):
        """Deformed points ``(B, g, Hk, Wk, 2)`` and reference grid ``(Hk, Wk, 2)`` from queries ``(B, H, W, C)``.

        Coordinates are float32 for half-precision input (float64 stays float64).
        """
        B, H, W, C = q.shape
        g, Cg = self.n_groups, self.group_channels
        q_groups = q.permute(0, 3, 1, 2).reshape(B * g, Cg, H, W)  # (B*g, Cg, H, W)
        raw = self.conv_offset(q_groups)  # (B*g, 2, Hk, Wk)
        Hk, Wk = raw.shape[-2:]
        work = _coordinate_dtype(q.dtype)
        offsets = bounded_offsets(raw.to(work), self.offset_range_factor)  # (B*g, Hk, Wk, 2), Eq. (6)
        reference = reference_points(Hk, Wk, dtype=work, device=q.device)  # (Hk, Wk, 2)
        positions = reference + offsets  # (B*g, Hk, Wk, 2)
        return positions.view(B, g, Hk, Wk, 2), reference

    def sampling_positions(self, x: torch.Tensor):
        """``(positions (B, g, Hk, Wk, 2), reference (Hk, Wk, 2))``, normalized ``(y, x)``, for ``x``.

        In float32 for half-precision ``x`` (float64 stays float64).
        """
        self._check_input(x)
        return self._positions(self.proj_q(x))

    def _qkv_positions(self, x: torch.Tensor):
        """``q (B, nh, N, d)``, ``k, v (B, nh, Ns, d)`` and the deformed points ``(B, g, Ns, 2)``."""
        B, H, W, C = x.shape
        g, Cg, nh, d = self.n_groups, self.group_channels, self.num_heads, self.head_dim
        q_map = self.proj_q(x)  # (B, H, W, C)
        positions, _ = self._positions(q_map)  # (B, g, Hk, Wk, 2)
        Hk, Wk = positions.shape[2:4]
        x_groups = x.permute(0, 3, 1, 2).reshape(B * g, Cg, H, W).to(positions.dtype)  # (B*g, Cg, H, W)
        sampled = sample_at(x_groups, positions.flatten(0, 1)).to(x.dtype)  # (B*g, Cg, Hk, Wk), Eq. (7)
        sampled = sampled.view(B, C, Hk * Wk).transpose(1, 2)  # (B, Ns, C)
        q = q_map.view(B, H * W, nh, d).transpose(1, 2)  # (B, nh, N, d)
        k = self.proj_k(sampled).view(B, -1, nh, d).transpose(1, 2)  # (B, nh, Ns, d)
        v = self.proj_v(sampled).view(B, -1, nh, d).transpose(1, 2)  # (B, nh, Ns, d)
        return q, k, v, positions.flatten(2, 3)

    def _bias(self, positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor | None:
        """``phi(B^; R)`` for queries at ``query_positions: (n, 2)``: ``(B, nh, n, Ns)``, or None."""
        if not self.use_pe:
            return None
        return relative_position_bias(self.rpe_table, query_positions, positions)  # (B, nh, n, Ns)

    def _query_positions(self, like: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` normalized ``(y, x)`` of the ``H x W`` queries, row-major."""
        return reference_points(self.height, self.width, dtype=like.dtype, device=like.device).view(-1, 2)

    def forward(self, x: torch.Tensor, *, fused: bool = True) -> torch.Tensor:
        self._check_input(x)
        check_flag("fused", fused)
        B, H, W, C = x.shape
        q, k, v, positions = self._qkv_positions(x)
        query_positions = self._query_positions(positions)  # (N, 2)
        # Eq. (9), a block of queries at a time: the bias of all N queries, (B, nh, N, Ns), would be
        # as large as the scores; the bias of one block stays in the cache and its memory is reused.
        Ns = positions.shape[2]
        block = max(8, _BIAS_BLOCK_ELEMENTS // (B * self.num_heads * Ns) // 8 * 8)  # queries per block
        outs = [
            deformable_attention(
                q[:, :, rows], k, v, self._bias(positions, query_positions[rows]), scale=self.scale, fused=fused
            )  # (B, nh, n, d)
            for rows in (slice(start, start + block) for start in range(0, H * W, block))
        ]
        out = torch.cat(outs, dim=2)  # (B, nh, N, d)
        return self.proj_out(out.transpose(1, 2).reshape(B, H, W, C))  # (B, H, W, C)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``(B, nh, N, Ns)`` of every query over the sampled keys (for figures)."""
        self._check_input(x)
        q, k, _, positions = self._qkv_positions(x)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, nh, N, Ns)
        bias = self._bias(positions, self._query_positions(positions))
        return (scores if bias is None else scores + bias.to(scores.dtype)).softmax(dim=-1)


def dat_mixer(dim: int, num_heads: int, height: int, width: int) -> DeformableAttention:
    """Registry factory: DAT deformable attention with stride ``r = 8`` and one offset group.

    A benchmark setting that mixes the two releases of the official code, chosen to show the
    mechanism at high resolution. Stride 8 and offset kernel 9 (with ``C = 64`` and 2 heads in
    the benchmark) are the first stage of DAT-Tiny in DAT++ (2023), which also drops the tanh
    bound on the offsets. The module follows the CVPR 2022 release (tanh, ``s = 2``), whose
    DAT-Tiny has no deformable attention in stage 1: local and shifted-window attention in
    stages 1-2, deformable attention only in stages 3-4, there with stride ``r = 1``.
    """
    return DeformableAttention(dim, num_heads, height, width, n_groups=1, stride=8, offset_kernel_size=9)
