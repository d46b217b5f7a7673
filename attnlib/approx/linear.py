"""Linear attention: softmax's kernel replaced by a feature map, the product reordered.

Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", ICML 2020, arXiv:2006.16236. Chapter: "Linear attention, Performer and
Linformer" (chapters/*/16_linear_attention.ipynb).

Contract: every attention function here has the signature of the other kernels of attnlib,
``f(q, k, v, *, causal=False, ...)`` on ``q: (B, H, N_q, d)``, ``k: (B, H_kv, N_k, d)``,
``v: (B, H_kv, N_k, d_v)`` (``H_kv`` dividing ``H``), and returns ``(B, H, N_q, d_v)`` in the
dtype of ``q`` (half precision is computed in float32). The equations (Sec. 3.2 and 3.3 of the
paper), for a similarity ``sim(q, k) = phi(q)^T phi(k)`` with a feature map ``phi: R^d -> R^m``:

    V'_i = sum_j sim(Q_i, K_j) V_j / sum_j sim(Q_i, K_j)                     (Eq. 2; softmax: sim = exp(q.k/sqrt d))
         = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / phi(Q_i)^T (sum_j phi(K_j))   (Eq. 4-5)
    (phi(Q) phi(K)^T) V = phi(Q) (phi(K)^T V)                                (Eq. 6: O(N m d) instead of O(N^2 d))
    phi(x) = elu(x) + 1                                                      (Eq. 7)

    causal:  S_i = S_{i-1} + phi(K_i) V_i^T,  z_i = z_{i-1} + phi(K_i),
             V'_i = phi(Q_i)^T S_i / phi(Q_i)^T z_i                          (Eq. 9-12; the RNN of Sec. 3.4)

The three forms of the causal case, one signature, equal up to rounding (the tests hold them
within 1e-10 in float64):

* :func:`linear_attention_quadratic`: the kernel matrix ``phi(Q) phi(K)^T`` (N x N), masked and
  normalized. The readable reference; O(N^2) memory.
* :func:`causal_linear_attention_recurrent`: the recurrence over a ``(m, d_v)`` state ``S`` and a
  normalizer ``z``, one token at a time; :func:`linear_attention_step` is one step of it, for
  decoding with constant memory (:class:`LinearAttentionState`).
* :func:`causal_linear_attention_chunked`: quadratic inside a chunk of ``chunk_size`` tokens, the
  state passed from chunk to chunk (any N: the last chunk may be shorter). The fast form.

``normalize=False`` drops the denominator: ``V'_i = sum_{j <= i} phi(Q_i)^T phi(K_j) V_j``. With
``feature_map=None`` (identity) that is a state-space model's scan with decay 1 (Mamba-2's SSD
with ``A = 0``: ``C = q``, ``B = k``, ``x = v``), which is what a state-space module can be tested
against. The normalizer is ``phi(Q_i)^T z_i + eps``, with ``eps = 1e-6`` as in the authors'
library (fast-transformers); a normalizer of exactly 0 (features that underflowed) gives an output
row of zeros, never NaN.

Feature maps are applied token by token (``phi(x)`` of a ``(..., n, d)`` block is ``(..., n, m)``),
and a separate ``key_feature_map`` may be given: Performer (:mod:`attnlib.approx.performer`) maps
queries and keys with different stabilizers. The fast forms apply them one chunk at a time, so no
``(N, m)`` feature tensor of the whole sequence is held: beyond ``q, k, v`` and the output, memory
is O(chunk^2 + m d_v) per head.

Shape legend: B batch, H query heads, H_kv key/value heads, N tokens (N_q queries, N_k keys),
d head dimension of q and k, d_v of v, m features of phi, C chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from .._checks import check_flag, check_positive_int, check_qkv, check_real
from ..reference import GlobalSelfAttention2d, MultiHeadSelfAttention, expand_kv_heads

__all__ = [
    "elu_feature_map",
    "linear_attention",
    "linear_attention_quadratic",
    "linear_attention_noncausal",
    "causal_linear_attention_recurrent",
    "causal_linear_attention_chunked",
    "LinearAttentionState",
    "linear_attention_step",
    "FORMS",
    "LinearSelfAttention",
    "make_mixer",
]

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
FORMS = ("auto", "quadratic", "recurrent", "chunked")
DEFAULT_EPS = 1e-6  # fast-transformers' LinearAttention and CausalLinearAttention


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Eq. (7): ``phi(x) = elu(x) + 1``, ``(..., d) -> (..., d)`` (so ``m = d``): ``x + 1`` above 0, ``exp(x)`` below.

    Computed as ``exp(min(x, 0)) + max(x, 0)``, the same function: ``elu(x) + 1`` computes
    ``(exp(x) - 1) + 1``, which rounds to exactly 0 below x = -17 in float32 (-37 in float64);
    ``exp(x)`` stays positive down to -103 (-745). ``exp`` reads ``min(x, 0)``, so it never
    overflows (an infinity there would make the gradient NaN).
    """
    return x.clamp(max=0.0).exp_() + x.relu()  # exp_ in place on clamp's output: clamp's backward reads x


