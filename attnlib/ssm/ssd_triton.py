"""The chunked SSD forward (Mamba-2, Section 6) as one Triton kernel, read top to bottom.

Paper: Dao and Gu, "Transformers are SSMs" (ICML 2024, arXiv 2405.21060), Section 6 (the
hardware-efficient algorithm) and Listing 1; the PyTorch version of the same four steps is
:func:`attnlib.ssm.ssd.ssd_chunked`. Chapter: "State-space models" (chapters/*/17_state_space.ipynb).

What a program owns
-------------------
One program per ``(block of BLOCK_D value columns, batch x head)``: grid =
``(cdiv(d, BLOCK_D), B * H)``. It owns the columns ``[d0, d0 + BLOCK_D)`` of one head's state
``h: (n, BLOCK_D)`` and of its output, for the whole sequence. Columns of the state never mix
(``h = a h + B x^T`` acts on each column of ``x`` alone), so the programs need nothing from each
other: no atomics, no second pass.

Which tiles stream
------------------
The sequence, one chunk of ``CHUNK`` tokens at a time, in order: ``x`` ``(CHUNK, BLOCK_D)``,
``B`` and ``C`` ``(CHUNK, n)``, ``log_a`` ``(CHUNK,)``. Each is read from memory once (``B``, ``C``
and ``log_a`` once per column block). For each chunk, the loop body is the four steps::

    seg   = segsum(log_a of the chunk)                  # (CHUNK, CHUNK), -inf above the diagonal
    y     = (exp(seg) o C B^T) x                        # 1. intra-chunk output (diagonal block)
    y    += exp(cumsum(log_a))[:, None] * (C h)         # 4. the state entering the chunk -> output
    store y
    h     = exp(sum(log_a)) h                           # 3. pass the state over the chunk ...
          + (B * exp(decay to the chunk's end))^T x     # 2. ... plus the chunk's own state

Where the inter-chunk state lives
---------------------------------
In registers (``h``, float32, ``(BLOCK_S, BLOCK_D)``), for the whole loop: it is never written to
memory between chunks, only once at the end when the final state is asked for. The released
Triton code (``mamba_ssm/ops/triton/ssd_*.py``) instead splits the steps into separate kernels
(``_chunk_cumsum_fwd``, ``_chunk_state_fwd``, ``_state_passing_fwd``, ``_bmm_chunk_fwd``,
``_chunk_scan_fwd``) and
writes every chunk's state to memory, so that steps 1, 2 and 4 run in parallel over chunks and only
the short scan of step 3 is sequential. One fused loop is simpler to read and does the same
arithmetic; its parallelism is only ``cdiv(d, BLOCK_D) * B * H`` programs, fine on a CPU and for a
batch of sequences, short of the released kernels on a GPU with few heads.

Numerics
--------
All sums of log-decays are sums of the terms they need, never differences of two cumulative sums:
``seg`` is a cumulative sum down a masked ``(CHUNK, CHUNK)`` copy (as :func:`attnlib.ssm.ssd.segsum`),
the decay from a token to the chunk's end a masked row sum. Every ``exp`` argument is <= 0, so
decays near 0 underflow to 0 (correctly) and decays near 1 keep their digits; no product of many
decays is formed. (Departure: the released ``_chunk_scan_fwd`` takes the differences
``exp(min(dA_cs_m - dA_cs_k, 0))`` of the chunk's cumulative sums, cheaper by one ``CHUNK x CHUNK``
cumulative sum, exact enough for its chunk sizes.) Loads of float16/bfloat16 are converted to
float32; products use IEEE float32 (``input_precision="ieee"``, not TF32), so float32 inputs match
the PyTorch forms to ~1e-6.

Backward
--------
No Triton backward: :class:`SSDTriton` (a ``torch.autograd.Function``) saves the inputs, and its
backward *recomputes* the output with the PyTorch chunked form
(:func:`attnlib.ssm.ssd.ssd_chunked`, same chunk size) under autograd and differentiates that.
The gradients are exact (the same function), at the memory and time of the PyTorch form.

Running without a GPU
---------------------
Set ``os.environ["TRITON_INTERPRET"] = "1"`` before the first ``import triton``: the kernel then
runs in Triton's interpreter on CPU tensors (slow: keep ``N`` to a few hundred tokens).

Conventions: those of :mod:`attnlib.ssm.ssd` (heads first, ``x: (B, H, N, d)``,
``B, C: (B, H, N, n)``, ``log_a`` or ``a: (B, H, N)``, states ``(B, H, n, d)``); ``chunk_size`` a
power of two >= 16 (``tl.dot`` needs tiles of at least 16); ``N``, ``n`` and ``d`` any size
(padded tiles are masked); dtypes float32, float16, bfloat16 (outputs in the input dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import check_positive_int, first_order_only
from .ssd import check_ssd_inputs, resolve_log_decay, ssd_chunked

__all__ = ["ssd_triton", "ssd_triton_forward", "SSDTriton", "TRITON_DTYPES"]

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DOT_PRECISION = tl.constexpr("ieee")  # IEEE float32 products, not TF32 (see "Numerics")


@triton.jit
def _ssd_chunked_fwd_kernel(
    X, Bm, Cm, LogA, Y, H0, HN,  # pointers; H0 and HN are (B, H, n, d) float32, contiguous
    stride_xb, stride_xh, stride_xt, stride_xd,
    stride_bb, stride_bh, stride_bt, stride_bn,
    stride_cb, stride_ch, stride_ct, stride_cn,
    stride_ab, stride_ah, stride_at,
    stride_yb, stride_yh, stride_yt, stride_yd,
    H, N, D, NSTATE,
    CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
):  # fmt: skip
    """One program per (column block, batch x head): grid = (cdiv(D, BLOCK_D), B * H)."""
    # --- what do I own? one head, BLOCK_D columns of its state and output ------------------
    pid_d = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_t = tl.arange(0, CHUNK)  # (CHUNK,) token index within a chunk
    offs_s = tl.arange(0, BLOCK_S)  # (BLOCK_S,) state index, n padded to a power of two
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) my value columns
    s_ok = offs_s < NSTATE
    d_ok = offs_d < D

    x_base = X + off_b * stride_xb + off_h * stride_xh
    b_base = Bm + off_b * stride_bb + off_h * stride_bh
    c_base = Cm + off_b * stride_cb + off_h * stride_ch
    a_base = LogA + off_b * stride_ab + off_h * stride_ah
    y_base = Y + off_b * stride_yb + off_h * stride_yh
    state_offs = off_bh.to(tl.int64) * NSTATE * D + offs_s[:, None] * D + offs_d[None, :]  # (BLOCK_S, BLOCK_D)

    # --- where the inter-chunk state lives: here, in registers, for the whole loop ----------
    if HAS_INIT:
        h = tl.load(H0 + state_offs, mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_S, BLOCK_D)
    else:
        h = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)

    # Masks that do not depend on the chunk: row i, column j of a (CHUNK, CHUNK) tile.
    below = offs_t[:, None] > offs_t[None, :]  # strictly below the diagonal: k > j
    causal = offs_t[:, None] >= offs_t[None, :]  # on or below: i >= j

    # --- which tiles stream: the chunks, in order -------------------------------------------
    for start in range(0, N, CHUNK):
        t = start + offs_t  # (CHUNK,) token indices
        t_ok = t < N  # the ragged last chunk: padded tokens read x = B = C = 0, log a = 0
        xd_ok = t_ok[:, None] & d_ok[None, :]  # (CHUNK, BLOCK_D)
        xs_ok = t_ok[:, None] & s_ok[None, :]  # (CHUNK, BLOCK_S)
        x_ptrs = x_base + t[:, None] * stride_xt + offs_d[None, :] * stride_xd
        x = tl.load(x_ptrs, mask=xd_ok, other=0.0).to(tl.float32)  # (CHUNK, BLOCK_D)
        b_ptrs = b_base + t[:, None] * stride_bt + offs_s[None, :] * stride_bn
        b = tl.load(b_ptrs, mask=xs_ok, other=0.0).to(tl.float32)  # (CHUNK, BLOCK_S)
        c_ptrs = c_base + t[:, None] * stride_ct + offs_s[None, :] * stride_cn
        c = tl.load(c_ptrs, mask=xs_ok, other=0.0).to(tl.float32)  # (CHUNK, BLOCK_S)
        la = tl.load(a_base + t * stride_at, mask=t_ok, other=0.0).to(tl.float32)  # (CHUNK,)

        # The chunk's log-decays, each a sum of the terms it needs (no differences, no products):
        # seg[i, j] = la[j+1] + ... + la[i]: cumulative sum down the rows of la[k] masked to k > j.
        seg = tl.cumsum(tl.where(below, la[:, None], 0.0), axis=0)  # (CHUNK, CHUNK)
        seg = tl.where(causal, seg, float("-inf"))  # exp(-inf) = 0 above the diagonal
        from_start = tl.cumsum(la, axis=0)  # (CHUNK,) la[0] + ... + la[i]: log(a_start ... a_i)
        # to_end[j] = la[j+1] + ... + la[last]: row sums of la[k] masked to k > j (the transpose).
        to_end = tl.sum(tl.where(below, la[:, None], 0.0), axis=0)  # (CHUNK,)
        total = tl.sum(la, axis=0)  # log of the whole chunk's decay

        # Step 1, intra-chunk output: (L o C B^T) x, as attention inside the chunk.
        scores = tl.dot(c, tl.trans(b), input_precision=DOT_PRECISION)  # (CHUNK, CHUNK)
        y = tl.dot(tl.exp(seg) * scores, x, input_precision=DOT_PRECISION)  # (CHUNK, BLOCK_D)
        # Step 4, state to output: the state entering the chunk, decayed to each token, read by C.
        y += tl.exp(from_start)[:, None] * tl.dot(c, h, input_precision=DOT_PRECISION)  # (CHUNK, BLOCK_D)
        y_ptrs = y_base + t[:, None] * stride_yt + offs_d[None, :] * stride_yd
        tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=xd_ok)

        # Steps 2 and 3: the chunk's own state (B decayed to the chunk's end, times x), added to
        # the entering state decayed over the whole chunk. h now enters the next chunk.
        b_to_end = b * tl.exp(to_end)[:, None]  # (CHUNK, BLOCK_S)
        h = tl.exp(total) * h + tl.dot(tl.trans(b_to_end), x, input_precision=DOT_PRECISION)  # (BLOCK_S, BLOCK_D)

    if STORE_FINAL:
        tl.store(HN + state_offs, h, mask=s_ok[:, None] & d_ok[None, :])


def _tile_size(size: int, lo: int = 16, hi: int | None = None) -> int:
    tile = max(lo, triton.next_power_of_2(size))
    return tile if hi is None else min(tile, hi)


def ssd_triton_forward(x, B, C, log_a, *, chunk_size: int = 64, initial_state=None, block_d: int = 64):
    """Launch the kernel: ``(y, final_state)``, no autograd. Inputs validated by :func:`ssd_triton`.

    ``final_state`` is float32 ``(B, H, n, d)``. ``block_d`` (a power of two >= 16) caps the columns
    a program owns; the state size ``n`` is one tile (``BLOCK_S = next power of two >= 16``).
    """
    Bsz, H, N, d = x.shape
    n = B.shape[-1]
    y = torch.empty_like(x)
    final = torch.empty(Bsz, H, n, d, dtype=torch.float32, device=x.device)
    h0 = final if initial_state is None else initial_state.to(torch.float32).contiguous()
    BLOCK_D = _tile_size(d, hi=block_d)
    grid = (triton.cdiv(d, BLOCK_D), Bsz * H)
    _ssd_chunked_fwd_kernel[grid](
        x, B, C, log_a, y, h0, final,
        *x.stride(), *B.stride(), *C.stride(), *log_a.stride(), *y.stride(),
        H, N, d, n,
        CHUNK=chunk_size, BLOCK_S=_tile_size(n), BLOCK_D=BLOCK_D,
        HAS_INIT=initial_state is not None, STORE_FINAL=True,
    )  # fmt: skip
    return y, final


class SSDTriton(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: recompute with :func:`ssd_chunked` and differentiate it."""

    @staticmethod
    def forward(ctx, x, B, C, log_a, initial_state, chunk_size):
        y, final = ssd_triton_forward(x, B, C, log_a, chunk_size=chunk_size, initial_state=initial_state)
        ctx.save_for_backward(x, B, C, log_a, initial_state)
        ctx.chunk_size = chunk_size
        final = final.to(x.dtype)
        return y, final

    @staticmethod
    @first_order_only("ssd_triton")
    def backward(ctx, grad_y, grad_final):
        x, B, C, log_a, initial_state = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() for t in (x, B, C, log_a)]
        h0 = None if initial_state is None else initial_state.detach().requires_grad_()
        with torch.enable_grad():
            y, final = ssd_chunked(
                *inputs[:3], log_a=inputs[3], chunk_size=ctx.chunk_size, initial_state=h0,
                return_final_state=True, check_values=False,
            )  # fmt: skip
            wrt = inputs + ([h0] if h0 is not None else [])
            grads = torch.autograd.grad((y, final), wrt, (grad_y, grad_final), allow_unused=True)
        grads = list(grads) + ([None] if h0 is None else [])
        return (*grads, None)


def ssd_triton(
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
    """The SSD model by the Triton kernel (forward) and the PyTorch chunked form (backward).

    Same arguments and results as :func:`attnlib.ssm.ssd.ssd_chunked`; ``chunk_size`` must be a
    power of two >= 16, the tensors float32, float16 or bfloat16, on a CUDA device or (with
    ``TRITON_INTERPRET=1``) on the CPU.
    """
    check_positive_int("chunk_size", chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16 for the Triton kernel, got {chunk_size}")
    Bsz, H, N, _, _ = check_ssd_inputs(x, B, C, initial_state)
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16 for the Triton kernel, got {x.dtype}")
    if x.device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "ssd_triton got CPU tensors but Triton's interpreter is off: set TRITON_INTERPRET=1 before the "
            "first import of triton, or move the tensors to a GPU"
        )
    log_a = resolve_log_decay(a, log_a, (Bsz, H, N), x, check_values=check_values)
    y, final = SSDTriton.apply(x, B, C, log_a, initial_state, chunk_size)
    return (y, final) if return_final_state else y


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
