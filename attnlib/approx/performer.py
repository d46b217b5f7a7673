"""Performer's FAVOR+: softmax attention estimated with positive orthogonal random features.

Choromanski et al., "Rethinking Attention with Performers", ICLR 2021, arXiv:2009.14794.
Released code: google-research/google-research, ``performer/fast_attention/jax/fast_attention.py``
(cited below as "the released code"). Chapter: "Linear attention, Performer and Linformer"
(chapters/*/16_linear_attention.ipynb).

Contract: :func:`performer_attention` has the signature of attnlib's kernels,
``f(q, k, v, *, causal=False, ...)`` on ``(B, H, N, d)`` tensors, and runs on the forms of
:mod:`attnlib.approx.linear` (the reordered product, or the chunked causal form) with the random
feature map below in place of ``elu + 1``.

The estimator (Lemma 1, Eq. 7 of the paper: the positive random features of the softmax kernel):

    SM(x, y) = exp(x^T y) = E_{w ~ N(0, I_d)} [ exp(w^T x - |x|^2/2) exp(w^T y - |y|^2/2) ]
    phi(x) = exp(W x - |x|^2/2) / sqrt(m),   W: (m, d) with rows w_1..w_m
    phi(x)^T phi(y) is an unbiased estimate of SM(x, y), with variance (Lemma 2)
        (1/m) exp(|x + y|^2) SM(x, y)^2 (1 - exp(-|x + y|^2))

Softmax attention's ``exp(q^T k / sqrt(d))`` is ``SM(q', k')`` for ``q' = q d^{-1/4}``,
``k' = k d^{-1/4}`` (the released code's ``data_normalizer``; here ``scale ** 0.5`` for any scale).
Every entry of ``phi(Q') phi(K')^T`` is then unbiased, so the numerator and the normalizer of
attention are each unbiased; their ratio, the output, is a consistent estimate (the error falls
as ``1 / sqrt(m)``), not an unbiased one.

Random features (:func:`gaussian_projection`): i.i.d. rows ``w ~ N(0, I_d)``, or orthogonal
random features (ORF, Sec. 2.4): blocks of ``d`` exactly orthogonal rows, each row's length
resampled as the norm of a fresh ``N(0, I_d)`` vector (chi with d degrees of freedom), as the
released code's ``GaussianOrthogonalRandomMatrix`` with ``scaling=0``. Each row is then still
``N(0, I_d)`` on its own (so the estimate stays unbiased) while the rows of a block are
orthogonal, which lowers the variance (Theorem 2). One difference from the released code: the QR
factor is made unique (signs of R's diagonal positive), which makes each block Haar-distributed
(Mezzadri, 2007); without it the directions are not exactly uniform. Draws are seeded: ``seed``
or ``generator``; "redrawing" the features (Sec. 4.2, done periodically during training) is
drawing a new projection (:meth:`PerformerSelfAttention.redraw`).

The stabilizer (the released code's ``nonnegative_softmax_kernel_feature_creator``): a constant
is subtracted inside the exponential before it is taken, per query row for queries and over all
keys of a head for keys. Both cancel in attention's ratio: a query's constant scales its numerator
and normalizer alike, the keys' constant scales every term of the sums alike. The released code
subtracts the max of ``W x``; here the max of ``W x - |x|^2/2`` (for a query row the two differ by
that row's own constant), so the largest feature is exactly ``1/sqrt(m)``, never all zeros, even
for logits in the hundreds. The released code also adds ``eps = 1e-4`` to every feature; here
``eps`` defaults to 0 (an exact estimate of the kernel) and a normalizer of exactly 0 gives a zero
row (:mod:`attnlib.approx.linear`). In the causal form the keys' constant is the max over all
keys of the sequence, as in the released code: a constant, so the outputs do not depend on later
tokens except through rounding.

Shape legend: B batch, H heads, N tokens, d head dimension, d_v value dimension, m random features.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from .._checks import (
    check_float_dtype,
    check_positive_int,
    check_qkv,
    check_real,
    check_tensor,
    resolve_scale,
)
from ..reference import GlobalSelfAttention2d, MultiHeadSelfAttention
from .linear import causal_linear_attention_chunked, linear_attention_noncausal, linear_attention_quadratic

_BLOCK = 512  # tokens per block of the non-causal passes: (512, m) features per head at a time

__all__ = [
    "gaussian_projection",
    "positive_random_features",
    "softmax_kernel_estimate",
    "performer_attention",
    "PerformerSelfAttention",
    "make_mixer",
]


def _generator(seed, generator, device) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if seed is not None:
            raise ValueError("give seed or generator, not both")
        return generator
    if seed is None:
        raise ValueError("seed must be an int (or give a generator): the random features are drawn, never implicitly")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)


def gaussian_projection(
    num_features: int,
    dim: int,
    *,
    orthogonal: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """The random matrix ``W: (m, d)`` of FAVOR+, each row marginally ``N(0, I_d)``.

    ``orthogonal=False``: i.i.d. Gaussian rows. ``orthogonal=True`` (ORF, Sec. 2.4): ``ceil(m / d)``
    independent blocks of ``d`` orthonormal rows (Haar: QR of a Gaussian matrix with the signs of
    R's diagonal made positive), the last block cut to the rows needed, each row then scaled by
    the norm of a fresh ``N(0, I_d)`` vector (chi-distributed), as the released code's
    ``GaussianOrthogonalRandomMatrix``. Drawn on the CPU in float64 from ``seed`` or ``generator``
    (the same numbers on every machine), then converted to ``dtype`` and moved to ``device``.
    """
    check_positive_int("num_features", num_features)
    check_positive_int("dim", dim)
    check_float_dtype("dtype", dtype)
    if not isinstance(orthogonal, bool):
        raise TypeError(f"orthogonal must be a bool, got {type(orthogonal).__name__} {orthogonal!r}")
    g = _generator(seed, generator, "cpu")
    m, d = num_features, dim
    if not orthogonal:
        W = torch.randn(m, d, generator=g, dtype=torch.float64)  # (m, d)
    else:
        gaussian = torch.randn(math.ceil(m / d), d, d, generator=g, dtype=torch.float64)  # (blocks, d, d)
        Q, R = torch.linalg.qr(gaussian)  # (blocks, d, d) each, one QR per block
        signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))  # (blocks, d)
        Q = Q * torch.where(signs == 0, 1.0, signs).unsqueeze(-2)  # Haar: the unique QR with diag(R) > 0
        directions = Q.transpose(-2, -1).reshape(-1, d)[:m]  # (m, d): each block's rows orthonormal
        norms = torch.randn(m, d, generator=g, dtype=torch.float64).norm(dim=1)  # (m,): chi with d degrees
        W = directions * norms[:, None]  # (m, d)
    return W.to(dtype=dtype, device=device)


def _check_projection(projection, d: int, device) -> None:
    check_tensor("projection", projection, ndim=2)
    if projection.shape[0] == 0:
        raise ValueError(
            f"projection must have at least one row (num_features >= 1), got shape {tuple(projection.shape)}"
        )
    if projection.shape[1] != d:
        raise ValueError(f"projection must be (m, d) with d = {d} (the head dimension), got {tuple(projection.shape)}")
    if projection.device != device:
        raise ValueError(f"projection must be on the device of q ({device}), got {projection.device}")


def _exponent(x: torch.Tensor, projection: torch.Tensor, root: float = 1.0, offset=0.0) -> torch.Tensor:
    """``W x' - |x'|^2 / 2 - offset`` for ``x' = root * x``, ``x: (..., n, d) -> (..., n, m)`` (x' never formed)."""
    wx = x @ (projection.to(x.dtype) * root).T  # (..., n, m)
    shift = (0.5 * root * root) * x.square().sum(-1, keepdim=True) + offset  # (..., n, 1)
    return wx.sub_(shift)  # in place on the matmul's output: its backward reads x and W, not the output


def positive_random_features(x: torch.Tensor, projection: torch.Tensor, *, offset=None) -> torch.Tensor:
    """Lemma 1: ``phi(x) = exp(W x - |x|^2/2 - offset) / sqrt(m)``, ``x: (..., n, d) -> (..., n, m)``.

    ``offset`` (None: 0) is the stabilizer's constant, broadcastable to ``(..., n, 1)``; with 0,
    ``phi(x)^T phi(y)`` is the unbiased estimate of ``exp(x^T y)``. No scaling of ``x`` here:
    :func:`performer_attention` multiplies q and k by ``scale ** 0.5`` (folded into ``W``).
    """
    check_tensor("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must be (..., n, d), got shape {tuple(x.shape)}")
    _check_projection(projection, x.shape[-1], x.device)
    return _key_map(x, projection, 1.0, offset)


def softmax_kernel_estimate(x: torch.Tensor, y: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The FAVOR+ estimate of ``exp(x^T y)``: ``phi(x) phi(y)^T``, ``(..., n, d), (..., n', d) -> (..., n, n')``."""
    return positive_random_features(x, projection) @ positive_random_features(y, projection).transpose(-2, -1)


