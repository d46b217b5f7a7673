"""Tests for attnlib.approx.coat: factorized attention (Eq. (2)) and conv-attention (Eq. (5))."""

from __future__ import annotations

import pytest
import torch

from attnlib import registry
from attnlib.approx.coat import (
    CoaTMixer2d,
    ConvRelPosEnc,
    FactorAttConvRelPosEnc,
    conv_att_mixing_matrix,
    default_window,
    factorized_attention,
    make_mixer,
)
from attnlib.reference import attention


def loop_factorized(q, k, v, scale):
    """Eq. (2) the long way: out_i = scale * sum_n (sum_j q_ij softmax_n(k_:j)) v_n, for each head."""
    B, h, N, d = q.shape
    out = torch.zeros(B, h, q.shape[2], v.shape[3], dtype=q.dtype)
    for b in range(B):
        for head in range(h):
            exp_k = torch.exp(k[b, head])  # (N, d)
            softmax_k = exp_k / exp_k.sum(dim=0)  # column j: softmax over the tokens of key channel j
            for i in range(q.shape[2]):
                for n in range(N):
                    weight = sum(q[b, head, i, j] * softmax_k[n, j] for j in range(d))
                    out[b, head, i] += scale * weight * v[b, head, n]
    return out


def loop_conv_att(attn: FactorAttConvRelPosEnc, x, size, has_cls: bool):
    """Eq. (2)-(5) token by token: qkv, factorized term, depthwise-conv position term gated by q, proj."""
    H, W = size
    B, N, C = x.shape
    h, d = attn.num_heads, attn.head_dim
    prefix = 1 if has_cls else 0
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, N, 3C)
    q, k, v = (qkv[..., part * C : (part + 1) * C].reshape(B, N, h, d).transpose(1, 2) for part in range(3))
    factor = loop_factorized(q, k, v, attn.scale)  # (B, h, N, d)
    # which depthwise conv (and which of its channels) serves head `head`
    convs, first_head = [], 0
    for conv, heads in zip(attn.crpe.conv_list, attn.crpe.head_splits):
        for offset in range(heads):
            convs.append((conv, offset))
        first_head += heads
    heads_out = factor.clone()
    for b in range(B):
        for head in range(h):
            conv, offset = convs[head]
            r = conv.kernel_size[0] // 2
            for y in range(H):
                for xx in range(W):
                    i = prefix + y * W + xx
                    for c in range(d):
                        channel = offset * d + c
                        total = conv.bias[channel].clone()
                        for dy in range(-r, r + 1):
                            for dx in range(-r, r + 1):
                                if 0 <= y + dy < H and 0 <= xx + dx < W:
                                    j = prefix + (y + dy) * W + (xx + dx)
                                    total = total + conv.weight[channel, 0, dy + r, dx + r] * v[b, head, j, c]
                        heads_out[b, head, i, c] += q[b, head, i, c] * total  # EV^, gated by Q
    merged = heads_out.transpose(1, 2).reshape(B, N, C)
    return merged @ attn.proj.weight.T + attn.proj.bias


