"""Tests for attnlib.approx.mixer: Eq. (1) of MLP-Mixer, its token mixer and its Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from attnlib import registry
from attnlib.approx.mixer import MixerBlock, TokenMixing, make_mixer, token_mixing_jacobian


def loop_gelu(h):
    return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))


def loop_layer_norm(row, weight, bias, eps=1e-6):
    mean = row.mean()
    var = ((row - mean) ** 2).mean()
    return (row - mean) / torch.sqrt(var + eps) * weight + bias


def loop_mixer_block(block: MixerBlock, x: torch.Tensor) -> torch.Tensor:
    """Eq. (1) column by column, then row by row, for each image of the batch."""
    B, H, W, C = x.shape
    S = H * W
    tok, chan = block.token_mixing.mlp, block.channel_mixing
    out = torch.empty(B, S, C)
    for b in range(B):
        X = x[b].reshape(S, C)
        normed = torch.stack([loop_layer_norm(X[j], block.norm1.weight, block.norm1.bias) for j in range(S)])
        U = torch.empty(S, C)
        for i in range(C):  # token mixing: one MLP over the S patches of channel i
            hidden = loop_gelu(tok.fc1.weight @ normed[:, i] + tok.fc1.bias)
            U[:, i] = X[:, i] + tok.fc2.weight @ hidden + tok.fc2.bias
        for j in range(S):  # channel mixing: one MLP over the C channels of patch j
            normed_u = loop_layer_norm(U[j], block.norm2.weight, block.norm2.bias)
            hidden = loop_gelu(chan.fc1.weight @ normed_u + chan.fc1.bias)
            out[b, j] = U[j] + chan.fc2.weight @ hidden + chan.fc2.bias
    return out.reshape(B, H, W, C)


def perturbed_block(*args, **kwargs) -> MixerBlock:
    torch.manual_seed(0)
    block = MixerBlock(*args, **kwargs)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))  # non-trivial norms and biases too
    return block


@pytest.mark.parametrize("H, W, C, D_S, D_C", [(2, 3, 4, 5, 6), (3, 3, 8, 2, 16), (1, 5, 6, None, None)])
def test_block_matches_loop_transcription(H, W, C, D_S, D_C):
    block = perturbed_block(C, H * W, D_S, D_C)
    x = torch.randn(2, H, W, C)
    torch.testing.assert_close(block(x), loop_mixer_block(block, x), atol=1e-5, rtol=1e-5)


def test_token_width_is_its_own_hyperparameter_with_timm_default():
    assert MixerBlock(8, 6, tokens_mlp_dim=3).token_mixing.mlp.fc1.weight.shape == (3, 6)  # W_1: (D_S, S)
    default = MixerBlock(8, 6)
    assert default.token_mixing.mlp.fc1.weight.shape == (4, 6)  # D_S = 0.5 C (timm)
    assert default.channel_mixing.fc1.weight.shape == (32, 8)  # D_C = 4 C
    assert (
        isinstance(default.token_mixing.mlp.act, torch.nn.GELU) and default.token_mixing.mlp.act.approximate == "none"
    )


def test_parameter_count_grows_linearly_with_tokens():
    for side in (4, 8, 16):
        S, D_S = side * side, 48
        count = sum(p.numel() for p in TokenMixing(S, D_S).parameters())
        assert count == 2 * S * D_S + S + D_S


def test_jacobian_is_the_linearization():
    torch.manual_seed(0)
    mixer = TokenMixing(6, 5)
    x = torch.randn(2, 2, 3, 4)
    J = token_mixing_jacobian(mixer, x)  # (B, C, S, S)
    full = jacobian(mixer, x).reshape(2, 6, 4, 2, 6, 4)  # [b, i, c, b', j, c']
    for b in range(2):
        for c in range(4):
            torch.testing.assert_close(J[b, c], full[b, :, c, b, :, c], atol=1e-5, rtol=1e-5)
    assert full[0, :, 0, 0, :, 1].abs().max().item() == 0.0  # channels do not mix
    delta = 1e-3 * torch.randn_like(x)
    linear = mixer(x) + torch.einsum("bcij,bjc->bic", J, delta.reshape(2, 6, 4)).reshape(x.shape)
    assert (mixer(x + delta) - linear).abs().max().item() < 1e-5


def test_token_mixing_is_not_permutation_equivariant_unless_the_weights_are_permuted():
    torch.manual_seed(0)
    mixer = TokenMixing(9, 6)
    x = torch.randn(1, 3, 3, 4)
    perm = torch.randperm(9)

    def permute(t):
        return t.reshape(1, 9, 4)[:, perm].reshape(1, 3, 3, 4)

    assert (mixer(permute(x)) - permute(mixer(x))).abs().max().item() > 0.1
    relabeled = TokenMixing(9, 6)  # the same weights with their token axes relabeled by perm
    with torch.no_grad():
        relabeled.mlp.fc1.weight.copy_(mixer.mlp.fc1.weight[:, perm])
        relabeled.mlp.fc1.bias.copy_(mixer.mlp.fc1.bias)
        relabeled.mlp.fc2.weight.copy_(mixer.mlp.fc2.weight[perm])
        relabeled.mlp.fc2.bias.copy_(mixer.mlp.fc2.bias[perm])
    torch.testing.assert_close(relabeled(permute(x)), permute(mixer(x)), atol=1e-6, rtol=1e-6)


def test_gradients_flow():
    block = MixerBlock(8, 12)
    x = torch.randn(2, 3, 4, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and block.token_mixing.mlp.fc1.weight.grad is not None


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: MixerBlock(8, 12)(torch.zeros(2, 12, 8)), ValueError, "x must have 4 dimensions"),
        (lambda: MixerBlock(8, 12)(torch.zeros(1, 4, 4, 8)), ValueError, r"16 patches.*num_patches=12"),
        (lambda: TokenMixing(12, 4)(torch.zeros(1, 2, 5, 8)), ValueError, r"10 patches.*num_patches=12"),
        (lambda: MixerBlock(8, 12)(torch.zeros(1, 3, 4, 6)), ValueError, "x must have C=8 channels"),
        (lambda: MixerBlock(8, 12, tokens_mlp_dim=0), ValueError, "mlp_dim must be a positive int, got 0"),
        (lambda: TokenMixing(0, 4), ValueError, "num_patches must be a positive int"),
        (lambda: MixerBlock(8, 12)("x"), TypeError, "x must be a torch.Tensor"),
        (lambda: token_mixing_jacobian(MixerBlock(8, 4), torch.zeros(1, 2, 2, 8)), TypeError, "TokenMixing"),
        (lambda: make_mixer(8, 2, 0, 4), ValueError, "height must be a positive int"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_registry_row_sizes_the_token_mlp():
    method = registry.get("mixer")
    assert method.category == "approximation" and method.domain == "vision"
    mixer = method.mixer_factory()(96, 3, 7, 9)
    assert isinstance(mixer, TokenMixing) and mixer.num_patches == 63
    assert mixer.mlp.fc1.weight.shape == (48, 63)
    assert mixer(torch.randn(2, 7, 9, 96)).shape == (2, 7, 9, 96)
    assert method.module_cls() is MixerBlock
