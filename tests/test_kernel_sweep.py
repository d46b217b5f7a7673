"""A random sweep of every exact kernel against ``attnlib.reference.attention`` in float64.

Each kernel of attnlib that claims to be exact (the registry's rows whose kernel computes
softmax attention over a set of keys, and the building blocks they rest on) is run on random
configurations drawn with a fixed seed: ``d_v != d``, sizes that are not multiples of the tiles
or blocks, ``B > 1``, ``H_kv`` dividing ``H`` where the kernel takes grouped heads, causal or
not, and the four dtypes float16, bfloat16, float32 and float64. Its output and its gradients
``dq, dk, dv`` (for a random upstream gradient) are compared with the reference computed in
float64 from the *same* inputs (the inputs are rounded to the dtype first, then converted
exactly to float64), so the only differences left are the kernel's own arithmetic.

Each case is one test (its id names the kernel and the case): a failing case says which
configuration broke. Adding a kernel to the registry without adding it here fails
:func:`test_every_exact_registry_kernel_is_swept`.

The Triton kernels run in Triton's interpreter on a machine without a GPU (``TRITON_INTERPRET=1``
is set by the root conftest.py): slow, so their cases are few and small (N <= 48).
"""

from __future__ import annotations

import functools
import os
import random

import pytest
import torch

from attnlib import registry
from attnlib.optim import block_mask as bmk
from attnlib.optim.block_sparse import bigbird_flash_attention, block_sparse_attention
from attnlib.optim.flash import flash_attention
from attnlib.optim.ring import simulated_ring_attention
from attnlib.reference import attention, causal_mask, sdpa_attention
from attnlib.sparse.bigbird import bigbird_attention, bigbird_pattern
from attnlib.sparse.reformer import lsh_attention, lsh_pattern, shared_qk_attention

SEED = 2024
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Tolerances: the largest error allowed, as a multiple of the dtype's machine epsilon (float16 2^-10,
# bfloat16 2^-7, float32 2^-23, float64 2^-52), relative to the largest entry of the float64
# reference, or to 1 if that is smaller: max |got - want| / max(max |want|, 1). The inputs and the
# upstream gradient are standard normal, so every term the kernels add up is of order 1; a result
# far below 1 comes from cancellation (a gradient that is exactly 0 in exact arithmetic comes out as
# rounding noise), and its rounding error is still of the order of epsilon times the terms.
# * float16, bfloat16: every kernel computes in float32 and rounds its result to the dtype once
#   (half an epsilon); the gradients also read the rounded output (in Delta = rowsum(dO * O)) and,
#   in the Triton kernels, probabilities and score gradients rounded to the dtype before the
#   tensor-core products (half an epsilon of terms of order 1 each). Measured: at most 1 epsilon.
#   4 epsilons leave room for these roundings and nothing else: a wrong mask or a lost key changes
#   entries by a good fraction of their size, hundreds of epsilons even in bfloat16 (4 eps = 0.03).
# * float32, float64: the kernels compute in the dtype itself; the error is that of the sums over at
#   most ~70 keys or queries (up to ~70 epsilons in the worst case, about sqrt(70) ~ 8 typically)
#   and of exp and log. Measured: at most 6 epsilons. 64 epsilons is 7.6e-6 in float32.
EPS_MULTIPLE = {torch.float16: 4, torch.bfloat16: 4, torch.float32: 64, torch.float64: 64}


def tolerance(dtype: torch.dtype) -> float:
    return EPS_MULTIPLE[dtype] * torch.finfo(dtype).eps


# ----------------------------------------------------------------------------
# Drawing configurations
# ----------------------------------------------------------------------------


