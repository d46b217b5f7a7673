"""Window helpers shared by Swin (``swin.py``) and MaxViT (``maxvit.py``).

Both methods cut the ``H x W`` feature map into groups of ``T = M * M`` pixels and run
ordinary softmax attention inside each group, with a learned relative position bias:

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V        (Swin, Eq. (4))

Swin and MaxViT's *block* attention group pixels that are next to each other (windows);
MaxViT's *grid* attention groups pixels spread over the whole map (a dilated grid).
The two partitions differ only in the order of two axes (see :func:`block_partition`
and :func:`grid_partition`). Chapters: "Swin" (chapters/*/01_swin.ipynb) and "MaxViT"
(chapters/*/02_maxvit.ipynb).

The relative position bias follows the official Swin code (``WindowAttention``): a table
``relative_position_bias_table`` of ``(2M - 1)^2`` rows and one column per head, read at
``relative_position_index[i, j] = (dy + M - 1) * (2M - 1) + (dx + M - 1)`` where
``(dy, dx)`` is the position of query ``i`` minus the position of key ``j`` inside the group.
timm's MaxViT (``maxxvit.py``, ``RelPosBias``) uses the same table and index.

The library path never builds an ``N x N`` matrix: the scores are ``(B * nW, h, T, T)``.
:func:`dense_biased_attention` and :func:`dense_relative_position_bias` *do* build it:
they are the test oracle and serve small figures.

Shape legend
------------
    B     batch                  h    heads          d   head dim      C = h * d channels
    H, W  map height and width   N = H * W tokens (row-major: token = row * W + col)
    M     group side (Swin window M, MaxViT block P or grid G)        T = M * M tokens per group
    nW    groups per image       Mt   window side the bias table was made for (Mt >= M)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor

__all__ = [
    "block_partition",
    "block_reverse",
    "grid_partition",
    "grid_reverse",
    "relative_position_index",
    "relative_position_bias",
    "GatherPlan",
    "gather_plan",
    "to_groups",
    "from_groups",
    "additive_bias_and_mask",
    "group_attention",
    "dense_relative_position_bias",
    "dense_biased_attention",
    "check_channels_last",
]


def block_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(..., H, W, C) -> (..., nW, M*M, C)``: non-overlapping ``M x M`` windows of neighbours.

    Window ``(a, b)`` (``nW = (H/M) * (W/M)`` of them, row-major) holds pixels
    ``(a*M + r, b*M + c)`` for ``0 <= r, c < M``. ``H`` and ``W`` must be multiples of ``M``.
    """
    *lead, H, W, C = x.shape
    M = window_size
    x = x.reshape(*lead, H // M, M, W // M, M, C)  # (..., H/M, M, W/M, M, C): (window row, r, window col, c)
    x = x.transpose(-4, -3)  # (..., H/M, W/M, M, M, C): the window's two axes first
    return x.reshape(*lead, (H // M) * (W // M), M * M, C)  # (..., nW, T, C)


def block_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`block_partition`: ``(..., nW, M*M, C) -> (..., H, W, C)``."""
    *lead, _, _, C = windows.shape
    M = window_size
    x = windows.reshape(*lead, height // M, width // M, M, M, C)  # (..., H/M, W/M, M, M, C)
    x = x.transpose(-4, -3)  # (..., H/M, M, W/M, M, C)
    return x.reshape(*lead, height, width, C)  # (..., H, W, C)


def grid_partition(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """``(..., H, W, C) -> (..., nW, G*G, C)``: ``G x G`` groups spread over the whole map.

    Pixel ``(i, j)`` joins group ``(i mod H/G, j mod W/G)`` at position ``(i // (H/G), j // (W/G))``
    inside it (MaxViT, Sec. 3.2; timm's ``grid_partition``). Compared with
    :func:`block_partition`, only the order of the two axes of each side is swapped:
    here the *outer* axis (size ``G``) is the position inside the group.
    """
    *lead, H, W, C = x.shape
    G = grid_size
    x = x.reshape(*lead, G, H // G, G, W // G, C)  # (..., G, H/G, G, W/G, C): (r, group row, c, group col)
    x = x.permute(*range(len(lead)), -4, -2, -5, -3, -1)  # (..., H/G, W/G, G, G, C)
    return x.reshape(*lead, (H // G) * (W // G), G * G, C)  # (..., nW, T, C)


def grid_reverse(groups: torch.Tensor, grid_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: ``(..., nW, G*G, C) -> (..., H, W, C)``."""
    *lead, _, _, C = groups.shape
    G = grid_size
    x = groups.reshape(*lead, height // G, width // G, G, G, C)  # (..., H/G, W/G, G, G, C)
    x = x.permute(*range(len(lead)), -3, -5, -2, -4, -1)  # (..., G, H/G, G, W/G, C)
    return x.reshape(*lead, height, width, C)  # (..., H, W, C)


def relative_position_index(window_size: int, table_window: int | None = None, device=None) -> torch.Tensor:
    """``(T, T)`` long: the row of the bias table for query ``i`` and key ``j`` of one ``M x M`` group.

    As the official Swin code: ``(dy + Mt - 1) * (2Mt - 1) + (dx + Mt - 1)`` with
    ``(dy, dx) = pos(i) - pos(j)``. ``table_window`` (``Mt``, default ``M``) is the window the
    table was made for; a smaller window (Swin clips it on small maps) reads a sub-square.
    """
    M = window_size
    Mt = M if table_window is None else table_window
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")).flatten(1)  # (2, T)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, T, T): query minus key
    index = (relative[0] + Mt - 1) * (2 * Mt - 1) + (relative[1] + Mt - 1)  # (T, T)
    return index.to(device)


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``B`` of Eq. (4): ``(h, T, T)`` from a ``((2Mt-1)^2, h)`` table and a ``(T, T)`` index."""
    T = index.shape[0]
    return table[index.reshape(-1)].reshape(T, T, -1).permute(2, 0, 1)  # (h, T, T)


def check_bias_table(table, num_heads: int, table_window: int, name: str = "relative_position_bias_table") -> None:
    """``table`` must be a float tensor ``((2Mt - 1)^2, num_heads)``."""
    check_tensor(name, table, ndim=2)
    rows = (2 * table_window - 1) ** 2
    if tuple(table.shape) != (rows, num_heads):
        raise ValueError(
            f"{name} must have shape ((2*{table_window}-1)^2, heads) = ({rows}, {num_heads}), got {tuple(table.shape)}"
        )


@dataclass(frozen=True)
class GatherPlan:
    """Where each slot of the groups reads its token, computed once per map size (and cached).

    ``slots``: ``(nW * T,)`` the row-major token of each slot of the groups laid end to end
    (padding slots read token 0: they are masked as keys and dropped as queries).
    ``real``: ``(nW * T,)`` False for padding slots. ``inverse``: ``(N,)`` the slot of each token.
    One ``index_select`` with ``slots`` does "pad, roll, partition"; one with ``inverse`` undoes it.
    """

    slots: torch.Tensor
    real: torch.Tensor
    inverse: torch.Tensor
    num_groups: int
    group_tokens: int


def gather_plan(groups: torch.Tensor) -> GatherPlan:
    """The :class:`GatherPlan` of ``groups``: ``(nW, T)`` long, the token number in each slot, -1 for padding.

    ``groups`` is the textbook partition (pad, roll, :func:`block_partition` or :func:`grid_partition`)
    applied once to the token *numbers* ``arange(N).view(H, W, 1)`` instead of to the features.
    """
    slots = groups.flatten()  # (nW * T,)
    real = slots >= 0  # (nW * T,)
    inverse = torch.empty(int(real.sum()), dtype=torch.long)  # (N,)
    inverse[slots[real]] = torch.nonzero(real).flatten()
    return GatherPlan(slots.clamp(min=0), real, inverse, groups.shape[0], groups.shape[1])


def to_groups(x: torch.Tensor, plan: GatherPlan) -> torch.Tensor:
    """``(B, N, C) -> (B, nW, T, C)``: one gather does pad, roll and partition."""
    grouped = x.index_select(1, plan.slots.to(x.device))  # (B, nW*T, C)
    return grouped.view(x.shape[0], plan.num_groups, plan.group_tokens, x.shape[-1])  # (B, nW, T, C)


def from_groups(groups: torch.Tensor, plan: GatherPlan) -> torch.Tensor:
    """``(B, nW, T, C) -> (B, N, C)``: one gather undoes :func:`to_groups` (and drops the padding)."""
    flat = groups.reshape(groups.shape[0], -1, groups.shape[-1])  # (B, nW*T, C)
    return flat.index_select(1, plan.inverse.to(groups.device))  # (B, N, C)


def additive_bias_and_mask(bias: torch.Tensor | None, blocked: torch.Tensor | None, num_heads: int, dtype, device):
    """``(nW, h, T, T)`` or ``(1, h, T, T)`` the term added to the scores: ``B`` of Eq. (4), and the
    lowest finite value where ``blocked`` (``(nW, T, T)``, True = may *not* attend) says so.

    The official Swin code adds -100 where it masks; the lowest finite value removes the pair
    exactly (``exp`` underflows to 0) and keeps a fully masked row finite (a padded query).
    """
    if bias is None:
        T = blocked.shape[-1]
        bias = torch.zeros(num_heads, T, T, dtype=dtype, device=device)  # (h, T, T)
    bias = bias.to(dtype)[None]  # (1, h, T, T)
    if blocked is None:
        return bias  # (1, h, T, T)
    return bias.masked_fill(blocked[:, None], torch.finfo(dtype).min)  # (nW, h, T, T)


def group_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    additive: torch.Tensor | None,
    fused: bool = True,
) -> torch.Tensor:
    """Softmax attention inside each group, Eq. (4): ``SoftMax(Q K^T * scale + B) V``.

    Args:
        q, k, v: ``(B, nW, h, T, d)``, the groups of every image.
        additive: ``(nW or 1, h, T, T)`` from :func:`additive_bias_and_mask`, or None.
        fused: PyTorch's fused ``scaled_dot_product_attention`` on ``(B*nW, h, T, d)`` (the
            fast path); False writes the softmax out (the textbook path). Same result.

    Returns ``(B, nW, h, T, d)``, in float32 for half-precision input (float64 stays float64).
    """
    B, nW, h, T, d = q.shape
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    if additive is not None:
        additive = additive.to(compute_dtype).expand(nW, h, T, T)  # (nW, h, T, T)
    if not fused:
        scores = (q * scale) @ k.transpose(-2, -1)  # (B, nW, h, T, T): only T x T per group
        if additive is not None:
            scores = scores + additive  # (B, nW, h, T, T)
        return torch.softmax(scores, dim=-1) @ v  # (B, nW, h, T, d)
    # The fused kernel takes 4-D input: (images x groups) is its batch axis, a view of the
    # projections (no copy); the term added to the scores must then be one contiguous
    # (B*nW, h, T, T) tensor (a broadcast one sends the kernel down a slower path).
    q, k, v = (t.reshape(B * nW, h, T, d) for t in (q, k, v))  # each (B*nW, h, T, d)
    if additive is not None:
        additive = additive.expand(B, nW, h, T, T).reshape(B * nW, h, T, T)  # (B*nW, h, T, T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale)  # (B*nW, h, T, d)
    return out.view(B, nW, h, T, d)  # (B, nW, h, T, d)


def dense_relative_position_bias(
    table: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, table_window: int
) -> torch.Tensor:
    """Test oracle: the ``(h, N, N)`` bias of every pair of pixels, from coordinates alone.

    ``rows``, ``cols``: ``(N,)`` the coordinates each pixel has *inside its group* frame (for a
    Swin window, the pixel's own row and column; for a MaxViT grid, ``i // (H/G)``). Pairs whose
    offset does not fit the table get 0 (they are masked by the pattern anyway).
    Builds ``N x N`` on purpose: for tests and small figures only.
    """
    Mt = table_window
    dy = rows[:, None] - rows[None, :]  # (N, N): query minus key
    dx = cols[:, None] - cols[None, :]  # (N, N)
    fits = (dy.abs() < Mt) & (dx.abs() < Mt)  # (N, N)
    index = ((dy + Mt - 1) * (2 * Mt - 1) + (dx + Mt - 1)).where(fits, torch.zeros_like(dy))  # (N, N)
    bias = table[index]  # (N, N, h)
    return bias.masked_fill(~fits[..., None], 0.0).permute(2, 0, 1)  # (h, N, N)


def dense_biased_attention(q, k, v, *, mask: torch.Tensor, bias: torch.Tensor, scale: float | None = None):
    """Test oracle: dense attention ``softmax(q k^T * scale + bias)`` with ``mask`` (True = may attend).

    ``attnlib.reference.attention`` has no additive bias; this is the same computation with one,
    in the same conventions (lowest finite score for masked pairs, fully masked rows give zeros).
    ``q, k, v: (B, h, N, d)``, ``mask: (N, N)``, ``bias: (h, N, N)``. Builds ``N x N`` on purpose.
    """
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1) + bias  # (B, h, N, N)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # (B, h, N, N)
    out = torch.softmax(scores, dim=-1) @ v  # (B, h, N, d)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # (B, h, N, d)


def check_channels_last(name: str, x, channels: int) -> None:
    """``x`` must be a ``(B, H, W, C)`` map with ``C == channels`` (channels last, as timm and Swin).

    A channels-first ``(B, C, H, W)`` tensor is refused with a message that says so, instead of
    being computed on the wrong axis.
    """
    check_tensor(name, x, ndim=4)
    if x.shape[-1] != channels:
        hint = ""
        if x.shape[1] == channels:
            hint = " (it looks channels-first (B, C, H, W); use x.permute(0, 2, 3, 1))"
        raise ValueError(
            f"{name} must be channels-last (B, H, W, C) with C = {channels}, got shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} must have at least one pixel, got shape {tuple(x.shape)}")


def check_map_size(height, width) -> None:
    check_positive_int("height", height)
    check_positive_int("width", width)
