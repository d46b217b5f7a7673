"""Receptive fields of stacked window layers (chapters 01 Swin and 02 MaxViT, section 5).

Write layer l's pattern as a boolean matrix ``A_l`` (``A_l[p, q]``: output pixel p attends to input
pixel q). Layer 2's output at p depends on the layer-1 outputs r with ``A_2[p, r]``, and each of those
depends on the inputs q with ``A_1[r, q]``: after two layers the dependence is the boolean product
``A_2 A_1``, the last layer on the left. The reversed product ``A_1 A_2`` is its transpose (the
patterns are symmetric): its row p lists the outputs that input p reaches, which is also what an
output depends on in a stack that runs the layers in the other order. The chapters once composed
in that reversed order and printed the wrong counts.

The check is independent of the patterns: the non-zero pattern of the autograd Jacobian of a real
stack of the library's modules (random weights, float64) must equal the network-order product, and
must differ from the reversed one, so that composing in the wrong order fails here.
"""

from __future__ import annotations

import torch

from attnlib.sparse import maxvit, swin


def reach_after_each_layer(patterns: list[torch.Tensor], *, reversed_order: bool = False) -> list[torch.Tensor]:
    """Boolean ``(N, N)`` products after layer 1, 2, ...: ``A_l ... A_2 A_1`` (network order, the later
    layer on the left), or with ``reversed_order`` ``A_1 A_2 ... A_l`` (the earlier chapters' wrong
    ``reach = reach @ step``). ``patterns`` are in the order the layers run."""
    reach = patterns[0].float()  # (N, N): after the first layer
    products = [reach > 0]
    for pattern in patterns[1:]:
        reach = ((reach @ pattern.float()) if reversed_order else (pattern.float() @ reach)) > 0  # (N, N)
        products.append(reach)
        reach = reach.float()
    return products


def network_order_product(patterns: list[torch.Tensor]) -> torch.Tensor:
    """``A_L ... A_2 A_1`` as a boolean ``(N, N)`` matrix."""
    return reach_after_each_layer(patterns)[-1]


def reversed_product(patterns: list[torch.Tensor]) -> torch.Tensor:
    """``A_1 A_2 ... A_L``: the wrong order."""
    return reach_after_each_layer(patterns, reversed_order=True)[-1]