def _draw_case(rng: random.Random, index: int, *, dtypes=DTYPES, grouped=True, cross=True, small=False,
               d_choices=None, same_dv=False, N_max=70) -> dict:  # fmt: skip
    """One random configuration.

    The dtype, ``causal`` and the batch size cycle with ``index``, so that a kernel's first cases meet
    every dtype both causal and not, and a batch of more than one; the rest is drawn. ``small`` keeps
    the batch and heads at 2 at most (the Triton interpreter's time grows with them).
    """
    sizes = [1, 2] if small else [1, 2, 3]
    H_kv = rng.choice(sizes)
    G = rng.choice(sizes) if grouped else 1  # query heads per key/value head
    d = rng.choice(d_choices) if d_choices else rng.randint(1, 20)
    N_q = rng.randint(1, N_max)
    return dict(
        B=sizes[(index + 1) % len(sizes)],
        H=H_kv * G,
        H_kv=H_kv,
        N_q=N_q,
        N_k=rng.randint(1, N_max) if cross else N_q,
        d=d,
        d_v=d if same_dv else rng.choice([x for x in range(1, 21) if x != d]),
        causal=(index + index // len(dtypes)) % 2 == 1,
        dtype=dtypes[index % len(dtypes)],
        seed=rng.randrange(2**31),
    )


def _inputs(case: dict, device="cpu"):
    """``q, k, v`` (rounded to the dtype, leaves with gradients) and an upstream gradient ``dout``."""
    g = torch.Generator().manual_seed(case["seed"])
    B, H, H_kv, N_q, N_k, d, d_v = (case[x] for x in ("B", "H", "H_kv", "N_q", "N_k", "d", "d_v"))
    dtype = case["dtype"]
    q = torch.randn(B, H, N_q, d, generator=g).to(device, dtype).requires_grad_()  # (B, H, N_q, d)
    k = torch.randn(B, H_kv, N_k, d, generator=g).to(device, dtype).requires_grad_()  # (B, H_kv, N_k, d)
    v = torch.randn(B, H_kv, N_k, d_v, generator=g).to(device, dtype).requires_grad_()  # (B, H_kv, N_k, d_v)
    dout = torch.randn(B, H, N_q, d_v, generator=g).to(device, dtype)  # (B, H, N_q, d_v)
    return q, k, v, dout


def _label(kernel: str, case: dict) -> str:
    dtype = str(case["dtype"]).removeprefix("torch.")
    shape = f"B{case['B']}-H{case['H']}-Hkv{case['H_kv']}-Nq{case['N_q']}-Nk{case['N_k']}-d{case['d']}-dv{case['d_v']}"
    extra = "".join(f"-{key}{case[key]}" for key in ("block_q", "block_k", "world_size", "layout", "block_size", "r")
                    if key in case)  # fmt: skip
    return f"{kernel}-{dtype}-{shape}{'-causal' if case['causal'] else ''}{extra}"


# ----------------------------------------------------------------------------
# The kernels: name -> (run(case, q, k, v) -> out, reference mask(case) or None, draw(rng) -> cases)
# ----------------------------------------------------------------------------


def _random_mask(case: dict) -> torch.Tensor:
    """A random ``(H, N_q, N_k)`` pattern with some fully masked rows and some all-visible tiles."""
    g = torch.Generator().manual_seed(case["seed"] + 1)
    H, N_q, N_k = case["H"], case["N_q"], case["N_k"]
    mask = torch.rand(H, N_q, N_k, generator=g) < 0.4  # (H, N_q, N_k)
    mask[:, : N_q // 3, : N_k // 2] = True  # a visible corner: full tiles
    mask[:, -1] = False  # a query that sees no key
    return mask


def _bigbird_mask(case: dict) -> torch.Tensor:
    """The ``(H, N, N)`` pattern that both BigBird kernels compute, from the same seed."""
    return bigbird_pattern(case["N_q"], block_size=case["block_size"], num_random_blocks=case["r"],
                           num_heads=case["H"], causal=case["causal"], seed=case["seed"] % 1000)  # fmt: skip


def _bigbird_options(case: dict) -> dict:
    return dict(block_size=case["block_size"], num_random_blocks=case["r"], causal=case["causal"],
                seed=case["seed"] % 1000)  # fmt: skip


def _lsh_options(case: dict) -> dict:
    return dict(n_hashes=case["n_hashes"], chunk_size=case["chunk"], causal=case["causal"], seed=case["seed"] % 1000)


def _cases_flash_torch(rng):
    cases = [_draw_case(rng, i) for i in range(8)]
    for case in cases:
        case.update(block_q=rng.randint(1, 24), block_k=rng.randint(1, 24))
    return cases


def _cases_triton(rng, count, N_max=48):
    # the Triton kernels take d in (16, 32, 64, 128), d_v = d, and no float64
    return [_draw_case(rng, i, dtypes=DTYPES[:3], small=True, d_choices=[16, 32], same_dv=True, N_max=N_max)
            for i in range(count)]  # fmt: skip


def _cases_block_sparse_torch(rng):
    cases = [_draw_case(rng, i) for i in range(8)]
    for case in cases:
        case.update(block_q=rng.choice([4, 8, 16]), block_k=rng.choice([4, 8, 16]))
    return cases


def _cases_block_sparse_triton(rng):
    cases = _cases_triton(rng, 3, N_max=40)
    for case in cases:
        case.update(block_q=16, block_k=16)
    return cases


def _cases_bigbird(rng):
    cases = []
    for i in range(8):
        case = _draw_case(rng, i, cross=False)
        r, block_size = rng.choice([0, 1, 2]), rng.choice([3, 4, 5, 8])
        min_blocks = 3 if r == 0 else r + 5
        case["N_q"] = case["N_k"] = rng.randint((min_blocks - 1) * block_size + 1, (min_blocks + 2) * block_size)
        case.update(block_size=block_size, r=r)
        cases.append(case)
    return cases


def _cases_ring(rng):
    cases = []
    for i in range(8):
        case = _draw_case(rng, i)
        case.update(world_size=rng.choice([1, 2, 3, 4]), layout=rng.choice(["plain", "zigzag"]))
        chunks = case["world_size"] * (2 if case["layout"] == "zigzag" else 1)
        case["N_q"] = chunks * rng.randint(1, max(1, 48 // chunks))
        case["N_k"] = chunks * rng.randint(1, max(1, 48 // chunks))
        case.update(block_q=rng.randint(1, 16), block_k=rng.randint(1, 16))
        cases.append(case)
    return cases


def _cases_reformer(rng):
    cases = []
    for i in range(6):
        case = _draw_case(rng, i, grouped=False, cross=False)
        case["H_kv"] = case["H"]  # shared QK: one key head per query head
        case.update(n_hashes=rng.choice([1, 2, 3]), chunk=rng.choice([4, 8, 16]))
        cases.append(case)
    return cases


def _triton_flash(case, q, k, v):
    return flash_attention(q, k, v, causal=case["causal"], backend="triton")


def _run_block_sparse(backend):
    def run(case, q, k, v):
        mask = _block_sparse_reference_mask(case)  # (H, N_q, N_k); causal is part of the pattern
        block_mask = bmk.block_mask_from_dense(mask, block_q=case["block_q"], block_k=case["block_k"]).to(q.device)
        return block_sparse_attention(q, k, v, block_mask, backend=backend)

    return run


def _block_sparse_reference_mask(case):
    mask = _random_mask(case)  # (H, N_q, N_k)
    return mask & causal_mask(case["N_q"], case["N_k"]) if case["causal"] else mask


# name: (run(case, q, k, v) -> out, reference_mask(case) -> bool mask or None (then causal=case["causal"]), cases)
KERNELS = {
    "attention": (lambda c, q, k, v: attention(q, k, v, causal=c["causal"]), None,
                  lambda rng: [_draw_case(rng, i) for i in range(8)]),
    "sdpa_attention": (lambda c, q, k, v: sdpa_attention(q, k, v, causal=c["causal"]), None,
                       lambda rng: [_draw_case(rng, i) for i in range(8)]),
    "flash_attention[torch]": (
        lambda c, q, k, v: flash_attention(q, k, v, causal=c["causal"], backend="torch", block_q=c["block_q"],
                                           block_k=c["block_k"]),
        None, _cases_flash_torch,
    ),
    "flash_attention[triton]": (_triton_flash, None, lambda rng: _cases_triton(rng, 3)),
    "block_sparse_attention[torch]": (_run_block_sparse("torch"), _block_sparse_reference_mask,
                                      _cases_block_sparse_torch),
    "block_sparse_attention[triton]": (_run_block_sparse("triton"), _block_sparse_reference_mask,
                                       _cases_block_sparse_triton),
    "bigbird_attention": (lambda c, q, k, v: bigbird_attention(q, k, v, **_bigbird_options(c)), _bigbird_mask,
                          _cases_bigbird),
    "bigbird_flash_attention[torch]": (
        lambda c, q, k, v: bigbird_flash_attention(q, k, v, backend="torch", **_bigbird_options(c)),
        _bigbird_mask, _cases_bigbird,
    ),
    "simulated_ring_attention": (
        lambda c, q, k, v: simulated_ring_attention(q, k, v, causal=c["causal"], world_size=c["world_size"],
                                                    layout=c["layout"], block_q=c["block_q"], block_k=c["block_k"]),
        None, _cases_ring,
    ),
    # Reformer is exact for its own pattern: shared-QK attention over the keys its rounds reach
    "lsh_attention": (None, None, _cases_reformer),
}  # fmt: skip


def _all_cases():
    params = []
    for name, (_, _, draw) in KERNELS.items():
        rng = random.Random(f"{SEED}-{name}")  # one stream per kernel: adding a kernel changes no other case
        for case in draw(rng):
            params.append(pytest.param(name, case, id=_label(name, case)))
    return params


TRITON_KERNELS = {"flash_attention[triton]", "block_sparse_attention[triton]"}


@functools.cache
def _triton_device() -> str | None:
    """Where the Triton kernels run: a CUDA GPU, the CPU under Triton's interpreter, or None (skipped)."""
    try:
        from attnlib.optim import flash_triton  # noqa: F401
    except ImportError:
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max(max |want|, 1)``: see the tolerances above."""
    error = (got.detach().cpu().double() - want).abs().max().item()
    return error / max(want.abs().max().item(), 1.0)


def _reference(case, q, k, v, dout, mask):
    """Output and gradients of ``reference.attention`` in float64 on the CPU, from the kernel's inputs."""
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    if mask is None:
        out = attention(*leaves, causal=case["causal"])
    else:
        out = attention(*leaves, mask=mask)
    grads = torch.autograd.grad(out, leaves, dout.cpu().double())
    return out.detach(), grads


@pytest.mark.parametrize("kernel, case", _all_cases())
def test_kernel_matches_float64_reference(kernel, case):
    device = "cpu"
    if kernel in TRITON_KERNELS:
        device = _triton_device()
        if device is None:
            pytest.skip("the Triton kernels need triton, and a GPU or TRITON_INTERPRET=1")
    q, k, v, dout = _inputs(case, device)
    if kernel == "lsh_attention":
        return _check_reformer(case, q, v, dout)
    run, reference_mask, _ = KERNELS[kernel]
    out = run(case, q, k, v)
    assert out.shape == dout.shape and out.dtype == case["dtype"]
    grads = torch.autograd.grad(out, (q, k, v), dout)
    mask = reference_mask(case) if reference_mask is not None else None
    want_out, want_grads = _reference(case, q, k, v, dout, mask)
    tol = tolerance(case["dtype"])
    errors = {"out": _relative_error(out, want_out)}
    errors.update({name: _relative_error(g, w) for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads)})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"{worst}: relative error {errors[worst]:.3g} > {tol:.3g}; all: {errors}"


def _check_reformer(case, qk, v, dout):
    """LSH attention equals dense shared-QK attention over its pattern (keys qk / ||qk||, self rule)."""
    options = _lsh_options(case)
    out = lsh_attention(qk, v, **options)
    assert out.shape == dout.shape and out.dtype == case["dtype"]
    grads = torch.autograd.grad(out, (qk, v), dout)
    pattern = lsh_pattern(qk.detach(), n_hashes=options["n_hashes"], chunk_size=options["chunk_size"],
                          seed=options["seed"])  # fmt: skip  # the kernel's own hashes, from the same input
    leaves = [x.detach().double().requires_grad_() for x in (qk, v)]
    # shared_qk_attention is attnlib.reference.attention with keys qk / ||qk|| and the self rule
    want_out = shared_qk_attention(*leaves, mask=pattern, causal=case["causal"])
    want_grads = torch.autograd.grad(want_out, leaves, dout.double())
    tol = tolerance(case["dtype"])
    errors = {"out": _relative_error(out, want_out.detach())}
    errors.update({name: _relative_error(g, w) for name, g, w in zip(("dqk", "dv"), grads, want_grads)})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"{worst}: relative error {errors[worst]:.3g} > {tol:.3g}; all: {errors}"


# ----------------------------------------------------------------------------
# The sweep covers what it should
# ----------------------------------------------------------------------------

SWEPT = {
    "attnlib.reference:attention",
    "attnlib.reference:sdpa_attention",
    "attnlib.optim.flash:flash_attention",
    "attnlib.optim.block_sparse:bigbird_flash_attention",
    "attnlib.optim.ring:simulated_ring_attention",
    "attnlib.sparse.bigbird:bigbird_attention",
    "attnlib.sparse.reformer:lsh_attention_qkv",  # swept as lsh_attention, which it calls
}


# What a row computes, when it is softmax attention over some set of keys: those kernels are swept.
# The others compute something else by design (another kernel, an estimate, projected keys, another
# mixer) and are tested against their own definitions in their own test files.
SOFTMAX_OVER_KEYS = {"exact", "restricted pattern", "shared heads", "derived keys"}


def test_every_exact_registry_kernel_is_swept():
    rows = [m for m in registry.METHODS if m.attention is not None and m.exactness in SOFTMAX_OVER_KEYS]
    kernels = {method.attention for method in rows}
    assert kernels <= SWEPT, f"add these kernels to the sweep: {sorted(kernels - SWEPT)}"


def test_the_sweep_meets_every_dtype_and_the_hard_shapes():
    cases = [param.values for param in _all_cases()]
    for name in KERNELS:
        own = [case for kernel, case in cases if kernel == name]
        dtypes = {case["dtype"] for case in own}
        assert dtypes == set(DTYPES if name not in TRITON_KERNELS else DTYPES[:3]), name
        assert any(case["causal"] for case in own) and not all(case["causal"] for case in own), name
        assert any(case["B"] > 1 for case in own), name
        if name not in TRITON_KERNELS:
            assert any(case["d_v"] != case["d"] for case in own), name
        if name not in TRITON_KERNELS | {"lsh_attention"}:
            assert any(case["H_kv"] < case["H"] for case in own), name
