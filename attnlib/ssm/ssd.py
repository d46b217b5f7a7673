"""Structured state-space duality (SSD): one model, three algorithms that compute it.

Paper: Dao and Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", ICML 2024 (arXiv 2405.21060), the paper of Mamba-2. Released
code: ``state-spaces/mamba``, ``mamba_ssm/modules/ssd_minimal.py`` (the paper's Listing 1) and
``mamba_ssm/modules/mamba2.py`` (the block and its one-token ``step``). Chapter: "State-space
models" (chapters/*/17_state_space.ipynb).

The model (Section 2's selective SSM with the scalar state matrix of Section 5, ``A_t = a_t I``)
-------------------------------------------------------------------------------------------
Per batch element and head, with a state ``h_t`` of shape ``(n, d)`` (``n`` = state size, the
paper's N; ``d`` = head dimension, the paper's P)::

    h_t = a_t h_{t-1} + B_t x_t^T          B_t: (n,), x_t: (d,), a_t: a scalar in (0, 1]
    y_t = C_t^T h_t                        C_t: (n,), y_t: (d,)

Unrolled, ``y_i = sum_{j <= i} (a_{j+1} ... a_i) (C_i . B_j) x_j``: the output is a matrix
``M = L o (C B^T)`` applied to ``X`` (Section 3, the SSM as a semiseparable matrix; Section 4,
structured masked attention with ``C, B, X`` in the roles of ``Q, K, V``), where
``L_ij = a_{j+1} ... a_i`` for ``i >= j`` and 0 above the diagonal: a 1-semiseparable mask.

The three algorithms
--------------------
* :func:`ssd_recurrent`: the recurrence, one token at a time (``O(N n d)`` time, a state of
  ``n x d`` numbers per head: what decoding uses, :func:`ssd_step`).
* :func:`ssd_quadratic`: the "attention" form ``Y = (L o C B^T) X`` (``O(N^2 (n + d))``), with
  ``L = exp(segsum(log a))`` computed in log space (:func:`segsum`).
* :func:`ssd_chunked`: Section 6's block decomposition of ``M`` into chunks of ``Q`` tokens, in
  four named steps: :func:`intra_chunk_output` (the diagonal blocks), :func:`chunk_states`,
  :func:`pass_states` (the recurrence between chunks) and :func:`state_to_output` (the
  off-diagonal blocks). ``O(N Q (n + d) + N n d)``: linear in ``N`` for a fixed ``Q``.

:func:`run_ssd` runs one of them by name (or the Triton kernel, ``algorithm="triton"``,
:mod:`attnlib.ssm.ssd_triton`); :func:`ssd_matrix` builds ``M`` itself, for pictures;
:func:`ssd_attention` is the model in the ``(q, k, v)`` signature of attnlib's attention kernels.

All three accept the decays as ``a`` in (0, 1] or as ``log_a = log a <= 0`` (exactly one of the
two). ``log_a`` is the form to prefer: Mamba-2's ``a_t = exp(dt_t A)`` underflows to 0 in float32
for large ``dt_t |A|`` while ``dt_t A`` itself is a fine number.

The family as settings (:func:`mamba2_decay`, :func:`retnet_decay`, :func:`linear_attention_decay`)
--------------------------------------------------------------------------------------------
* Mamba-2: ``log a_t = dt_t A`` with ``dt_t = softplus(dt_raw_t + dt_bias)`` input-dependent and
  ``A = -exp(A_log) < 0`` one number per head; the input is ``dt_t x_t`` (the discretization
  ``B_t -> dt_t B_t`` of ``ssd_minimal.py``'s test: ``ssd_minimal_discrete(x * dt, A * dt, B, C)``).
  ``B_t, C_t`` are projections of the input (see :mod:`attnlib.ssm.mamba2`).
* RetNet (Sun et al., 2023, arXiv 2307.08621, Section 2.1-2.2): a fixed decay per head,
  ``gamma_h = 1 - 2^(-5 - h)``, with ``C, B, X`` the queries, keys and values. Only the decay is
  taken: RetNet's rotation (xPos), its normalisations (of ``Q K^T``, of the decay matrix ``D``'s
  rows, of the retention scores) and GroupNorm and swish gate are left out.
* Linear attention (Katharopoulos et al., 2020): ``a = 1``, i.e. ``log_a = 0``:
  ``y_i = sum_{j <= i} (q_i . k_j) v_j``, the *unnormalised* causal form (no feature map, no
  denominator).

Conventions
-----------
* Heads first, as everywhere in attnlib: ``x: (B, H, N, d)``, ``B, C: (B, H, N, n)``,
  ``a`` or ``log_a: (B, H, N)``, states ``(B, H, n, d)``, outputs ``y: (B, H, N, d)``.
  Departure from the released code, which is sequence first (``(batch, seqlen, nheads, ...)``)
  and stores the state transposed, ``(batch, nheads, headdim, d_state)``. The batch size is
  written ``B`` in shape comments and ``Bsz`` in code; the matrix ``B`` keeps the paper's name.
* One dtype and one device for every tensor; any floating dtype (the tests use float64).
* ``initial_state`` (default zeros) is the state before the first token; with
  ``return_final_state=True`` each function also returns the state after the last token, so a
  prompt computed in parallel can be continued with :func:`ssd_step`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_flag, check_positive_int, check_qkv, check_tensor

__all__ = [
    "segsum",
    "decay_mask",
    "naive_decay_mask",
    "ssd_recurrent",
    "ssd_quadratic",
    "ssd_matrix",
    "ssd_chunked",
    "run_ssd",
    "ssd_step",
    "intra_chunk_output",
    "chunk_states",
    "pass_states",
    "state_to_output",
    "check_ssd_inputs",
    "resolve_log_decay",
    "mamba2_decay",
    "retnet_gammas",
    "retnet_decay",
    "linear_attention_decay",
    "state_bytes",
    "ssd_attention",
    "ALGORITHMS",
    "DECAYS",
]

ALGORITHMS = ("recurrent", "quadratic", "chunked", "triton")
DECAYS = ("retnet", "none")
CHUNKS_PER_GROUP = 16  # ssd_chunked takes the chunks this many at a time (see its docstring)


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------
def resolve_log_decay(a, log_a, shape: tuple[int, ...], like: torch.Tensor, *, check_values: bool = True):
    """The log-decays ``log_a`` from exactly one of ``a`` (in (0, 1]) or ``log_a`` (finite, <= 0).

    ``shape`` is the expected shape (``(B, H, N)`` for a sequence, ``(B, H)`` for one step);
    ``like`` the tensor whose dtype and device the decays must share. ``check_values=False``
    skips the value check (it reads the tensor, which on a GPU waits for it).
    """
    if (a is None) == (log_a is None):
        raise ValueError("give the decays as exactly one of a (in (0, 1]) or log_a (log a <= 0)")
    name, t = ("a", a) if a is not None else ("log_a", log_a)
    check_tensor(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (B, H{', N' if len(shape) == 3 else ''}), "
                         f"got {tuple(t.shape)}")  # fmt: skip
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of x ({like.dtype}), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} must be on the device of x ({like.device}), got {t.device}")
    if a is not None:
        if check_values and t.numel() and not bool(((t > 0) & (t <= 1)).all()):
            bad = t[~((t > 0) & (t <= 1))][0].item()
            raise ValueError(f"a must hold decays in (0, 1], got {bad!r} (pass log_a for decays that underflow)")
        return torch.log(t)
    if check_values and t.numel() and not bool(((t <= 0) & torch.isfinite(t)).all()):
        bad = t[~((t <= 0) & torch.isfinite(t))][0].item()
        raise ValueError(f"log_a must be finite and <= 0 (a decay in (0, 1]), got {bad!r}")
    return t


def check_ssd_inputs(x, B, C, initial_state=None) -> tuple[int, int, int, int, int]:
    """Validate ``x: (B, H, N, d)``, ``B, C: (B, H, N, n)``, ``initial_state: (B, H, n, d)``.

    Returns ``(Bsz, H, N, d, n)``.
    """
    check_tensor("x", x, ndim=4)
    check_tensor("B", B, ndim=4)
    check_tensor("C", C, ndim=4)
    for name, t in (("B", B), ("C", C)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    Bsz, H, N, d = x.shape
    if B.shape[:3] != x.shape[:3] or C.shape[:3] != x.shape[:3]:
        raise ValueError(
            f"B and C must be (B, H, N, n) with the (B, H, N) of x {tuple(x.shape[:3])}, "
            f"got B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    n = B.shape[3]
    if C.shape[3] != n:
        raise ValueError(f"B and C must have the same state size n, got B n={n}, C n={C.shape[3]}")
    if min(Bsz, H, N, d, n) == 0:
        raise ValueError(f"every size must be at least 1, got (B, H, N, d, n) = {(Bsz, H, N, d, n)}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, ndim=4)
        if tuple(initial_state.shape) != (Bsz, H, n, d):
            raise ValueError(
                f"initial_state must be (B, H, n, d) = {(Bsz, H, n, d)} (state size n from B and C, d from x), "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype != x.dtype:
            raise TypeError(f"initial_state must have the dtype of x ({x.dtype}), got {initial_state.dtype}")
        if initial_state.device != x.device:
            raise ValueError(f"initial_state must be on the device of x ({x.device}), got {initial_state.device}")
    return Bsz, H, N, d, n


def _prepare(x, B, C, a, log_a, initial_state, check_values):
    Bsz, H, N, d, n = check_ssd_inputs(x, B, C, initial_state)
    log_a = resolve_log_decay(a, log_a, (Bsz, H, N), x, check_values=check_values)
    if initial_state is None:
        initial_state = x.new_zeros(Bsz, H, n, d)
    return log_a, initial_state


# --------------------------------------------------------------------------------------
# The decay mask L in log space
# --------------------------------------------------------------------------------------
def segsum(log_a: torch.Tensor) -> torch.Tensor:
    """Segment sums ``S[..., i, j] = log_a[j+1] + ... + log_a[i]`` for ``i >= j``, ``-inf`` above.

    ``(..., T) -> (..., T, T)``. Then ``exp(S) = L``, ``L_ij = a_{j+1} ... a_i`` (``L_ii = 1``).
    Each entry is a sum of the terms it needs, computed by a cumulative sum down the columns of a
    masked copy (``ssd_minimal.py``'s stable ``segsum``), not as ``cumsum[i] - cumsum[j]``: that
    difference of two large sums loses the small one's digits. No product of decays is ever
    formed, so ``L_ij`` underflows only where it is below the dtype's smallest number anyway.
    """
    T = log_a.shape[-1]
    x = log_a[..., None, :].expand(*log_a.shape[:-1], T, T).transpose(-1, -2)  # x[..., i, j] = log_a[i]
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril(-1)
    x = x.masked_fill(~strictly_below, 0)  # keep log_a[i] for i > j
    sums = torch.cumsum(x, dim=-2)  # sums[i, j] = sum_{j < k <= i} log_a[k]
    causal = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril()
    return sums.masked_fill_(~causal, -math.inf)  # in place: sums is a new tensor


def decay_mask(log_a: torch.Tensor) -> torch.Tensor:
    """``L = exp(segsum(log_a))``: ``(..., T) -> (..., T, T)``, lower triangular, ones on the diagonal."""
    return segsum(log_a).exp_()


def naive_decay_mask(a: torch.Tensor) -> torch.Tensor:
    """The mask from products: ``L_ij = P_i / P_j`` with ``P_i = a_1 ... a_i`` (for comparison only).

    Wrong on long sequences: ``P_i`` underflows to 0 once the product of decays passes the
    dtype's smallest number (``0.5 ** 1075 == 0`` in float64), and ``0 / 0`` is NaN. The
    chapter and the tests show it failing where :func:`decay_mask` does not.
    """
    P = torch.cumprod(a, dim=-1)
    L = P[..., :, None] / P[..., None, :]
    T = a.shape[-1]
    return L.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=a.device).tril(), 0)


# --------------------------------------------------------------------------------------
# 1. The recurrence
# --------------------------------------------------------------------------------------
def ssd_step(state, x, B, C, *, a=None, log_a=None, check_values: bool = True):
    """One token of the recurrence: ``h = a h + B x^T``, ``y = C^T h``. Returns ``(y, h)``.

    ``state: (B, H, n, d)``, ``x: (B, H, d)``, ``B, C: (B, H, n)``, ``a`` or ``log_a: (B, H)``.
    The state has the same size whatever the number of tokens seen: decoding costs
    ``O(n d)`` per token and head, where attention with a KV cache costs ``O(N d)``.
    (Mamba-2's ``step`` in ``mamba2.py`` does this with ``dA = exp(dt A)`` and ``dt B x``.)
    """
    check_tensor("state", state, ndim=4)
    check_tensor("x", x, ndim=3)
    check_tensor("B", B, ndim=3)
    check_tensor("C", C, ndim=3)
    Bsz, H, n, d = state.shape
    if tuple(x.shape) != (Bsz, H, d):
        raise ValueError(f"x must be (B, H, d) = {(Bsz, H, d)} to match state (B, H, n, d), got {tuple(x.shape)}")
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (Bsz, H, n):
            raise ValueError(
                f"{name} must be (B, H, n) = {(Bsz, H, n)} to match state (B, H, n, d), got {tuple(t.shape)}"
            )
    for name, t in (("x", x), ("B", B), ("C", C)):
        if t.dtype != state.dtype:
            raise TypeError(f"{name} must have the dtype of state ({state.dtype}), got {t.dtype}")
        if t.device != state.device:
            raise ValueError(f"{name} must be on the device of state ({state.device}), got {t.device}")
    log_a = resolve_log_decay(a, log_a, (Bsz, H), state, check_values=check_values)
    state = torch.exp(log_a)[..., None, None] * state + B[..., :, None] * x[..., None, :]  # (B, H, n, d)
    # y = C^T h as a product and a sum over n: a (1, n) @ (n, d) matmul per head would go to a BLAS
    # batch whose thread start-up costs more than the arithmetic at this size.
    y = (C[..., :, None] * state).sum(-2)  # (B, H, d)
    return y, state


def ssd_recurrent(
    x, B, C, *, a=None, log_a=None, initial_state=None, return_final_state: bool = False, check_values: bool = True
):
    """The recurrence over the sequence, one :func:`ssd_step` per token. Shapes: see the module docstring."""
    log_a, h = _prepare(x, B, C, a, log_a, initial_state, check_values)
    ys = []
    for t in range(x.shape[2]):
        y, h = ssd_step(h, x[:, :, t], B[:, :, t], C[:, :, t], log_a=log_a[:, :, t], check_values=False)
        ys.append(y)
    y = torch.stack(ys, dim=2)  # (B, H, N, d)
    return (y, h) if return_final_state else y


# --------------------------------------------------------------------------------------
# 2. The quadratic ("attention") form
# --------------------------------------------------------------------------------------
def ssd_matrix(B, C, L):
    """The matrix of the model, ``M = L o (C B^T)``: ``y = M x`` (Section 3, a semiseparable matrix).

    ``B, C: (..., N, n)``, ``L: (..., N, N)`` from :func:`decay_mask` -> ``(..., N, N)``;
    ``M_ij = (a_{j+1} ... a_i) C_i . B_j`` for ``i >= j``, 0 above the diagonal. With ``L`` the
    causal mask of ones (``a = 1``) it is causal linear attention's matrix ``tril(Q K^T)``.
    """
    return L * (C @ B.transpose(-1, -2))  # C_i . B_j: the "attention scores"


def ssd_quadratic(
    x, B, C, *, a=None, log_a=None, initial_state=None, return_final_state: bool = False, check_values: bool = True
):
    """``Y = (L o C B^T) X`` (Sections 4-5: masked attention with the 1-semiseparable mask ``L``).

    ``L = exp(segsum(log_a))`` (``(B, H, N, N)``); ``O(N^2)`` time and memory, like attention.
    A nonzero ``initial_state`` ``h_0`` adds ``(a_1 ... a_i) C_i^T h_0`` to row ``i``.
    """
    log_a, h0 = _prepare(x, B, C, a, log_a, initial_state, check_values)
    L = decay_mask(log_a)  # (B, H, N, N)
    y = ssd_matrix(B, C, L) @ x  # (B, H, N, d)
    cum = torch.cumsum(log_a, dim=-1)  # (B, H, N): log(a_1 ... a_i)
    y = y + torch.exp(cum)[..., None] * (C @ h0)  # the initial state, decayed to each token
    if not return_final_state:
        return y
    # h_N = (a_1..a_N) h_0 + sum_j (a_{j+1}..a_N) B_j x_j^T: the last row of L.
    h = torch.exp(cum[..., -1])[..., None, None] * h0 + (B * L[..., -1, :, None]).transpose(-1, -2) @ x
    return y, h


# --------------------------------------------------------------------------------------
# 3. The chunked algorithm (Section 6), in four steps
# --------------------------------------------------------------------------------------
def intra_chunk_output(x, B, C, log_a):
    """Step 1, the diagonal blocks: attention-like, inside each chunk only.

    ``x: (B, H, c, Q, d)``, ``B, C: (B, H, c, Q, n)``, ``log_a: (B, H, c, Q)`` for ``c`` chunks of
    ``Q`` tokens. Returns ``Y_diag: (B, H, c, Q, d)``, each chunk's output as if its initial state
    were 0: ``(L_chunk o C B^T) X`` per chunk (``ssd_minimal.py``'s ``Y_diag``).
    """
    L = decay_mask(log_a)  # (B, H, c, Q, Q)
    return (L * (C @ B.transpose(-1, -2))) @ x


def chunk_states(x, B, log_a):
    """Step 2, the right factors of the off-diagonal blocks: the state each chunk writes.

    ``S_c = sum_{j in chunk c} (a_{j+1} ... a_end) B_j x_j^T``: the state at the chunk's end if it
    had started from 0. Returns ``(B, H, c, n, d)``.
    """
    cum = torch.cumsum(log_a, dim=-1)  # (B, H, c, Q), within each chunk
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, c, Q): a_{j+1} ... a_end, each <= 1
    return (B * decay_to_end[..., None]).transpose(-1, -2) @ x  # (B, H, c, n, d)


def pass_states(states, log_a, initial_state):
    """Step 3, the recurrence between chunks: ``h_c = A_c h_{c-1} + S_c``, ``A_c`` = the chunk's decay.

    ``states: (B, H, c, n, d)`` from :func:`chunk_states`, ``log_a: (B, H, c, Q)``,
    ``initial_state: (B, H, n, d)``. Returns ``(entering, final)``: the state entering each chunk
    ``(B, H, c, n, d)`` and the state after the last one ``(B, H, n, d)``.

    A scan of ``c = N / Q`` steps over ``n x d`` states, linear in ``N``. Departure: the paper's
    Listing 1 (``ssd_minimal.py``) writes this step as one matrix product with
    ``exp(segsum(...))`` over the chunks, ``O(c^2)``; that is fine for a few chunks, quadratic for
    long sequences, so a loop it is (the released Triton code also scans, ``_state_passing_fwd``).
    """
    chunk_decay = torch.exp(log_a.sum(-1))  # (B, H, c): a over the whole chunk
    h = initial_state
    entering = []
    for c in range(states.shape[2]):
        entering.append(h)
        h = chunk_decay[:, :, c, None, None] * h + states[:, :, c]
    return torch.stack(entering, dim=2), h


def state_to_output(C, states_entering, log_a):
    """Step 4, the left factors of the off-diagonal blocks: what the earlier chunks add.

    ``y_i += (a_start ... a_i) C_i^T h_entering`` for each token ``i`` of a chunk, ``h_entering``
    the state entering the chunk (:func:`pass_states`). Returns ``Y_off: (B, H, c, Q, d)``.
    """
    decay_from_start = torch.exp(torch.cumsum(log_a, dim=-1))  # (B, H, c, Q): a_start ... a_i
    return (C @ states_entering) * decay_from_start[..., None]


def ssd_chunked(
    x,
    B,
    C,
    *,
    a=None,
    log_a=None,
    chunk_size: int = 64,
    initial_state=None,
    return_final_state: bool = False,
    check_values: bool = True,
):
    """Section 6's chunked algorithm: the four steps, ``Y = Y_diag + Y_off``.

    ``chunk_size`` (the paper's Q) is any int >= 1; ``N`` need not be a multiple of it: the last
    chunk is padded with tokens that change nothing (``x = B = C = 0``, ``a = 1``) and cut off.
    ``chunk_size = 1`` is the recurrence, ``chunk_size >= N`` the quadratic form.

    The chunks are taken ``CHUNKS_PER_GROUP`` at a time, the state passed from group to group: the
    same arithmetic as one pass over all chunks (steps 1 and 2 need no state), but the ``(Q, Q)``
    and ``(n, d)`` tensors of a group stay in the CPU's cache, so the time stays linear in ``N``
    where whole-sequence intermediates (32 MiB each at 32K tokens, 4 heads) would not fit.
    """
    check_positive_int("chunk_size", chunk_size)
    log_a, h = _prepare(x, B, C, a, log_a, initial_state, check_values)
    Bsz, H, N, d = x.shape
    Q = chunk_size
    pad = (-N) % Q
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, B, C))
        log_a = F.pad(log_a, (0, pad))
    c = (N + pad) // Q
    x, B, C = (t.reshape(Bsz, H, c, Q, t.shape[-1]) for t in (x, B, C))  # (B, H, c, Q, .)
    log_a = log_a.reshape(Bsz, H, c, Q)
    y = []
    for g in range(0, c, CHUNKS_PER_GROUP):
        xg, Bg, Cg, log_ag = (t[:, :, g : g + CHUNKS_PER_GROUP] for t in (x, B, C, log_a))
        y_diag = intra_chunk_output(xg, Bg, Cg, log_ag)  # step 1
        states = chunk_states(xg, Bg, log_ag)  # step 2
        entering, h = pass_states(states, log_ag, h)  # step 3: h leaves the group's last chunk
        y_off = state_to_output(Cg, entering, log_ag)  # step 4
        y.append(y_diag + y_off)
    y = torch.cat(y, dim=2).reshape(Bsz, H, c * Q, d)[:, :, :N]
    return (y, h) if return_final_state else y


def run_ssd(
    x,
    B,
    C,
    *,
    a=None,
    log_a=None,
    algorithm: str = "chunked",
    chunk_size: int = 64,
    initial_state=None,
    return_final_state: bool = False,
):
    """The SSD model computed by ``algorithm``: "recurrent", "quadratic", "chunked" or "triton".

    "triton" is :func:`attnlib.ssm.ssd_triton.ssd_triton` (imported on use; its chunk size is a
    power of two >= 16). Every algorithm returns the same numbers up to rounding.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    kw = dict(a=a, log_a=log_a, initial_state=initial_state, return_final_state=return_final_state)
    if algorithm == "recurrent":
        return ssd_recurrent(x, B, C, **kw)
    if algorithm == "quadratic":
        return ssd_quadratic(x, B, C, **kw)
    if algorithm == "chunked":
        return ssd_chunked(x, B, C, chunk_size=chunk_size, **kw)
    from .ssd_triton import ssd_triton

    return ssd_triton(x, B, C, chunk_size=chunk_size, **kw)


# --------------------------------------------------------------------------------------
# The family as settings: which log-decays each model uses
# --------------------------------------------------------------------------------------
def mamba2_decay(dt, A):
    """Mamba-2's selective decay ``log a_t = dt_t A`` (``a_t = exp(dt_t A)``).

    ``dt: (B, H, N)`` positive (after ``softplus(dt_raw + dt_bias)``), ``A: (H,)`` negative
    (``-exp(A_log)``). Returns ``log_a: (B, H, N)``. The input is scaled too: pass ``x * dt[..., None]``
    as ``x`` (``mamba_chunk_scan_combined`` and ``step`` do the same).
    """
    check_tensor("dt", dt, ndim=3)
    check_tensor("A", A, ndim=1)
    if A.shape[0] != dt.shape[1]:
        raise ValueError(f"A must have one entry per head (H={dt.shape[1]} from dt), got shape {tuple(A.shape)}")
    if A.dtype != dt.dtype:
        raise TypeError(f"A must have the dtype of dt ({dt.dtype}), got {A.dtype}")
    return dt * A[None, :, None]


def retnet_gammas(num_heads: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """RetNet's decays per head, ``gamma_h = 1 - 2^(-5 - h)`` for ``h = 0 .. H-1`` (Section 2.2)."""
    check_positive_int("num_heads", num_heads)
    h = torch.arange(num_heads, dtype=torch.float64, device=device)
    return (1 - 2.0 ** (-5 - h)).to(dtype)


def retnet_decay(batch: int, num_heads: int, N: int, *, gammas=None, dtype=torch.float32, device=None):
    """RetNet's fixed decay per head as ``log_a: (B, H, N)``, the same at every token.

    ``gammas`` (``(H,)``, in (0, 1]) defaults to :func:`retnet_gammas`.
    """
    for name, value in (("batch", batch), ("num_heads", num_heads), ("N", N)):
        check_positive_int(name, value)
    if gammas is None:
        gammas = retnet_gammas(num_heads, dtype=dtype, device=device)
    check_tensor("gammas", gammas, ndim=1)
    if gammas.shape[0] != num_heads:
        raise ValueError(f"gammas must have num_heads={num_heads} entries, got shape {tuple(gammas.shape)}")
    if not bool(((gammas > 0) & (gammas <= 1)).all()):
        raise ValueError(f"gammas must be decays in (0, 1], got {gammas.tolist()}")
    return torch.log(gammas).to(dtype)[None, :, None].expand(batch, num_heads, N)


def linear_attention_decay(batch: int, num_heads: int, N: int, *, dtype=torch.float32, device=None):
    """Linear attention: no decay, ``a = 1``, i.e. ``log_a = 0``: ``(B, H, N)`` zeros."""
    for name, value in (("batch", batch), ("num_heads", num_heads), ("N", N)):
        check_positive_int(name, value)
    return torch.zeros(batch, num_heads, N, dtype=dtype, device=device)


def state_bytes(batch: int, num_heads: int, state_size: int, head_dim: int, *, dtype=torch.float32) -> int:
    """Bytes of the decoding state ``(B, H, n, d)``: independent of the number of tokens."""
    return batch * num_heads * state_size * head_dim * torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------
# The attention signature of attnlib's kernels (the registry and attnlib.bench)
# --------------------------------------------------------------------------------------
def ssd_attention(q, k, v, *, causal: bool = True, decay: str = "retnet", chunk_size: int = 64, algorithm="chunked"):
    """The SSD model in the signature of attnlib's attention kernels: ``C = q``, ``B = k``, ``x = v``.

    ``q: (B, H, N, d)``, ``k: (B, H_kv, N, d)``, ``v: (B, H_kv, N, d_v)`` (``H_kv`` dividing ``H``;
    the state size is ``n = d``) -> ``(B, H, N, d_v)``. ``decay``: ``"retnet"`` (RetNet's fixed decay
    per head, :func:`retnet_gammas`) or ``"none"`` (``a = 1``: unnormalised causal linear attention).
    No softmax, no scale, no normalisation: a different token mixer in attention's place. Causal
    only: ``causal=False`` is refused (the state runs forward in time).
    """
    check_flag("causal", causal)
    if not causal:
        raise ValueError("causal must be True: the SSD model is a recurrence forward in time (no bidirectional form)")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    Bsz, H, H_kv, N_q, N_k, _ = check_qkv(q, k, v)
    if N_q != N_k:
        raise ValueError(f"q and k must have the same number of tokens (a causal scan), got N_q={N_q}, N_k={N_k}")
    if H_kv != H:  # grouped heads: each key/value head serves H // H_kv query heads
        k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)
    make = retnet_decay if decay == "retnet" else linear_attention_decay
    log_a = make(Bsz, H, N_q, dtype=q.dtype, device=q.device)
    return run_ssd(v, k, q, log_a=log_a, algorithm=algorithm, chunk_size=chunk_size)
