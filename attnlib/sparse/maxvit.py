"""MaxViT multi-axis attention: block attention (local) and grid attention (dilated, global).

Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022, arXiv:2204.01697, Sec. 3.2.
Chapter: "MaxViT" (chapters/*/02_maxvit.ipynb).

Contract
--------
* :func:`block_attention` and :func:`grid_attention` (functional core): ``q, k, v: (B, h, N, d)``
  over an ``H x W`` map (``N = H * W``, row-major) -> ``(B, h, N, d)``. Each equals dense attention
  with the :func:`maxvit_pattern` mask and the same relative position bias.
* :class:`MaxViTPartitionAttention2d` (``nn.Module``): ``x: (B, H, W, C) -> (B, H, W, C)``, channels
  last, one layer of either kind (``partition_type="block"`` or ``"grid"``, as timm's
  ``PartitionAttentionCl``). Weights: ``qkv`` (one fused Linear ``C -> 3C``), ``proj`` and
  ``relative_position_bias_table`` ``((2P-1)^2, h)``, as timm's ``RelPosBias`` (checkpoints need
  converting: see Conventions).
* :func:`maxvit_pattern`: the boolean ``(N, N)`` mask, for tests and figures only. The library path
  never builds an ``N x N`` matrix: scores are ``(B * nW, h, T, T)``.

Equations (Sec. 3.2)
--------------------
Block attention: ``Block(x): (H, W, C) -> (H/P x W/P, P x P, C)``, self-attention inside each
non-overlapping ``P x P`` window (local). Grid attention: ``Grid(x): (H, W, C) -> (G x G, H/G x W/G, C)``
then swap the two token axes, so that each group has ``G x G`` pixels spread over the whole map with
stride ``H/G`` (dilated, global): pixel ``(i, j)`` joins group ``(i mod H/G, j mod W/G)``. Inside each
group, attention with a relative position bias, as Swin's Eq. (4):

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V

In the grid layer the bias is read at the pixels' positions *in the grid* (``i // (H/G)``), which is
what the official code does (it partitions first and then runs the same attention). A block layer
followed by a grid layer connects every pixel to every pixel: linear cost, global receptive field.

Conventions
-----------
* Both sides must be multiples of ``P`` (block) or ``G`` (grid), as in the official code, which
  asserts it; other sizes raise ``ValueError`` (MaxViT does not pad; Swin does).
* The official code (TensorFlow) and timm use ``P = G = 7`` in every stage; ``partition_size``
  sets both here, as in timm.
* Weights from timm: the names and shapes follow timm's ``PartitionAttentionCl`` with
  ``RelPosBias``, but no released timm MaxViT checkpoint loads as is. The ``*_tf_*`` ports of the
  official weights keep the table as ``(h, 2P-1, 2P-1)`` indexed by key minus query
  (``RelPosBiasTf``); our table is ``table.flip(1, 2).permute(1, 2, 0).reshape(-1, h)``. timm's own
  ``*_rw_*`` models use our table and index, but their fused ``qkv`` orders its output rows head
  first (``(h, 3, d)``, ``head_first=True``) where ours are ``(3, h, d)``: permute the rows of
  ``qkv.weight`` and ``qkv.bias`` before loading.

Shape legend
------------
    B   batch      h  heads     d  head dim     C = h * d channels
    H, W  map height and width   N = H * W     P  block side    G  grid side
    T   tokens per group (P * P or G * G)      nW  groups per image
"""

from __future__ import annotations

import functools

import torch

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
    grid_partition,
    group_attention,
    relative_position_bias,
    relative_position_index,
    to_groups,
)

__all__ = [
    "PARTITION_TYPES",
    "maxvit_groups",
    "maxvit_pattern",
    "maxvit_plan",
    "block_attention",
    "grid_attention",
    "MaxViTPartitionAttention2d",
    "maxvit_mixer",
]

PARTITION_TYPES = ("block", "grid")


def _check_partition(height, width, partition_type, partition_size) -> None:
    check_map_size(height, width)
    if partition_type not in PARTITION_TYPES:
        raise ValueError(f"partition_type must be one of {PARTITION_TYPES}, got {partition_type!r}")
    name = "window_size" if partition_type == "block" else "grid_size"
    check_positive_int(name, partition_size)
    if height % partition_size or width % partition_size:
        raise ValueError(
            f"{name} must divide the map's height and width (MaxViT does not pad), "
            f"got {name}={partition_size} for a {height} x {width} map"
        )