def _query_map(x: torch.Tensor, projection: torch.Tensor, root: float) -> torch.Tensor:
    """Features of ``root * x`` (queries), stabilized per row: the largest feature of each row is ``1/sqrt(m)``."""
    exponent = _exponent(x, projection, root)  # (B, H, n, m)
    offset = exponent.amax(-1, keepdim=True).detach() + 0.5 * math.log(projection.shape[0])  # (B, H, n, 1)
    return exponent.sub_(offset).exp_()  # (B, H, n, m): the row's constant cancels in the ratio


def _key_map(x: torch.Tensor, projection: torch.Tensor, root: float, offset) -> torch.Tensor:
    """Features of ``root * x`` (keys): ``exp(W x' - |x'|^2/2 - offset) / sqrt(m)``, ``offset`` None for 0."""
    total = 0.5 * math.log(projection.shape[0]) + (0.0 if offset is None else offset)  # the 1/sqrt(m) inside exp
    return _exponent(x, projection, root, total).exp_()  # (B, H, n, m)


def _key_offset(k: torch.Tensor, projection: torch.Tensor, root: float, chunk: int = _BLOCK) -> torch.Tensor:
    """``max over keys and features of (W k' - |k'|^2/2)``, ``k' = root * k``, per head: ``(B, H, 1, 1)``."""
    best = None
    for start in range(0, k.shape[2], chunk):
        part = _exponent(k[:, :, start : start + chunk], projection, root).amax(dim=(-2, -1), keepdim=True)
        best = part if best is None else torch.maximum(best, part)
    return best