# --------------------------------------------------------------------------
# Checks and the pieces every form shares
# --------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare(q, k, v, causal, normalize, eps, feature_map, key_feature_map):
    """Validate the common arguments; ``(q, k, v, phi_q, phi_k, eps)``, heads expanded, in the compute dtype."""
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    check_flag("causal", causal)
    check_flag("normalize", normalize)
    check_real("eps", eps, allow_zero=True)
    if causal and N_q != N_k:
        raise ValueError(
            f"causal linear attention needs as many queries as keys (token i sees keys 0..i), got N_q={N_q}, "
            f"N_k={N_k}; to decode one token after a prefix use linear_attention_step"
        )
    phi_q = (lambda x: x) if feature_map is None else feature_map
    if not callable(phi_q):
        raise TypeError(f"feature_map must be callable or None (identity), got {type(feature_map).__name__}")
    phi_k = phi_q if key_feature_map is None else key_feature_map
    if not callable(phi_k):
        raise TypeError(f"key_feature_map must be callable or None (the feature_map), got {type(phi_k).__name__}")
    dtype = _compute_dtype(q)
    k = expand_kv_heads(k, H).to(dtype)  # (B, H, N_k, d)
    v = expand_kv_heads(v, H).to(dtype)  # (B, H, N_k, d_v)
    return q.to(dtype), k, v, phi_q, phi_k, float(eps)


