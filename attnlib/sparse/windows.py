"""Window helpers and the attention layer shared by Swin (``swin.py``) and MaxViT (``maxvit.py``).

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
timm's MaxViT (``maxxvit.py``, ``RelPosBias``) uses the same table and index (its ``*_tf_*`` ports
use another layout: see ``maxvit.py``).

:class:`GroupedAttention2d` is the layer both build on: ``qkv``, the bias table, attention inside
each group, ``proj``; Swin's layer adds the shift and its mask, MaxViT's the choice of partition.

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
from torch import nn

from .._checks import (
    check_batch,
    check_flag,
    check_heads,
    check_like_module,
    check_positive_int,
    check_tensor,
    resolve_scale,
)

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
    "GroupedAttention2d",
]


def _check_map_tensor(name: str, x) -> None:
    check_tensor(name, x, floating=False)
    if x.ndim < 3:
        raise ValueError(f"{name} must be (..., H, W, C), at least 3 dimensions, got shape {tuple(x.shape)}")


def _check_side_divides(name: str, size, height: int, width: int) -> None:
    check_positive_int(name, size)
    if height % size or width % size:
        raise ValueError(
            f"{name} must divide the map's height and width, got {name}={size} for a {height} x {width} map"
        )


def _check_groups_tensor(name: str, groups, size: int, height: int, width: int) -> None:
    """``groups`` must be ``(..., (H/M) * (W/M), M*M, C)`` for an ``H x W`` map and side ``M``."""
    check_tensor(name, groups, floating=False)
    check_map_size(height, width)
    _check_side_divides("window_size" if name == "windows" else "grid_size", size, height, width)
    count, tokens = (height // size) * (width // size), size * size
    if groups.ndim < 3 or tuple(groups.shape[-3:-1]) != (count, tokens):
        raise ValueError(
            f"{name} must have (height / {size}) * (width / {size}) = {count} groups of {size} * {size} = {tokens} "
            f"tokens for a {height} x {width} map, (..., {count}, {tokens}, C), got shape {tuple(groups.shape)}"
        )


def block_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(..., H, W, C) -> (..., nW, M*M, C)``: non-overlapping ``M x M`` windows of neighbours.

    Window ``(a, b)`` (``nW = (H/M) * (W/M)`` of them, row-major) holds pixels
    ``(a*M + r, b*M + c)`` for ``0 <= r, c < M``. ``H`` and ``W`` must be multiples of ``M``.
    """
    _check_map_tensor("x", x)
    *lead, H, W, C = x.shape
    _check_side_divides("window_size", window_size, H, W)
    M = window_size
    x = x.reshape(*lead, H // M, M, W // M, M, C)  # (..., H/M, M, W/M, M, C): (window row, r, window col, c)
    x = x.transpose(-4, -3)  # (..., H/M, W/M, M, M, C): the window's two axes first
    return x.reshape(*lead, (H // M) * (W // M), M * M, C)  # (..., nW, T, C)


def block_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`block_partition`: ``(..., nW, M*M, C) -> (..., H, W, C)``."""
    _check_groups_tensor("windows", windows, window_size, height, width)
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
    _check_map_tensor("x", x)
    *lead, H, W, C = x.shape
    _check_side_divides("grid_size", grid_size, H, W)
    G = grid_size
    x = x.reshape(*lead, G, H // G, G, W // G, C)  # (..., G, H/G, G, W/G, C): (r, group row, c, group col)
    x = x.permute(*range(len(lead)), -4, -2, -5, -3, -1)  # (..., H/G, W/G, G, G, C)
    return x.reshape(*lead, (H // G) * (W // G), G * G, C)  # (..., nW, T, C)


def grid_reverse(groups: torch.Tensor, grid_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: ``(..., nW, G*G, C) -> (..., H, W, C)``."""
    _check_groups_tensor("groups", groups, grid_size, height, width)
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
    check_positive_int("window_size", window_size)
    M = window_size
    Mt = M if table_window is None else table_window
    check_positive_int("table_window", Mt)
    if Mt < M:
        raise ValueError(f"table_window must be >= window_size ({M}), got {Mt}")
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")).flatten(1)  # (2, T)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, T, T): query minus key
    index = (relative[0] + Mt - 1) * (2 * Mt - 1) + (relative[1] + Mt - 1)  # (T, T)
    return index.to(device)


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``B`` of Eq. (4): ``(h, T, T)`` from a ``((2Mt-1)^2, h)`` table and a ``(T, T)`` index."""
    check_tensor("table", table, ndim=2)
    check_tensor("index", index, ndim=2, floating=False)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(
            f"index must be an integer tensor (torch.long, from relative_position_index), got {index.dtype}"
        )
    if index.shape[0] != index.shape[1]:
        raise ValueError(f"index must be a square (T, T) tensor, got shape {tuple(index.shape)}")
    if index.device != table.device:
        raise ValueError(f"index must be on the device of table ({table.device}), got {index.device}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= table.shape[0]:
        wrong = low if low < 0 else high
        raise ValueError(
            f"index reads row {wrong} of a table of {table.shape[0]} rows; "
            f"build it with relative_position_index(M, Mt) for the table's window Mt"
        )
    T = index.shape[0]
    return table[index.reshape(-1)].reshape(T, T, -1).permute(2, 0, 1)  # (h, T, T)


def check_bias_table(
    table, num_heads: int, table_window: int, name: str = "relative_position_bias_table", device=None
) -> None:
    """``table`` must be a float tensor ``((2Mt - 1)^2, num_heads)``, on ``device`` when given."""
    check_tensor(name, table, ndim=2)
    if device is not None and table.device != torch.device(device):
        raise ValueError(
            f"{name} must be on the device of q ({device}), got {table.device}; move it with .to(q.device)"
        )
    rows = (2 * table_window - 1) ** 2
    if tuple(table.shape) != (rows, num_heads):
        raise ValueError(
            f"{name} must have shape ((2*{table_window}-1)^2, heads) = ({rows}, {num_heads}), got {tuple(table.shape)}"
        )


@dataclass(frozen=True)
class GatherPlan:
    """Where each slot of the groups reads its token, computed once per map size (and cached).

    ``slots``: ``(nW * T,)`` the row-major token of each slot of the groups laid end to end
    (0 for a padding slot, which :func:`to_groups` then fills with zeros, as the textbook pad does).
    ``real``: ``(nW * T,)`` False for padding slots. ``inverse``: ``(N,)`` the slot of each token.
    One ``index_select`` with ``slots`` does "pad, roll, partition"; one with ``inverse`` undoes it.
    """

    slots: torch.Tensor
    real: torch.Tensor
    inverse: torch.Tensor
    num_groups: int
    group_tokens: int

    @property
    def num_tokens(self) -> int:
        """``N``: the tokens of the map the plan was made for."""
        return self.inverse.numel()

    @property
    def has_padding(self) -> bool:
        """Whether any slot is padding (``real`` is a small CPU tensor: no device round trip)."""
        return not bool(self.real.all())


def gather_plan(groups: torch.Tensor) -> GatherPlan:
    """The :class:`GatherPlan` of ``groups``: ``(nW, T)`` long, the token number in each slot, -1 for padding.

    ``groups`` is the textbook partition (pad, roll, :func:`block_partition` or :func:`grid_partition`)
    applied once to the token *numbers* ``arange(N).view(H, W, 1)`` instead of to the features.
    """
    check_tensor("groups", groups, floating=False)
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"groups must be an integer tensor (token numbers, -1 for padding), got {groups.dtype}")
    if groups.ndim != 2:
        raise ValueError(
            f"groups must be (nW, T): the token in each slot of each group, got shape {tuple(groups.shape)}"
        )
    slots = groups.flatten().long().cpu()  # (nW * T,)
    real = slots >= 0  # (nW * T,)
    tokens = slots[real]  # (N,)
    if tokens.numel() == 0 or not torch.equal(tokens.sort().values, torch.arange(tokens.numel())):
        raise ValueError(
            "groups must hold each token 0 .. N - 1 exactly once (and -1 for padding slots), "
            f"got {tokens.numel()} real slots holding {tokens.unique().numel()} distinct tokens"
        )
    inverse = torch.empty(tokens.numel(), dtype=torch.long)  # (N,)
    inverse[tokens] = torch.nonzero(real).flatten()
    return GatherPlan(slots.clamp(min=0), real, inverse, groups.shape[0], groups.shape[1])


def _check_plan(plan) -> None:
    if not isinstance(plan, GatherPlan):
        raise TypeError(
            f"plan must be a GatherPlan (from gather_plan, swin_plan or maxvit_plan), got {type(plan).__name__}"
        )


def to_groups(x: torch.Tensor, plan: GatherPlan) -> torch.Tensor:
    """``(B, N, C) -> (B, nW, T, C)``: one gather does pad, roll and partition.

    Padding slots hold zeros (as ``F.pad`` would), never a copy of a real token: a NaN or an
    infinity in one pixel stays in the groups that hold that pixel.
    """
    _check_plan(plan)
    check_tensor("x", x, ndim=3, floating=False)
    if x.shape[1] != plan.num_tokens:
        raise ValueError(
            f"x must have the N = {plan.num_tokens} tokens the plan was made for, got {x.shape[1]} "
            f"(shape {tuple(x.shape)}); make the plan for this map size"
        )
    grouped = x.index_select(1, plan.slots.to(x.device))  # (B, nW*T, C)
    if plan.has_padding:
        grouped.masked_fill_(~plan.real.to(x.device)[:, None], 0)  # (B, nW*T, C): padding slots read zeros
    return grouped.view(x.shape[0], plan.num_groups, plan.group_tokens, x.shape[-1])  # (B, nW, T, C)


def from_groups(groups: torch.Tensor, plan: GatherPlan) -> torch.Tensor:
    """``(B, nW, T, C) -> (B, N, C)``: one gather undoes :func:`to_groups` (and drops the padding)."""
    _check_plan(plan)
    check_tensor("groups", groups, ndim=4, floating=False)
    if tuple(groups.shape[1:3]) != (plan.num_groups, plan.group_tokens):
        raise ValueError(
            f"groups must be (B, nW, T, C) = (B, {plan.num_groups}, {plan.group_tokens}, C) for this plan, "
            f"got shape {tuple(groups.shape)}"
        )
    flat = groups.reshape(groups.shape[0], -1, groups.shape[-1])  # (B, nW*T, C)
    return flat.index_select(1, plan.inverse.to(groups.device))  # (B, N, C)


def additive_bias_and_mask(bias: torch.Tensor | None, blocked: torch.Tensor | None, num_heads: int, dtype, device):
    """``(nW, h, T, T)`` or ``(1, h, T, T)`` the term added to the scores: ``B`` of Eq. (4), and
    ``-inf`` where ``blocked`` (``(nW, T, T)``, True = may *not* attend) says so.

    The official Swin code adds -100 where it masks; ``-inf`` removes the pair exactly, as
    ``reference.attention`` does, even next to an allowed score that overflowed to ``-inf`` itself
    (a fill value like ``finfo.min`` would sit above it and take the whole weight).
    :func:`group_attention` reads every ``-inf`` entry as a mask (masked_fill, not addition).
    """
    if bias is None and blocked is None:
        raise ValueError("additive_bias_and_mask needs a bias or blocked (or no additive term: additive=None)")
    if bias is None:
        T = blocked.shape[-1]
        bias = torch.zeros(num_heads, T, T, dtype=dtype, device=device)  # (h, T, T)
    bias = bias.to(dtype)[None]  # (1, h, T, T)
    if blocked is None:
        return bias  # (1, h, T, T)
    return bias.masked_fill(blocked[:, None], float("-inf"))  # (nW, h, T, T)


def _check_groups_qkv(q, k, v, additive) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=5)
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must all be (B, nW, h, T, d) with one shape (self-attention inside each group), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if 0 in q.shape:
        raise ValueError(f"q, k, v must have no empty dimension (B, nW, h, T, d), got shape {tuple(q.shape)}")
    if additive is None:
        return
    B, nW, h, T, d = q.shape
    check_tensor("additive", additive, ndim=4)
    if additive.shape[0] not in (1, nW) or additive.shape[1] not in (1, h) or tuple(additive.shape[2:]) != (T, T):
        raise ValueError(
            f"additive must be (nW or 1, h or 1, T, T) = ({nW} or 1, {h} or 1, {T}, {T}), got {tuple(additive.shape)}"
        )
    if additive.device != q.device:
        raise ValueError(f"additive must be on the device of q ({q.device}), got {additive.device}")


def _exact_group_attention(q, k, v, scale: float, additive):
    """The softmax written out, with ``reference.attention``'s conventions.

    ``-inf`` entries of ``additive`` mask their pair with masked_fill (a NaN or infinite score of a
    masked pair is removed, not added to); a row with no finite score gets an output of zeros.
    """
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, nW, h, T, T): only T x T per group
    if additive is not None:
        scores = (scores + additive).masked_fill(additive == float("-inf"), float("-inf"))  # (B, nW, h, T, T)
    empty_row = scores.amax(dim=-1, keepdim=True) == float("-inf")  # (B, nW, h, T, 1): nothing to attend to
    probs = torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1)  # (B, nW, h, T, T)
    return (probs @ v).masked_fill(empty_row, 0.0)  # (B, nW, h, T, d)


def group_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    additive: torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Softmax attention inside each group, Eq. (4): ``SoftMax(Q K^T * scale + B) V``.

    Args:
        q, k, v: ``(B, nW, h, T, d)``, the groups of every image.
        scale: multiplies ``q k^T``; default ``d ** -0.5``.
        additive: ``(nW or 1, h or 1, T, T)`` from :func:`additive_bias_and_mask`, or None;
            ``-inf`` entries mask their pair.
        fused: PyTorch's fused ``scaled_dot_product_attention`` on ``(B*nW, h, T, d)`` (the
            fast path); False writes the softmax out (the textbook path). Same result.

    Returns ``(B, nW, h, T, d)``, in float32 for half-precision input (float64 stays float64).
    As ``reference.attention`` with the groups' mask: a row whose scores are all ``-inf`` (every
    score overflowed) gives zeros, and a NaN reaches only the rows that may attend to it.
    """
    _check_groups_qkv(q, k, v, additive)
    check_flag("fused", fused)
    B, nW, h, T, d = q.shape
    scale = resolve_scale(scale, d**-0.5)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    if additive is not None:
        additive = additive.to(compute_dtype).expand(nW, h, T, T)  # (nW, h, T, T)
    if not fused:
        return _exact_group_attention(q, k, v, scale, additive)
    # The fused kernel takes 4-D input: (images x groups) is its batch axis, a view of the
    # projections (no copy); the term added to the scores must then be one contiguous
    # (B*nW, h, T, T) tensor (a broadcast one sends the kernel down a slower path).
    q4, k4, v4 = (t.reshape(B * nW, h, T, d) for t in (q, k, v))  # each (B*nW, h, T, d)
    mask4 = None if additive is None else additive.expand(B, nW, h, T, T).reshape(B * nW, h, T, T)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask4, scale=scale)  # (B*nW, h, T, d)
    # The kernel *adds* the mask: a NaN or infinite score of a masked pair would stay NaN, and
    # kernels differ on rows whose scores are all -inf. Finite output (the usual case, checked in
    # one pass) is the exact answer; anything else is recomputed with the softmax written out.
    if not bool(torch.isfinite(out).all()):
        return _exact_group_attention(q, k, v, scale, additive)
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
    in the same conventions (masked pairs score ``-inf`` by masked_fill; a row with no finite
    score, every key masked or every allowed score ``-inf``, gives zeros).
    ``q, k, v: (B, h, N, d)``, ``mask: (N, N)``, ``bias: (h, N, N)``. Builds ``N x N`` on purpose.
    """
    d = q.shape[-1]
    scale = resolve_scale(scale, d**-0.5)
    scores = (q * scale) @ k.transpose(-2, -1) + bias  # (B, h, N, N)
    scores = scores.masked_fill(~mask, float("-inf"))  # (B, h, N, N)
    empty_row = scores.amax(dim=-1, keepdim=True) == float("-inf")  # (B, h, N, 1)
    out = torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1) @ v  # (B, h, N, d)
    return out.masked_fill(empty_row, 0.0)  # (B, h, N, d)


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


# --------------------------------------------------------------------------
# The layer Swin and MaxViT share
# --------------------------------------------------------------------------


class GroupedAttention2d(nn.Module):
    """Multi-head attention inside groups of ``T = M * M`` pixels with a relative position bias, ``(B, H, W, C)``.

    What Swin's ``SwinWindowAttention2d`` and MaxViT's ``MaxViTPartitionAttention2d`` share: the
    parameters (named as in the official codes, so that their state dicts load:
    ``relative_position_bias_table`` of ``((2M - 1)^2, h)``, ``qkv``, ``proj``) and the path
    partition -> ``qkv`` -> Eq. (4) per group -> ``proj`` -> reverse (:meth:`attend_groups`). A
    subclass chooses the groups (a :class:`GatherPlan`) and the additive bias and mask.
    """

    def __init__(self, dim: int, num_heads: int, group_side: int, *, qkv_bias: bool, fused: bool):
        super().__init__()
        check_heads(dim, num_heads)
        check_flag("qkv_bias", qkv_bias)
        check_flag("fused", fused)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused = fused  # PyTorch's fused kernel inside the groups; False: the softmax written out
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * group_side - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(group_side), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def check_input(self, x: torch.Tensor) -> None:
        """``x: (B, H, W, C)`` channels last with ``C = dim``, one image or more, in the weights' dtype and device."""
        check_channels_last("x", x, self.dim)
        check_batch("x", x)
        check_like_module("x", x, self)

    def attend_groups(self, x: torch.Tensor, plan: GatherPlan, additive: torch.Tensor | None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``: attention in the groups of ``plan``, ``additive: (nW or 1, h, T, T)``."""
        B, H, W, C = x.shape
        groups = to_groups(x.reshape(B, H * W, C), plan)  # (B, nW, T, C): partition (and pad, roll)
        nW, T = groups.shape[1], groups.shape[2]
        qkv = self.qkv(groups).view(B, nW, T, 3, self.num_heads, self.head_dim)  # (B, nW, T, 3, h, d)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, h, T, d)
        out = group_attention(q, k, v, scale=self.scale, additive=additive, fused=self.fused)  # (B, nW, h, T, d)
        out = self.proj(out.to(x.dtype).transpose(2, 3).reshape(B, nW, T, C))  # (B, nW, T, C)
        return from_groups(out, plan).view(B, H, W, C)  # (B, H, W, C): reverse (and roll back, crop)