def performer_attention(
    q,
    k,
    v,
    *,
    causal=False,
    num_features=256,
    orthogonal=True,
    seed=None,
    generator=None,
    projection=None,
    scale=None,
    stabilize=True,
    eps=0.0,
    chunk_size=64,
    form="auto",
):
    """FAVOR+ attention: softmax attention estimated with ``m = num_features`` positive random features.

    ``q: (B, H, N_q, d)``, ``k: (B, H_kv, N_k, d)``, ``v: (B, H_kv, N_k, d_v)`` -> ``(B, H, N_q, d_v)``.
    The features come from ``projection`` (an ``(m, d)`` matrix, e.g. :func:`gaussian_projection`)
    or are drawn from ``seed`` / ``generator`` (i.i.d. or ``orthogonal``); every head and batch
    element shares one projection, as in the released code. ``scale`` (default ``1/sqrt(d)``)
    multiplies ``q^T k``: q and k are multiplied by ``scale ** 0.5``. ``stabilize`` subtracts the
    constants described in the module docstring (they cancel in the ratio). Non-causal: the
    reordered product; ``causal=True``: the chunked causal form of :mod:`attnlib.approx.linear`
    (prefix sums of ``phi(k) v^T`` passed between chunks of ``chunk_size``). ``form="quadratic"``
    materializes ``phi(Q) phi(K)^T`` (the N x N estimate of the kernel matrix), for figures and tests.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    if scale < 0:
        raise ValueError(f"scale must be non-negative (q and k are multiplied by sqrt(scale)), got {scale!r}")
    check_real("eps", eps, allow_zero=True)
    if not isinstance(stabilize, bool):
        raise TypeError(f"stabilize must be a bool, got {type(stabilize).__name__} {stabilize!r}")
    if form not in ("auto", "quadratic"):
        raise ValueError(f"form must be 'auto' or 'quadratic', got {form!r}")
    if projection is None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(
                f"num_features must be a positive int (the number m of random features), got {num_features!r}"
            )
        projection = gaussian_projection(
            num_features, d, orthogonal=orthogonal, seed=seed, generator=generator, device=q.device
        )  # (m, d)
    else:
        _check_projection(projection, d, q.device)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    projection = projection.to(dtype)
    root = math.sqrt(scale)  # exp(q.k scale) = SM(root q, root k); root is folded into W, q and k are not copied
    offset = None
    if stabilize:
        query_map = partial(_query_map, projection=projection, root=root)
        offset = _key_offset(k.to(dtype), projection, root).detach()  # (B, H_kv, 1, 1): a constant, no gradient
        if H_kv != H:
            offset = offset.repeat_interleave(H // H_kv, dim=1)  # (B, H, 1, 1), the heads as linear expands them
    else:
        query_map = partial(_key_map, projection=projection, root=root, offset=None)
    key_map = partial(_key_map, projection=projection, root=root, offset=offset)
    kw = dict(feature_map=query_map, key_feature_map=key_map, eps=eps)
    if form == "quadratic":
        return linear_attention_quadratic(q, k, v, causal=causal, **kw)
    if causal:
        return causal_linear_attention_chunked(q, k, v, chunk_size=chunk_size, **kw)
    return linear_attention_noncausal(q, k, v, chunk_size=_BLOCK, **kw)


class PerformerSelfAttention(MultiHeadSelfAttention):
    """Multi-head self-attention on FAVOR+, ``x: (B, N, C) -> (B, N, C)``, with its random features as a buffer.

    The projection ``(m, head_dim)`` is drawn at construction from ``seed`` and kept (a buffer: it
    moves with ``.to()`` and is saved in the state dict); :meth:`redraw` draws a new one, as the
    paper does periodically during training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_features: int = 256,
        orthogonal: bool = True,
        causal: bool = False,
        seed: int = 0,
        bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal=causal, bias=bias, attention_fn=self._attend)
        check_positive_int("num_features", num_features)
        self.num_features, self.orthogonal = num_features, orthogonal
        projection = gaussian_projection(num_features, self.head_dim, orthogonal=orthogonal, seed=seed)
        self.register_buffer("projection", projection)  # (m, head_dim)

    def _attend(self, q, k, v, *, causal=False):
        return performer_attention(q, k, v, causal=causal, projection=self.projection.to(q.device))

    @torch.no_grad()
    def redraw(self, *, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        """Draw new random features (same m, same kind) from ``seed`` or ``generator``."""
        new = gaussian_projection(
            self.num_features, self.head_dim, orthogonal=self.orthogonal, seed=seed, generator=generator
        )
        self.projection.copy_(new.to(self.projection.dtype))


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> GlobalSelfAttention2d:
    """Registry factory: global self-attention over a ``height x width`` map on FAVOR+ (m = 256, seed 0)."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    mixer = GlobalSelfAttention2d(dim, num_heads)
    mixer.attn = PerformerSelfAttention(dim, num_heads, num_features=256, seed=0)
    return mixer