def maxvit_groups(height: int, width: int, partition_type: str = "block", partition_size: int = 7) -> torch.Tensor:
    """``(H, W)`` long: the group of each pixel; two pixels see each other iff equal.

    Block: the window ``(i // P, j // P)``. Grid: ``(i mod H/G, j mod W/G)``.
    """
    _check_partition(height, width, partition_type, partition_size)
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]  # (H, 1), (1, W)
    if partition_type == "block":
        P = partition_size
        return (rows // P) * (width // P) + cols // P  # (H, W)
    stride_h, stride_w = height // partition_size, width // partition_size  # H/G, W/G
    return (rows % stride_h) * stride_w + cols % stride_w  # (H, W)


def maxvit_pattern(height: int, width: int, partition_type: str = "block", partition_size: int = 7) -> torch.Tensor:
    """Boolean ``(N, N)``: True where pixel ``p`` attends to pixel ``q``. For tests and figures only."""
    groups = maxvit_groups(height, width, partition_type, partition_size).flatten()  # (N,)
    return groups[:, None] == groups[None, :]  # (N, N)


@functools.lru_cache(maxsize=64)
def maxvit_plan(height: int, width: int, partition_type: str, partition_size: int) -> GatherPlan:
    """The gather plan: :func:`block_partition` or :func:`grid_partition` of the token numbers."""
    _check_partition(height, width, partition_type, partition_size)
    tokens = torch.arange(height * width).view(height, width, 1)  # (H, W, 1)
    partition = block_partition if partition_type == "block" else grid_partition
    return gather_plan(partition(tokens, partition_size)[..., 0])  # groups (nW, T)


def _partition_attention(
    q, k, v, *, height, width, partition_type, partition_size, relative_position_bias_table, scale, fused
) -> torch.Tensor:
    B, h, h_kv, N, N_k, d = check_qkv(q, k, v)
    if h_kv != h or N_k != N:
        raise ValueError(
            f"q, k, v must have the same heads and tokens (self-attention), got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    _check_partition(height, width, partition_type, partition_size)
    if height * width != N:
        raise ValueError(f"q must have N = height * width = {height} * {width} = {height * width} tokens, got {N}")
    scale = resolve_scale(scale, d**-0.5)
    check_flag("fused", fused)
    plan = maxvit_plan(height, width, partition_type, partition_size)
    additive = None
    if relative_position_bias_table is not None:
        check_bias_table(relative_position_bias_table, h, partition_size, device=q.device)
        index = relative_position_index(partition_size, device=q.device)  # (T, T)
        compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        bias = relative_position_bias(relative_position_bias_table, index)  # (h, T, T)
        additive = additive_bias_and_mask(bias, None, h, compute_dtype, q.device)  # (1, h, T, T)

    def grouped(t):  # (B, h, N, d) -> (B, nW, h, T, d)
        return to_groups(t.transpose(1, 2).reshape(B, N, h * d), plan).unflatten(-1, (h, d)).transpose(2, 3)

    out = group_attention(grouped(q), grouped(k), grouped(v), scale=scale, additive=additive, fused=fused)
    out = from_groups(out.transpose(2, 3).flatten(-2), plan)  # (B, N, h*d)
    return out.view(B, N, h, d).transpose(1, 2).to(q.dtype)  # (B, h, N, d)


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    height: int,
    width: int,
    window_size: int = 7,
    relative_position_bias_table: torch.Tensor | None = None,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Block attention (Sec. 3.2): attention inside non-overlapping ``P x P`` windows.

    ``q, k, v: (B, h, N, d)``, ``N = height * width``; ``window_size`` ``P`` divides both sides;
    ``relative_position_bias_table``: ``((2P-1)^2, h)`` or None. Returns ``(B, h, N, d)``.
    """
    return _partition_attention(
        q, k, v, height=height, width=width, partition_type="block", partition_size=window_size,
        relative_position_bias_table=relative_position_bias_table, scale=scale, fused=fused,
    )  # fmt: skip


def grid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    height: int,
    width: int,
    grid_size: int = 7,
    relative_position_bias_table: torch.Tensor | None = None,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Grid attention (Sec. 3.2): attention inside ``G x G`` groups of pixels ``H/G`` apart (dilated).

    ``q, k, v: (B, h, N, d)``, ``N = height * width``; ``grid_size`` ``G`` divides both sides;
    ``relative_position_bias_table``: ``((2G-1)^2, h)``, read at positions in the grid. Returns ``(B, h, N, d)``.
    """
    return _partition_attention(
        q, k, v, height=height, width=width, partition_type="grid", partition_size=grid_size,
        relative_position_bias_table=relative_position_bias_table, scale=scale, fused=fused,
    )  # fmt: skip


class MaxViTPartitionAttention2d(GroupedAttention2d):
    """One MaxViT attention layer, block or grid, ``x: (B, H, W, C) -> (B, H, W, C)`` (channels last).

    The attention of timm's ``PartitionAttentionCl`` (without norm, MLP and residual): partition,
    ``qkv``, Eq. (4) per group, ``proj``, reverse. MaxViT stacks a block layer and a grid layer.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        partition_type: str = "block",
        partition_size: int = 7,
        qkv_bias: bool = True,
        fused: bool = True,
    ):
        if partition_type not in PARTITION_TYPES:
            raise ValueError(f"partition_type must be one of {PARTITION_TYPES}, got {partition_type!r}")
        check_positive_int("partition_size", partition_size)
        super().__init__(dim, num_heads, partition_size, qkv_bias=qkv_bias, fused=fused)
        self.partition_type, self.partition_size = partition_type, partition_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        B, H, W, C = x.shape
        plan = maxvit_plan(H, W, self.partition_type, self.partition_size)  # ValueError if P or G does not fit
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        bias = relative_position_bias(self.relative_position_bias_table, self.relative_position_index)  # (h, T, T)
        additive = additive_bias_and_mask(bias, None, self.num_heads, compute_dtype, x.device)  # (1, h, T, T)
        return self.attend_groups(x, plan, additive)  # block or grid partition; attention; reverse

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, partition_type={self.partition_type!r}, "
            f"partition_size={self.partition_size}"
        )


def maxvit_mixer(dim: int, num_heads: int, height: int, width: int) -> MaxViTPartitionAttention2d:
    """Registry factory: one grid layer (the global one), ``G = 7``, as MaxViT's every stage."""
    return MaxViTPartitionAttention2d(dim, num_heads, partition_type="grid", partition_size=7)