def jacobian_pattern(layers: list[torch.nn.Module], height: int, width: int, channels: int) -> torch.Tensor:
    """``(N, N)`` bool: True where output pixel p of the stack depends on input pixel q (autograd)."""
    torch.manual_seed(0)
    x = torch.randn(1, height, width, channels, dtype=torch.float64, requires_grad=True)  # (1, H, W, C)
    y = x
    for layer in layers:
        y = layer(y)  # (1, H, W, C)
    n = height * width
    # probe p puts weight 1 on every channel of output pixel p: one backward pass per output pixel
    probes = torch.eye(n, dtype=torch.float64).repeat_interleave(channels, 1).view(n, 1, height, width, channels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # n small backward passes: a second thread only waits (and spins on a busy machine)
    try:
        (jacobian,) = torch.autograd.grad(y, x, probes, is_grads_batched=True)  # (n, 1, H, W, C)
    finally:
        torch.set_num_threads(threads)
    return jacobian.view(n, n, channels).ne(0).any(-1)  # (n, n)


def swin_stack(side: int, shifts: list[int], *, channels: int = 4, heads: int = 2) -> list[torch.nn.Module]:
    torch.manual_seed(1)
    return [
        swin.SwinWindowAttention2d(channels, heads, window_size=7, shift_size=s).double().requires_grad_(False)
        for s in shifts
    ]


def least_reached_after_each_layer(patterns: list[torch.Tensor], *, reversed_order: bool = False) -> list[int]:
    return [int(reach.sum(-1).min()) for reach in reach_after_each_layer(patterns, reversed_order=reversed_order)]


def test_swin_stack_depends_on_its_input_through_the_network_order_product():
    side = 14
    layers = swin_stack(side, [0, 3])  # W-MSA, then SW-MSA, as in Swin
    patterns = [swin.swin_pattern(side, side, 7, 0), swin.swin_pattern(side, side, 7, 3)]
    jacobian = jacobian_pattern(layers, side, side, channels=4)
    assert torch.equal(jacobian, network_order_product(patterns))
    assert not torch.equal(jacobian, reversed_product(patterns)), "the reversed order must not pass this check"
    corner = 0  # pixel (0, 0): its SW-MSA group lies inside one W-MSA window
    assert int(jacobian[corner].sum()) == 49
    assert int(reversed_product(patterns)[corner].sum()) == 100


def test_swin_stack_that_starts_with_the_shifted_layer():
    """SW-MSA, then W-MSA: the Jacobian follows the order the layers run, not the order they are named."""
    side = 14
    layers = swin_stack(side, [3, 0])
    patterns = [swin.swin_pattern(side, side, 7, 3), swin.swin_pattern(side, side, 7, 0)]
    jacobian = jacobian_pattern(layers, side, side, channels=4)
    assert torch.equal(jacobian, network_order_product(patterns))
    assert not torch.equal(jacobian, reversed_product(patterns))
    assert int(jacobian[0].sum()) == 100  # pixel (0, 0): its window holds pixels of four SW-MSA groups


def test_maxvit_block_then_grid_depends_on_its_input_through_the_network_order_product():
    side, size = 12, 3  # H/G = 4 > P = 3: two layers do not reach every pixel, and the order matters
    torch.manual_seed(1)
    layers = [
        maxvit.MaxViTPartitionAttention2d(4, 2, partition_type=kind, partition_size=size).double().requires_grad_(False)
        for kind in ("block", "grid")
    ]
    patterns = [maxvit.maxvit_pattern(side, side, "block", size), maxvit.maxvit_pattern(side, side, "grid", size)]
    jacobian = jacobian_pattern(layers, side, side, channels=4)
    assert torch.equal(jacobian, network_order_product(patterns))
    assert not torch.equal(jacobian, reversed_product(patterns)), "the reversed order must not pass this check"


def test_swin_receptive_field_on_28x28_in_network_order():
    """The counts chapter 01 prints: the least-reaching pixel after each layer (W-MSA first)."""
    side = 28
    plain, shifted = swin.swin_pattern(side, side, 7, 0), swin.swin_pattern(side, side, 7, 3)
    patterns = [plain, shifted] * 3 + [plain]
    assert least_reached_after_each_layer(patterns) == [49, 49, 196, 196, 441, 441, 784]
    # the reversed composition printed these: the outputs one input reaches (in Swin's order)
    assert least_reached_after_each_layer(patterns, reversed_order=True) == [49, 100, 196, 289, 441, 576, 784]


def test_maxvit_reach_is_window_area_times_windows_touched_by_the_grid_group():
    """Block then grid: p reads its grid group, each member carrying its window (chapter 02)."""
    side, size = 56, 7  # MaxViT's first stage at a 224 x 224 input: H/G = 8 > P = 7
    block = maxvit.maxvit_pattern(side, side, "block", size)
    grid = maxvit.maxvit_pattern(side, side, "grid", size)
    after_block, after_grid, after_block_again = reach_after_each_layer([block, grid, block])  # each (N, N)
    window_of = maxvit.maxvit_groups(side, side, "block", size).flatten()  # (N,)
    grid_group_of = maxvit.maxvit_groups(side, side, "grid", size).flatten()  # (N,)
    touched = [window_of[grid_group_of == g].unique().numel() for g in range(int(grid_group_of.max()) + 1)]
    expected = torch.tensor([size * size * touched[g] for g in grid_group_of.tolist()])  # (N,)
    assert torch.equal(after_grid.sum(-1), expected)
    assert [int(r.sum(-1).min()) for r in (after_block, after_grid, after_block_again)] == [49, 2401, 3136]