def make_qkv(B, h, N, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, N, d, generator=g, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("B, h, N, d", [(1, 1, 5, 3), (2, 3, 9, 4), (1, 2, 17, 2)])
def test_factorized_attention_equals_the_long_way(B, h, N, d):
    q, k, v = make_qkv(B, h, N, d)
    out = factorized_attention(q, k, v)
    torch.testing.assert_close(out, loop_factorized(q, k, v, d**-0.5), atol=1e-5, rtol=1e-5)
    explicit = d**-0.5 * (q @ k.softmax(dim=-2).transpose(-2, -1)) @ v  # (Q softmax(K)^T) V: the N x N product
    torch.testing.assert_close(out, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size, heads, window", [((3, 4), 3, None), ((2, 5), 2, {3: 1, 5: 1}), ((4, 4), 1, 3)])
def test_conv_attention_matches_loop_transcription(size, heads, window):
    torch.manual_seed(0)
    attn = FactorAttConvRelPosEnc(2 * heads, heads, window=window)
    x = torch.randn(2, 1 + size[0] * size[1], 2 * heads)
    torch.testing.assert_close(attn(x, size), loop_conv_att(attn, x, size, True), atol=1e-5, rtol=1e-5)


def test_mixer2d_without_and_with_class_token():
    torch.manual_seed(0)
    mixer = CoaTMixer2d(6, 3)
    x = torch.randn(2, 3, 4, 6)
    expected = loop_conv_att(mixer.attn, x.reshape(2, 12, 6), (3, 4), False).reshape(2, 3, 4, 6)
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-5)
    cls = torch.randn(2, 1, 6)
    out_map, out_cls = mixer(x, cls)
    joint = mixer.attn(torch.cat([cls, x.reshape(2, 12, 6)], dim=1), (3, 4))
    torch.testing.assert_close(out_map, joint[:, 1:].reshape(2, 3, 4, 6))
    torch.testing.assert_close(out_cls, joint[:, :1])


def test_class_token_gets_no_position_term_and_the_scale_is_on_the_factorized_term_only():
    torch.manual_seed(0)
    attn = FactorAttConvRelPosEnc(8, 2)
    x = torch.randn(1, 1 + 9, 8)
    q, k, v = attn.qkv_heads(x)
    crpe = attn.crpe(q, v, (3, 3))
    assert crpe[:, :, 0].abs().max().item() == 0.0 and crpe[:, :, 1:].abs().max().item() > 0
    heads = attn.mix_heads(x, (3, 3), 1)
    torch.testing.assert_close(heads[:, :, 0], factorized_attention(q, k, v)[:, :, 0])  # scaled factorized only
    torch.testing.assert_close(heads, attn.scale * factorized_attention(q, k, v, scale=1.0) + crpe)


def test_effective_mixing_matrices_reproduce_the_heads():
    torch.manual_seed(0)
    attn = FactorAttConvRelPosEnc(12, 3)
    x = torch.randn(2, 1 + 20, 12)
    factorized, position, offset = conv_att_mixing_matrix(attn, x, (4, 5))
    _, _, v = attn.qkv_heads(x)
    v = v.double()
    rebuilt = torch.einsum("bhij,bhjc->bhic", factorized, v) + torch.einsum("bhcij,bhjc->bhic", position, v) + offset
    torch.testing.assert_close(rebuilt, attn.mix_heads(x, (4, 5), 1).double(), atol=1e-5, rtol=1e-5)
    ranks = torch.linalg.matrix_rank(factorized)  # (B, h)
    assert int(ranks.max()) <= attn.head_dim  # rank <= d however many tokens
    assert position[..., 0, :].abs().max().item() == 0.0 and position[..., :, 0].abs().max().item() == 0.0


def test_factorized_term_is_permutation_equivariant_the_position_term_is_not():
    q, k, v = make_qkv(1, 2, 16, 4, seed=3)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    out = factorized_attention(q, k, v)
    torch.testing.assert_close(factorized_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm]), out[:, :, perm])
    torch.manual_seed(0)
    crpe = ConvRelPosEnc(4, 2, 3)
    positional = crpe(q, v, (4, 4), num_prefix_tokens=0)
    permuted = crpe(q[:, :, perm], v[:, :, perm], (4, 4), num_prefix_tokens=0)
    assert (permuted - positional[:, :, perm]).abs().max().item() > 0.1


def _tensors_with_two_dims_of_at_least(shapes, N):
    return [(op, s) for op, s in shapes if sum(size >= N for size in s) >= 2]


def test_no_n_by_n_tensor(record_shapes):
    torch.manual_seed(0)
    side = 16
    N = 1 + side * side
    attn = FactorAttConvRelPosEnc(32, 4)
    x = torch.randn(1, N, 32, requires_grad=True)
    with record_shapes() as recorder:
        attn(x, (side, side)).sum().backward()
    assert len(recorder.shapes) > 20
    assert any(N in s for _, s in recorder.shapes)  # the recorder saw the token axis
    assert _tensors_with_two_dims_of_at_least(recorder.shapes, N) == []
    assert x.grad is not None and attn.crpe.conv_list[0].weight.grad is not None