def _features(name: str, fn: FeatureMap, x: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """``fn(x)`` for a ``(B, H, n, d)`` block, checked: ``(B, H, n, m)``, finite dtype of ``x``, ``m`` as before."""
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape[:-1] != x.shape[:-1] or out.ndim != x.ndim:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must map (..., n, d) to (..., n, m) token by token, got {got} for {tuple(x.shape)}")
    if out.shape[-1] == 0:
        raise ValueError(f"{name} must give at least one feature (m >= 1), got shape {tuple(out.shape)}")
    if m is not None and out.shape[-1] != m:
        raise ValueError(f"{name} must give the same number of features m for every block, got {out.shape[-1]} and {m}")
    return out.to(x.dtype)


def _normalized(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """``num / (den + eps)`` for ``num: (..., n, d_v)``, ``den: (..., n)``; a row where ``den + eps == 0`` is zeros."""
    den = (den + eps).unsqueeze(-1)  # (..., n, 1)
    empty = den == 0
    return torch.where(empty, 0.0, num / torch.where(empty, 1.0, den))  # (..., n, d_v)


def _finish(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return out.to(q.dtype)


# --------------------------------------------------------------------------
# (a) The reference: the kernel matrix, masked
# --------------------------------------------------------------------------


def linear_attention_quadratic(
    q, k, v, *, causal=False, feature_map=elu_feature_map, key_feature_map=None, normalize=True, eps=DEFAULT_EPS
):
    """Eq. (4) (and Eq. 9 when ``causal``) as written: ``A = phi(Q) phi(K)^T`` (N_q x N_k), masked, normalized.

    ``out_i = sum_j A_ij V_j / (sum_j A_ij + eps)`` over ``j <= i`` when ``causal``. Materializes
    the ``(B, H, N_q, N_k)`` kernel matrix: the oracle of the other forms, and the picture of the
    chapter; not for long sequences.
    """
    q_in = q
    q, k, v, phi_q, phi_k, eps = _prepare(q, k, v, causal, normalize, eps, feature_map, key_feature_map)
    fq = _features("feature_map", phi_q, q)  # (B, H, N_q, m)
    fk = _features("key_feature_map", phi_k, k, fq.shape[-1])  # (B, H, N_k, m)
    A = fq @ fk.transpose(-2, -1)  # (B, H, N_q, N_k): sim(Q_i, K_j)
    if causal:
        A = A.tril()  # keys j <= i (N_q == N_k)
    num = A @ v  # (B, H, N_q, d_v)
    out = _normalized(num, A.sum(-1), eps) if normalize else num
    return _finish(out, q_in)


# --------------------------------------------------------------------------
# Non-causal: the product reordered (Eq. 5-6)
# --------------------------------------------------------------------------


def linear_attention_noncausal(
    q, k, v, *, feature_map=elu_feature_map, key_feature_map=None, normalize=True, eps=DEFAULT_EPS, chunk_size=1024
):
    """Eq. (5)-(6): ``phi(Q) (phi(K)^T V)`` over the normalizer ``phi(Q) (phi(K)^T 1)``, O(N m d_v).

    Two passes over blocks of ``chunk_size`` tokens (the same numbers as one pass over all of
    them, summed in another order): first the ``(m, d_v)`` sum ``S = phi(K)^T V`` and the ``(m,)``
    sum ``z = phi(K)^T 1`` over the keys, then each block of queries reads them. No ``(N, m)``
    feature tensor of the whole sequence is held.
    """
    q_in = q
    q, k, v, phi_q, phi_k, eps = _prepare(q, k, v, False, normalize, eps, feature_map, key_feature_map)
    check_positive_int("chunk_size", chunk_size)
    S = z = None
    for start in range(0, k.shape[2], chunk_size):
        fk = _features("key_feature_map", phi_k, k[:, :, start : start + chunk_size])  # (B, H, n, m)
        vs = v[:, :, start : start + chunk_size]  # (B, H, n, d_v)
        S_part, z_part = fk.transpose(-2, -1) @ vs, fk.sum(-2)  # (B, H, m, d_v), (B, H, m)
        if S is not None and S_part.shape != S.shape:
            raise ValueError(f"key_feature_map must give the same number of features m for every block, got "
                             f"{S_part.shape[-2]} and {S.shape[-2]}")  # fmt: skip
        S, z = (S_part, z_part) if S is None else (S + S_part, z + z_part)
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, N_q, d_v)
    for start in range(0, q.shape[2], chunk_size):
        fq = _features("feature_map", phi_q, q[:, :, start : start + chunk_size], S.shape[-2])  # (B, H, n, m)
        num = fq @ S  # (B, H, n, d_v), Eq. (5) numerator
        if normalize:
            num = _normalized(num, (fq @ z.unsqueeze(-1)).squeeze(-1), eps)  # Eq. (5) denominator
        out[:, :, start : start + chunk_size] = num
    return _finish(out, q_in)


# --------------------------------------------------------------------------
# (b) Causal: the recurrence, and one step of it for decoding
# --------------------------------------------------------------------------


@dataclass
class LinearAttentionState:
    """The RNN state of causal linear attention after ``t`` tokens (Sec. 3.4 of the paper).

    ``S: (B, H, m, d_v)`` is ``sum_{j <= t} phi(K_j) V_j^T`` and ``z: (B, H, m)`` is
    ``sum_{j <= t} phi(K_j)``. Its size does not grow with ``t``: decoding keeps this instead of
    a KV cache of ``2 t d`` numbers per head.
    """

    S: torch.Tensor
    z: torch.Tensor
    tokens: int = 0

    def numel(self) -> int:
        """Numbers held: ``B H m (d_v + 1)``, the same after 10 tokens as after 10,000."""
        return self.S.numel() + self.z.numel()

    @classmethod
    def zeros(cls, B: int, H: int, m: int, d_v: int, *, dtype=torch.float32, device=None) -> LinearAttentionState:
        return cls(
            torch.zeros(B, H, m, d_v, dtype=dtype, device=device), torch.zeros(B, H, m, dtype=dtype, device=device)
        )


def _check_state(state, B, H, m, d_v, dtype, device) -> None:
    if not isinstance(state, LinearAttentionState):
        raise TypeError(f"state must be a LinearAttentionState or None, got {type(state).__name__}")
    if tuple(state.S.shape) != (B, H, m, d_v) or tuple(state.z.shape) != (B, H, m):
        raise ValueError(
            f"state must hold S: (B, H, m, d_v) = {(B, H, m, d_v)} and z: (B, H, m) = {(B, H, m)}, "
            f"got S {tuple(state.S.shape)} and z {tuple(state.z.shape)}"
        )
    if state.S.device != device:
        raise ValueError(f"state must be on the device of q ({device}), got {state.S.device}")


def causal_linear_attention_recurrent(
    q, k, v, *, causal=True, feature_map=elu_feature_map, key_feature_map=None, normalize=True, eps=DEFAULT_EPS
):
    """Eq. (10)-(12), the RNN of Sec. 3.4: one token at a time, a ``(m, d_v)`` state and a ``(m,)`` normalizer.

    ``S_i = S_{i-1} + phi(K_i) V_i^T``, ``z_i = z_{i-1} + phi(K_i)``,
    ``out_i = phi(Q_i)^T S_i / (phi(Q_i)^T z_i + eps)``. A Python loop over N: the test oracle of
    the chunked form and the definition of :func:`linear_attention_step`, not a fast path.
    ``causal`` must be True (it is in the signature so that the form can stand in for any kernel).
    """
    if causal is not True:
        raise ValueError(f"causal_linear_attention_recurrent computes the causal form only: causal must be True, "
                         f"got {causal!r} (use linear_attention_noncausal)")  # fmt: skip
    q_in = q
    q, k, v, phi_q, phi_k, eps = _prepare(q, k, v, True, normalize, eps, feature_map, key_feature_map)
    fq = _features("feature_map", phi_q, q)  # (B, H, N, m)
    fk = _features("key_feature_map", phi_k, k, fq.shape[-1])  # (B, H, N, m)
    B, H, N, m = fq.shape
    state = LinearAttentionState.zeros(B, H, m, v.shape[-1], dtype=fq.dtype, device=fq.device)
    outs = []
    for i in range(N):
        out, state = _step(fq[:, :, i], fk[:, :, i], v[:, :, i], state, normalize, eps)  # out: (B, H, d_v)
        outs.append(out)
    return _finish(torch.stack(outs, dim=2), q_in)  # (B, H, N, d_v)


def _step(fq, fk, v, state: LinearAttentionState, normalize: bool, eps: float):
    """One token: ``fq, fk: (B, H, m)``, ``v: (B, H, d_v)`` -> ``(out: (B, H, d_v), new state)``."""
    S = state.S + fk.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, m, d_v): S_i = S_{i-1} + phi(K_i) V_i^T
    z = state.z + fk  # (B, H, m): z_i = z_{i-1} + phi(K_i)
    num = (fq.unsqueeze(-2) @ S).squeeze(-2)  # (B, H, d_v): phi(Q_i)^T S_i
    if normalize:
        num = _normalized(num.unsqueeze(-2), (fq * z).sum(-1, keepdim=True), eps).squeeze(-2)  # (B, H, d_v)
    return num, LinearAttentionState(S, z, state.tokens + 1)


def linear_attention_step(
    q_t, k_t, v_t, state=None, *, feature_map=elu_feature_map, key_feature_map=None, normalize=True, eps=DEFAULT_EPS
):
    """One decoding step of causal linear attention: ``(out_t, new_state)``, constant memory per token.

    ``q_t: (B, H, 1, d)``, ``k_t: (B, H_kv, 1, d)``, ``v_t: (B, H_kv, 1, d_v)`` (the new token);
    ``state`` from the previous step (None: empty, before the first token). ``out_t: (B, H, 1, d_v)``
    equals row ``t`` of the parallel causal forms. The state is kept in float32 (float64 for float64).
    """
    check_qkv(q_t, k_t, v_t)
    if q_t.shape[2] != 1 or k_t.shape[2] != 1:
        raise ValueError(f"linear_attention_step takes one token: q_t and k_t must have N=1 in dim 2, got "
                         f"q_t {tuple(q_t.shape)}, k_t {tuple(k_t.shape)}")  # fmt: skip
    q, k, v, phi_q, phi_k, eps = _prepare(q_t, k_t, v_t, True, normalize, eps, feature_map, key_feature_map)
    fq = _features("feature_map", phi_q, q)[:, :, 0]  # (B, H, m)
    fk = _features("key_feature_map", phi_k, k, fq.shape[-1])[:, :, 0]  # (B, H, m)
    B, H, m = fq.shape
    if state is None:
        state = LinearAttentionState.zeros(B, H, m, v.shape[-1], dtype=fq.dtype, device=fq.device)
    _check_state(state, B, H, m, v.shape[-1], fq.dtype, fq.device)
    state = LinearAttentionState(state.S.to(fq.dtype), state.z.to(fq.dtype), state.tokens)
    out, state = _step(fq, fk, v[:, :, 0], state, normalize, eps)
    return out.unsqueeze(2).to(q_t.dtype), state  # (B, H, 1, d_v)


# --------------------------------------------------------------------------
# (c) Causal, chunked: quadratic inside a chunk, the state between chunks
# --------------------------------------------------------------------------

# Chunks are processed in groups, vectorized inside a group: the Python loop stays short, and no
# tensor of a group (features: C m, chunk states: m d_v numbers per chunk) holds more than this
# many numbers per head (8 chunks of 64 tokens for m = d_v = 64; 2 for Performer's m = 256).
_GROUP_NUMBERS = 2**15


def _chunks_per_group(C: int, m: int, d_v: int) -> int:
    return max(1, min(_GROUP_NUMBERS // (C * m), _GROUP_NUMBERS // (m * d_v)))


def causal_linear_attention_chunked(
    q,
    k,
    v,
    *,
    causal=True,
    chunk_size=64,
    feature_map=elu_feature_map,
    key_feature_map=None,
    normalize=True,
    eps=DEFAULT_EPS,
    initial_state=None,
    return_state=False,
):
    """Causal linear attention in chunks of ``chunk_size`` tokens; any N (the last chunk may be shorter).

    The causal kernel matrix ``tril(phi(Q) phi(K)^T)`` cut into ``C x C`` blocks has two kinds of
    non-zero block, computed in four steps for every chunk ``c`` (the layout of Mamba-2's
    ``ssd_minimal``; here the decay is 1):

    1. diagonal blocks: ``tril(phi(Q_c) phi(K_c)^T) V_c``, quadratic inside the chunk;
    2. chunk states: ``phi(K_c)^T V_c`` (m x d_v) and ``phi(K_c)^T 1`` (m), what chunk ``c`` adds;
    3. state passing: the states of the chunks before ``c`` summed (an exclusive prefix sum,
       starting from ``initial_state``): ``S_{c-1}``, ``z_{c-1}``;
    4. off-diagonal blocks: ``phi(Q_c) S_{c-1}``, every earlier key at once through the state.

    ``out = (1 + 4) / (normalizer of 1 + normalizer of 4 + eps)``, Eq. (9). Cost
    ``O(N C m + N m d_v)``; equal to :func:`linear_attention_quadratic` with ``causal=True`` up to
    rounding. Chunks are processed in groups (vectorized inside a group, 8 chunks of 64 tokens for
    ``m = d_v = 64``), so no per-chunk tensor of the whole sequence is held.

    ``feature_map=None`` with ``normalize=False`` is the plain causal product
    ``sum_{j <= i} (Q_i . K_j) V_j``: a state-space scan with decay 1 (Mamba-2's SSD with ``A = 0``).
    ``initial_state`` (a :class:`LinearAttentionState`) continues a sequence; ``return_state=True``
    also returns the state after the last token, so ``(out, state)`` can feed
    :func:`linear_attention_step`. ``causal`` must be True.
    """
    if causal is not True:
        raise ValueError(f"causal_linear_attention_chunked computes the causal form only: causal must be True, "
                         f"got {causal!r} (use linear_attention_noncausal)")  # fmt: skip
    check_positive_int("chunk_size", chunk_size)
    check_flag("return_state", return_state)
    q_in = q
    q, k, v, phi_q, phi_k, eps = _prepare(q, k, v, True, normalize, eps, feature_map, key_feature_map)
    B, H, N, _ = q.shape
    d_v = v.shape[-1]
    C = chunk_size
    state = initial_state
    out = torch.empty(B, H, N, d_v, dtype=q.dtype, device=q.device)  # (B, H, N, d_v)
    m = _features("feature_map", phi_q, q[:, :, :1]).shape[-1]  # the number of features, from one token
    group = C * _chunks_per_group(C, m, d_v)  # tokens per group
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # (C, C): key j <= query i inside a chunk
    for start in range(0, N, group):
        end = min(start + group, N)
        fq = _features("feature_map", phi_q, q[:, :, start:end], m)  # (B, H, n, m)
        fk = _features("key_feature_map", phi_k, k[:, :, start:end], m)  # (B, H, n, m)
        vs = v[:, :, start:end]  # (B, H, n, d_v)
        if state is None:
            state = LinearAttentionState.zeros(B, H, m, d_v, dtype=q.dtype, device=q.device)
        _check_state(state, B, H, m, d_v, q.dtype, q.device)
        S0, z0 = state.S.to(q.dtype), state.z.to(q.dtype)
        n = end - start
        pad = (-n) % C  # the last chunk of the sequence may be short: pad it with zero features and values
        if pad:
            fq, fk, vs = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, vs))  # (B, H, n + pad, .)
        nc = (n + pad) // C
        Qc = fq.view(B, H, nc, C, m)  # (B, H, nc, C, m)
        Kc = fk.view(B, H, nc, C, m)  # (B, H, nc, C, m)
        Vc = vs.view(B, H, nc, C, d_v)  # (B, H, nc, C, d_v)
        # 1. diagonal blocks: quadratic inside each chunk
        A = (Qc @ Kc.transpose(-2, -1)).masked_fill_(~mask, 0.0)  # (B, H, nc, C, C)
        num = A @ Vc  # (B, H, nc, C, d_v)
        den = A.sum(-1)  # (B, H, nc, C)
        # 2. chunk states: what each chunk adds to S and z
        S_add = Kc.transpose(-2, -1) @ Vc  # (B, H, nc, m, d_v)
        z_add = Kc.sum(-2)  # (B, H, nc, m)
        # 3. state passing: the state before each chunk (exclusive prefix sum, from the initial state)
        S_incl = S0.unsqueeze(2) + S_add.cumsum(2)  # (B, H, nc, m, d_v): state after chunk c
        z_incl = z0.unsqueeze(2) + z_add.cumsum(2)  # (B, H, nc, m)
        S_prev = torch.cat([S0.unsqueeze(2), S_incl[:, :, :-1]], dim=2)  # (B, H, nc, m, d_v)
        z_prev = torch.cat([z0.unsqueeze(2), z_incl[:, :, :-1]], dim=2)  # (B, H, nc, m)
        # 4. off-diagonal blocks: every earlier key through the state
        num = num + Qc @ S_prev  # (B, H, nc, C, d_v)
        if normalize:
            den = den + (Qc @ z_prev.unsqueeze(-1)).squeeze(-1)  # (B, H, nc, C)
            num = _normalized(num, den, eps)  # (B, H, nc, C, d_v), Eq. (9)
        out[:, :, start:end] = num.reshape(B, H, nc * C, d_v)[:, :, :n]
        state = LinearAttentionState(S_incl[:, :, -1], z_incl[:, :, -1], state.tokens + n)
    out = _finish(out, q_in)
    return (out, state) if return_state else out


# --------------------------------------------------------------------------
# The registry's entry point
# --------------------------------------------------------------------------


def linear_attention(
    q,
    k,
    v,
    *,
    causal=False,
    form="auto",
    chunk_size=64,
    feature_map=elu_feature_map,
    key_feature_map=None,
    normalize=True,
    eps=DEFAULT_EPS,
):
    """Linear attention with ``phi = elu + 1`` (Eq. 7), the kernel of attnlib's registry.

    ``form``: ``"auto"`` (non-causal: the reordered product :func:`linear_attention_noncausal`;
    causal: :func:`causal_linear_attention_chunked`), ``"quadratic"`` (the N x N reference),
    ``"recurrent"`` (causal only, the token loop) or ``"chunked"`` (causal only). Every form gives
    the same result up to rounding. ``chunk_size`` is the chunk of the chunked form.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    check_flag("causal", causal)
    kw = dict(feature_map=feature_map, key_feature_map=key_feature_map, normalize=normalize, eps=eps)
    if form == "quadratic":
        return linear_attention_quadratic(q, k, v, causal=causal, **kw)
    if not causal:
        if form != "auto":
            raise ValueError(f"form={form!r} is a causal form: use causal=True, or form='auto' or 'quadratic'")
        return linear_attention_noncausal(q, k, v, **kw)
    if form == "recurrent":
        return causal_linear_attention_recurrent(q, k, v, **kw)
    return causal_linear_attention_chunked(q, k, v, chunk_size=chunk_size, **kw)


class LinearSelfAttention(MultiHeadSelfAttention):
    """Multi-head self-attention on :func:`linear_attention`, ``x: (B, N, C) -> (B, N, C)``.

    The projections of :class:`attnlib.reference.MultiHeadSelfAttention`; causal runs the chunked form.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, chunk_size: int = 64, bias: bool = True):
        check_positive_int("chunk_size", chunk_size)
        super().__init__(
            dim, num_heads, causal=causal, bias=bias, attention_fn=partial(linear_attention, chunk_size=chunk_size)
        )


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> GlobalSelfAttention2d:
    """Registry factory: global linear attention (elu + 1) over a ``height x width`` map."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    return GlobalSelfAttention2d(dim, num_heads, attention_fn=linear_attention)