def test_the_shape_check_catches_the_n_by_n_products(record_shapes):
    """Not vacuous: the explicit (Q softmax(K)^T) V and softmax attention do form N x N."""
    q, k, v = make_qkv(1, 1, 300, 8)
    with record_shapes() as recorder:
        (q @ k.softmax(dim=-2).transpose(-2, -1)) @ v
    assert _tensors_with_two_dims_of_at_least(recorder.shapes, 300)
    with record_shapes() as recorder:
        attention(q, k, v)
    assert _tensors_with_two_dims_of_at_least(recorder.shapes, 300)


def test_default_window_reproduces_the_official_split():
    assert default_window(8) == {3: 2, 5: 3, 7: 3}
    assert default_window(3) == {3: 1, 5: 1, 7: 1}
    assert sum(default_window(5).values()) == 5


def test_gradcheck_float64():
    torch.manual_seed(0)
    attn = FactorAttConvRelPosEnc(4, 2).double()
    x = torch.randn(1, 1 + 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t, (2, 3)), (x,), fast_mode=True)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: FactorAttConvRelPosEnc(10, 3), ValueError, "dim must be divisible by num_heads, got dim=10"),
        (lambda: make_mixer(96, 5, 8, 8), ValueError, "dim must be divisible by num_heads"),
        (lambda: FactorAttConvRelPosEnc(8, 2)(torch.zeros(1, 2, 5, 8), (2, 2)), ValueError, "x must have 3 dim"),
        (lambda: FactorAttConvRelPosEnc(8, 2)(torch.zeros(1, 9, 8), (3, 3)), ValueError, r"1 \+ H\*W = 10 tokens"),
        (lambda: FactorAttConvRelPosEnc(8, 2)(torch.zeros(1, 10, 6), (3, 3)), ValueError, "C=8 channels"),
        (lambda: FactorAttConvRelPosEnc(8, 2)(torch.zeros(1, 10, 8), 9), ValueError, r"size must be a pair"),
        (lambda: FactorAttConvRelPosEnc(8, 2, window={3: 1}), ValueError, "must sum to num_heads=2"),
        (lambda: FactorAttConvRelPosEnc(8, 2, window={4: 2}), ValueError, "kernel sizes must be odd"),
        (lambda: CoaTMixer2d(8, 2)(torch.zeros(1, 9, 8)), ValueError, "x must have 4 dimensions"),
        (lambda: CoaTMixer2d(8, 2)(torch.zeros(1, 3, 3, 8), torch.zeros(1, 2, 8)), ValueError, "cls_token must"),
        (lambda: factorized_attention(torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 5, 3), torch.zeros(1, 2, 4, 3)),
         ValueError, "same number of tokens"),
        (lambda: factorized_attention(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)),
         ValueError, "q must have 4 dimensions"),
        (lambda: factorized_attention("q", None, None), TypeError, "q must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_registry_row():
    method = registry.get("coat")
    assert method.category == "approximation" and method.domain == "vision"
    mixer = method.mixer_factory()(96, 3, 7, 9)
    assert isinstance(mixer, CoaTMixer2d) and mixer.attn.crpe.window == {3: 1, 5: 1, 7: 1}
    assert mixer(torch.randn(2, 7, 9, 96)).shape == (2, 7, 9, 96)
    assert method.module_cls() is FactorAttConvRelPosEnc


def test_mixing_matrices_without_class_token():
    torch.manual_seed(0)
    attn = FactorAttConvRelPosEnc(8, 2)
    x = torch.randn(1, 12, 8)
    factorized, position, offset = conv_att_mixing_matrix(attn, x, (3, 4), num_prefix_tokens=0)
    _, _, v = attn.qkv_heads(x)
    v = v.double()
    rebuilt = torch.einsum("bhij,bhjc->bhic", factorized, v) + torch.einsum("bhcij,bhjc->bhic", position, v) + offset
    torch.testing.assert_close(rebuilt, attn.mix_heads(x, (3, 4), 0).double(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_prefix_tokens must be 0 or 1"):
        conv_att_mixing_matrix(attn, x, (3, 4), num_prefix_tokens=2)
