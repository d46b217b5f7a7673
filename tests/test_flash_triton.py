"""Tests of attnlib.optim.flash_triton: the FlashAttention Triton kernels against attnlib.reference.

Without a GPU the kernels run in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1
before anything imports triton), so sizes stay small (N <= 256, B * H <= 8). The compile tests
build PTX and cubins for sm75/sm80/sm90 in a separate process without the interpreter.

Tolerances (max abs error against the reference, which computes in float32 and rounds once):
* float32: 1e-5. The kernels use IEEE float32 dots (no TF32); what is left is summation order
  and exp2 vs exp, measured at ~2e-6 here.
* float16: 2e-3 absolute plus 2e-3 relative. The kernels round P (and dS in the backward) to
  float16 before the tensor-core products, as FlashAttention does; that costs about one float16
  ulp (2^-11 relative), so values around 1-4 differ by up to ~2e-3.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib.reference import attention

ft = pytest.importorskip("attnlib.optim.flash_triton", reason="triton is not installed (pip install triton)")

REPO = Path(__file__).resolve().parent.parent
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETING else "cuda"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def make_qkv(B, H, H_kv, N_q, N_k, d, dtype=torch.float32, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N_q, d, generator=gen) * scale  # (B, H, N_q, d)
    k = torch.randn(B, H_kv, N_k, d, generator=gen) * scale  # (B, H_kv, N_k, d)
    v = torch.randn(B, H_kv, N_k, d, generator=gen)  # (B, H_kv, N_k, d)
    return (x.to(device=DEVICE, dtype=dtype) for x in (q, k, v))


def reference_grads(q, k, v, dout, causal, scale=None):
    qr, kr, vr = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    attention(qr, kr, vr, causal=causal, scale=scale).backward(dout)
    return qr.grad, kr.grad, vr.grad


def assert_close(got, want, dtype, name=""):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert torch.isfinite(got).all(), f"{name}: not finite"
    torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{name}: {m}")


def check_forward_backward(B, H, H_kv, N_q, N_k, d, causal, dtype=torch.float32, blocks=(None, None), seed=0):
    """flash_forward / flash_backward against the reference's output, lse and autograd gradients."""
    q, k, v = make_qkv(B, H, H_kv, N_q, N_k, d, dtype, seed)
    block_m, block_n = blocks
    out, lse = ft.flash_forward(q, k, v, causal, block_m=block_m, block_n=block_n)
    ref_out, ref_lse = attention(q, k, v, causal=causal, return_lse=True)
    assert_close(out, ref_out, dtype, "out")
    assert lse.dtype == torch.float32 and lse.shape == (B, H, N_q)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "lse: -inf rows differ"
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)  # lse is float32 for every dtype

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
    grads = ft.flash_backward(dout, q, k, v, out, lse, causal, block_m=block_m, block_n=block_n)
    for name, got, want in zip(("dq", "dk", "dv"), grads, reference_grads(q, k, v, dout, causal)):
        assert_close(got, want, dtype, name)


# ----------------------------------------------------------------------------------------
# Forward and backward against the reference
# ----------------------------------------------------------------------------------------
# (B, H, H_kv, N_q, N_k, d, causal, (block_m, block_n)); None = the default tiles (64 x 64 here)
SHAPES = [
    pytest.param(1, 2, 2, 64, 64, 32, False, (32, 32), id="exact-tiles"),
    pytest.param(1, 2, 2, 100, 100, 32, True, (32, 32), id="ragged-causal"),
    pytest.param(1, 2, 2, 100, 77, 16, False, (32, 16), id="ragged-Nq>Nk"),
    pytest.param(2, 2, 2, 50, 130, 16, True, (16, 32), id="causal-Nq<Nk-kvcache"),
    pytest.param(1, 2, 2, 130, 50, 16, True, (32, 16), id="causal-Nq>Nk-empty-rows"),
    pytest.param(1, 4, 1, 96, 96, 64, True, (None, None), id="multi-query"),
    pytest.param(1, 4, 2, 80, 120, 64, False, (None, None), id="grouped-query"),
    pytest.param(1, 4, 2, 70, 70, 16, True, (16, 16), id="grouped-causal-small-tiles"),
    pytest.param(1, 2, 2, 256, 256, 64, True, (None, None), id="N256-causal"),
    pytest.param(1, 1, 1, 96, 96, 128, True, (None, None), id="d128"),
    pytest.param(1, 1, 1, 1, 1, 16, True, (None, None), id="one-token"),
    pytest.param(1, 1, 1, 1, 37, 32, True, (None, None), id="decode-one-query"),
]


@pytest.mark.parametrize("B,H,H_kv,N_q,N_k,d,causal,blocks", SHAPES)
def test_matches_reference_fp32(B, H, H_kv, N_q, N_k, d, causal, blocks):
    check_forward_backward(B, H, H_kv, N_q, N_k, d, causal, torch.float32, blocks)


@pytest.mark.parametrize(
    "B,H,H_kv,N_q,N_k,d,causal,blocks",
    [
        pytest.param(1, 2, 2, 100, 100, 64, True, (32, 32), id="ragged-causal"),
        pytest.param(1, 4, 1, 70, 90, 32, True, (None, None), id="multi-query-Nq<Nk"),
        pytest.param(1, 2, 2, 64, 64, 128, False, (None, None), id="d128"),
    ],
)
def test_matches_reference_fp16(B, H, H_kv, N_q, N_k, d, causal, blocks):
    check_forward_backward(B, H, H_kv, N_q, N_k, d, causal, torch.float16, blocks)


@pytest.mark.parametrize("d", ft.SUPPORTED_HEAD_DIMS)
def test_every_head_dim(d):
    check_forward_backward(1, 2, 1, 48, 48, d, True, torch.float32)


def test_bf16_in_the_interpreter_upcasts_the_dots():
    """The interpreter's tl.dot multiplies bfloat16 bit patterns; the kernels cast to float32 first."""
    if not INTERPRETING:
        pytest.skip("interpreter-only behaviour")
    q, k, v = make_qkv(1, 2, 2, 80, 80, 32, torch.bfloat16)
    out, lse = ft.flash_forward(q, k, v, True)
    ref_out, ref_lse = attention(q, k, v, causal=True, return_lse=True)
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2)  # bfloat16 ulp: 2^-8
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_autograd_function_with_strided_inputs():
    """The public function, differentiated by autograd, on the (B, N, H, d) layout attention blocks
    produce (strided views, no .contiguous()), and with a stride-0 gradient from .sum()."""
    B, N, H, H_kv, d = 2, 72, 4, 2, 32
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, N, H, d, generator=gen).transpose(1, 2)  # (B, H, N, d), not contiguous
    kv = torch.randn(B, N, 2, H_kv, d, generator=gen).permute(2, 0, 3, 1, 4)  # (2, B, H_kv, N, d)
    k, v = kv.unbind(0)  # (B, H_kv, N, d) each, strided views of one tensor
    assert not q.is_contiguous() and not k.is_contiguous()
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    ref_leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out = ft.flash_attention_triton(*leaves, causal=True, scale=0.3)
    ref = attention(*ref_leaves, causal=True, scale=0.3)
    assert_close(out, ref, torch.float32, "out")
    out.sum().backward()  # the incoming gradient is an expanded tensor: every stride is 0
    ref.sum().backward()
    for name, a, b in zip(("dq", "dk", "dv"), leaves, ref_leaves):
        assert_close(a.grad, b.grad, torch.float32, name)


@settings(max_examples=6, deadline=None)
@given(
    B=st.integers(1, 2),
    H_kv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    N_q=st.integers(1, 70),
    N_k=st.integers(1, 70),
    d=st.sampled_from([16, 32]),
    causal=st.booleans(),
    blocks=st.sampled_from([(16, 16), (16, 32), (32, 16), (32, 32)]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(B, H_kv, group, N_q, N_k, d, causal, blocks, seed):
    check_forward_backward(B, H_kv * group, H_kv, N_q, N_k, d, causal, torch.float32, blocks, seed)


# ----------------------------------------------------------------------------------------
# Numerics at the edges
# ----------------------------------------------------------------------------------------
def test_huge_logits_fp32():
    """Logits ~1e4 would overflow exp() without the running max. q and k hold multiples of 25
    in {-25, 0, 25}, so every score is an exact float32 integer: the reference and the kernel see
    identical logits, and the forward (whose largest term has exponent exactly 0) matches to 1e-5.

    The backward recomputes P = exp2(S * scale * log2(e) - L * log2(e)) from the stored
    natural-log L, as FlashAttention does. At |S| ~ 1e4 float32 resolves that exponent only to
    ~1e-3 (ulp(1.4e4) = 2^-10), so P, and the gradients, carry ~1e-3 relative error; we measure
    ~3e-4 of the largest gradient against float64 and allow 2e-3 (the reference, whose logits
    here are exact integers, is closer: ~1e-7).
    """
    gen = torch.Generator().manual_seed(5)
    q = (torch.randint(-1, 2, (1, 2, 96, 16), generator=gen) * 25.0).to(DEVICE)
    k = (torch.randint(-1, 2, (1, 2, 96, 16), generator=gen) * 25.0).to(DEVICE)
    v = torch.randn(1, 2, 96, 16, generator=gen).to(DEVICE)
    out, lse = ft.flash_forward(q, k, v, True, 1.0, block_m=32, block_n=32)
    ref_out, ref_lse = attention(q, k, v, causal=True, scale=1.0, return_lse=True)
    assert ref_lse.abs().max() > 5e3
    assert_close(out, ref_out, torch.float32, "out")
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=1e-6)
    dout = torch.randn(out.shape, generator=gen).to(out)
    grads = ft.flash_backward(dout, q, k, v, out, lse, True, 1.0, block_m=32, block_n=32)
    exact = reference_grads(q.double(), k.double(), v.double(), dout.double(), True, 1.0)
    for name, got, want in zip(("dq", "dk", "dv"), grads, exact):
        assert torch.isfinite(got).all(), name
        relative = (got.double() - want).abs().max() / want.abs().max()
        assert relative < 2e-3, f"{name}: max error {relative:.2e} of the largest gradient"


def test_large_fp16_values():
    """float16 inputs near their range: q.k reaches ~1e5 (over float16's 65504, fine in the
    float32 accumulator) and v ~1e4."""
    q, k, v = make_qkv(1, 2, 2, 64, 64, 64, torch.float16, seed=7, scale=40.0)
    v = v * 1e4
    out, lse = ft.flash_forward(q, k, v, False)
    ref_out, ref_lse = attention(q, k, v, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out, ref_out, atol=2e-3 * 1e4, rtol=2e-3)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-5)


def test_fully_masked_rows_give_zero_not_nan():
    """causal with N_q > N_k: the first N_q - N_k queries see no key (attnlib.reference's convention)."""
    q, k, v = make_qkv(1, 2, 1, 90, 30, 16)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = ft.flash_attention_triton(*leaves, causal=True)
    _, lse = ft.flash_forward(q, k, v, True)
    assert torch.equal(out[:, :, :60], torch.zeros_like(out[:, :, :60]))
    assert torch.isneginf(lse[:, :, :60]).all() and torch.isfinite(lse[:, :, 60:]).all()
    out.backward(torch.ones_like(out))
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    assert torch.equal(leaves[0].grad[:, :, :60], torch.zeros_like(leaves[0].grad[:, :, :60]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warns about the NaN of the later blocks
def test_causal_skips_fully_masked_tiles():
    """Entirely masked key tiles are never visited: poison them with NaN and the causal result
    is unchanged (a visited NaN tile would spread through the running max)."""
    q, k, v = make_qkv(1, 1, 1, 64, 64, 16)
    clean, _ = ft.flash_forward(q, k, v, True, block_m=16, block_n=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 16:], v2[:, :, 16:] = float("nan"), float("nan")  # tiles 1-3 are above query block 0's diagonal
    poisoned, _ = ft.flash_forward(q, k2, v2, True, block_m=16, block_n=16)
    assert torch.equal(poisoned[:, :, :16], clean[:, :, :16])


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def _good():
    return list(make_qkv(1, 2, 2, 8, 8, 16))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "q must have 4 dimensions"),
        (lambda a: a.__setitem__(1, a[1].to(torch.int32)), TypeError, "k must be a floating tensor"),
        (lambda a: a.__setitem__(0, "q"), TypeError, "q must be a torch.Tensor"),
        (lambda a: a.__setitem__(slice(0, 3), [x.double() for x in a]), TypeError, "float64"),
        (lambda a: a.__setitem__(slice(0, 3), [torch.randn(1, 2, 8, 48) for _ in a]), ValueError, "d=48"),
        (lambda a: a.__setitem__(2, torch.randn(1, 2, 8, 32)), ValueError, "d_v=32"),
        (lambda a: a.__setitem__(1, torch.randn(1, 3, 8, 16)), ValueError, "k and v must have the same number"),
        (lambda a: a.__setitem__(0, torch.randn(2, 2, 8, 16)), ValueError, "batch size mismatch"),
    ],
)
def test_bad_input(change, error, match):
    args = _good()
    change(args)
    with pytest.raises(error, match=match):
        ft.flash_attention_triton(*args)
    if len(args) == 3 and all(isinstance(x, torch.Tensor) for x in args):
        assert ft.unsupported_reason(*args) is not None  # the same check, as a value, for fallbacks


def test_unsupported_reason_accepts_good_input():
    assert ft.unsupported_reason(*_good()) is None


def test_bad_options():
    q, k, v = _good()
    with pytest.raises(TypeError, match="causal must be a bool"):
        ft.flash_attention_triton(q, k, v, causal=1)
    with pytest.raises(ValueError, match="scale must be finite"):
        ft.flash_forward(q, k, v, False, float("nan"))
    with pytest.raises(ValueError, match="block_m must be a power of two >= 16"):
        ft.flash_forward(q, k, v, block_m=24)
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16"):
        ft.flash_forward(q, k, v, block_n=8)
    out, lse = ft.flash_forward(q, k, v)
    with pytest.raises(ValueError, match=r"lse must be float32 of shape \(B, H, N_q\)"):
        ft.flash_backward(out, q, k, v, out, lse[:, :1])
    with pytest.raises(ValueError, match="do must match q"):
        ft.flash_backward(out[:, :1], q, k, v, out, lse)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ft.kernel_config("fwd", 64, torch.float16, 80)


def _run_python(code: str, timeout: float, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python *without* TRITON_INTERPRET (this process has it set)."""
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout
    )


def test_cpu_tensors_without_the_interpreter_raise_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("with a GPU the kernels are compiled and CPU tensors are a device error")
    code = (
        "import torch\n"
        "from attnlib.optim.flash_triton import flash_attention_triton\n"
        "q = torch.randn(1, 1, 8, 16)\n"
        "try:\n"
        "    flash_attention_triton(q, q, q)\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError:', e)\n"
    )
    result = _run_python(code, timeout=120)
    assert "RuntimeError:" in result.stdout, result.stderr
    assert "TRITON_INTERPRET" in result.stdout and "backend='torch'" in result.stdout


def test_importing_attnlib_does_not_import_triton():
    result = _run_python("import sys, attnlib, attnlib.optim; print('triton' in sys.modules)", timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_kernel_configs_are_valid():
    for kernel in ft.KERNELS:
        for d in ft.SUPPORTED_HEAD_DIMS:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for cc in (None, 75, 80, 86, 89, 90):
                    cfg = ft.kernel_config(kernel, d, dtype, cc)
                    for block in (cfg.block_m, cfg.block_n):
                        assert block >= 16 and block & (block - 1) == 0, (kernel, d, dtype, cc, cfg)


# ----------------------------------------------------------------------------------------
# Compiling for real GPUs, without one
# ----------------------------------------------------------------------------------------
# Largest shared memory one block may use (opt-in), by compute capability: sm75 (T4) 64 KiB;
# sm80 163 KiB on an A100 but 99 KiB on sm86/sm89 (RTX 30/40, L4), which get the same tiles,
# so 99 KiB is the limit checked; sm90 (H100/H200) 227 KiB.
SHARED_LIMIT = {75: 64 * 1024, 80: 99 * 1024, 90: 227 * 1024}
# fp16 at d = 64 and 128 on every target. Compiling is slow on 2 CPU cores (sm75 gets unrolled
# FMA code: ~20 s of CPU at d = 64, ~40 s at d = 128; sm80/sm90 ~10 s), so float32 and bfloat16
# are opt-in: ATTNLIB_COMPILE_ALL=1 pytest tests/test_flash_triton.py -k compile
# The last case compiles N_Q = N_K = H = H_KV = GROUP = 1 in as constants, as Triton's JIT does
# when a launch passes those values (one-token decoding, multi-query attention): it must compile too.
ONES = ("N_Q", "N_K", "H", "H_KV", "GROUP")
COMPILE_CASES = [(cc, d, "float16", ()) for cc in (75, 80, 90) for d in (64, 128)]
COMPILE_CASES += [(80, 64, "float16", ONES)]
if os.environ.get("ATTNLIB_COMPILE_ALL") == "1":
    COMPILE_CASES = [(cc, d, dt, ()) for cc in (75, 80, 90) for d in (64, 128) for dt in ("float16", "float32")]
    COMPILE_CASES += [(cc, d, "bfloat16", ()) for cc in (80, 90) for d in (64, 128)]
    COMPILE_CASES += [(cc, 64, "float16", ONES) for cc in (75, 80, 90)]

_COMPILE_SCRIPT = """
import json, sys, torch
from attnlib.optim.flash_triton import compile_kernels
for case in json.loads(sys.argv[1]):
    cc, d, dtype, ones = case
    try:
        kernels = compile_kernels(cc, d, getattr(torch, dtype), ones=tuple(ones))
        for name, k in kernels.items():
            print(json.dumps({"case": case, "kernel": name, "shared": k.metadata.shared,
                              "ptx": len(k.asm["ptx"]), "cubin": len(k.asm["cubin"]),
                              "mma": "mma" in k.asm["ptx"]}), flush=True)
    except Exception as e:
        print(json.dumps({"case": case, "error": f"{type(e).__name__}: {e}"[:4000]}), flush=True)
"""


def _ptxas_available() -> bool:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return bundled.exists() or os.environ.get("TRITON_PTXAS_PATH") is not None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile COMPILE_CASES in two processes at once (the machine has 2 cores); returns
    ``{(cc, d, dtype): {kernel: info}}`` where info has shared, ptx, cubin, mma or error."""
    if not _ptxas_available():
        pytest.skip("ptxas (NVIDIA's assembler, bundled with the triton wheel) is missing")
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    halves = [[], []]  # balance the two processes: longest first, each to the less loaded one
    cost = {0: 0.0, 1: 0.0}

    def expected_seconds(case):
        cc, d, dtype, _ = case
        return (20.0 if cc < 80 else 8.0) * d / 64 * (3 if dtype == "float32" else 1)

    for case in sorted(COMPILE_CASES, key=expected_seconds, reverse=True):
        lighter = min(cost, key=cost.get)
        halves[lighter].append(case)
        cost[lighter] += expected_seconds(case)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMPILE_SCRIPT, json.dumps(cases)],
            cwd=REPO,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cases in halves
        if cases
    ]
    results: dict = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1200)
        for line in stdout.splitlines():
            info = json.loads(line)
            cc, d, dtype, ones = info.pop("case")
            entry = results.setdefault((cc, d, dtype, tuple(ones)), {})
            if "error" in info:
                entry["error"] = info["error"]
            else:
                entry[info.pop("kernel")] = info
        if proc.returncode != 0:
            results.setdefault("process", stderr[-4000:])
    return results


@pytest.mark.parametrize(
    "cc,d,dtype,ones",
    COMPILE_CASES,
    ids=[f"sm{cc}-d{d}-{dt}" + ("-ones" if ones else "") for cc, d, dt, ones in COMPILE_CASES],
)
def test_kernels_compile_for_gpu(compiled, cc, d, dtype, ones):
    entry = compiled.get((cc, d, dtype, ones))
    assert entry is not None, compiled.get("process", "no output from the compile process")
    assert "error" not in entry, entry["error"]
    assert set(entry) == set(ft.KERNELS)
    for name, info in entry.items():
        assert info["ptx"] > 0 and info["cubin"] > 0, name
        assert info["shared"] <= SHARED_LIMIT[cc], f"{name} needs {info['shared']} bytes of shared memory"
        if cc >= 80 and name != "preprocess" and dtype != "float32":  # tensor cores from Ampere on
            assert info["mma"], f"{name}: no mma instruction in the PTX for sm{cc}"


# ----------------------------------------------------------------------------------------
# The GPU benchmark script: what can be checked without a GPU
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flash_gpu", REPO / "benchmarks" / "flash_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_flop_count(bench):
    # FlashAttention-2's count: 4 N^2 d per head forward, half when causal, backward 2.5x.
    assert bench.attention_flops(1, 1, 1024, 64, False, "fwd") == 4 * 1024 * 1024 * 64
    assert bench.attention_flops(2, 3, 1024, 64, True, "fwd") == 2 * 3 * 2 * 1024 * 1024 * 64
    assert bench.attention_flops(1, 1, 8, 16, False, "bwd") == 2.5 * 4 * 8 * 8 * 16
    assert bench.attention_flops(1, 1, 8, 16, False, "fwd+bwd") == 3.5 * 4 * 8 * 8 * 16
    assert bench.tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert bench.shape_for(1024, 64) == (16, 32) and bench.shape_for(16384, 128) == (1, 16)
    with pytest.raises(ValueError, match="pass_"):
        bench.attention_flops(1, 1, 8, 16, False, "both")


def test_bench_correctness_check(bench):
    q, k, v = make_qkv(1, 2, 2, 40, 40, 16)

    def flash(q, k, v, causal):
        return ft.flash_attention_triton(q, k, v, causal=causal)

    def dense(q, k, v, causal):
        return attention(q, k, v, causal=causal)

    errors = bench.check_against(flash, dense, q, k, v, True, 1e-5)
    assert set(errors) == {"out", "dq", "dk", "dv"} and max(errors.values()) < 1e-5

    def wrong(q, k, v, causal):
        return attention(q, k, v, causal=not causal)

    with pytest.raises(AssertionError, match="max abs error"):
        bench.check_against(wrong, dense, q, k, v, True, 1e-5)


def test_bench_command_line(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
    args = bench.parse_args(["--out", str(tmp_path), "--sizes", "1024,2048", "--causal", "true"])
    assert args.sizes == [1024, 2048] and args.causal == [True] and args.dtypes == ["float16", "bfloat16"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--methods", "nope"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            bench.main(["--out", str(tmp_path)])


def test_bench_tilings_patch_the_gpu_configuration_only(bench):
    assert "default" in bench.TILINGS and bench.TILINGS["default"] == {}
    for tiling in bench.TILINGS.values():
        assert set(tiling) <= {"forward", "dkdv", "dq"}
    default_forward = ft.kernel_config("forward", 128, torch.float16, 90)
    undo = bench.use_tiling({"forward": (64, 64, 4, 3)})
    try:
        assert ft.kernel_config("forward", 128, torch.float16, 90) == ft.KernelConfig(64, 64, 4, 3)
        assert ft.kernel_config("dq", 128, torch.float16, 90) != ft.KernelConfig(64, 64, 4, 3)
        assert ft.kernel_config("forward", 128, torch.float16, None).num_warps == 1  # the interpreter keeps its own
    finally:
        undo()
    assert ft.kernel_config("forward", 128, torch.float16, 90) == default_forward


def test_bench_main_runs_end_to_end_on_cpu(bench, monkeypatch, tmp_path, capsys):
    """The GPU script's whole main(), on the CPU: Triton's interpreter instead of a GPU and a timer that
    calls each measured function once and reports 1 ms. So a GPU session's run cannot fail on a bug
    that a CPU can show (every code path but the CUDA timing and memory queries)."""
    if not INTERPRETING:
        pytest.skip("the stand-in runs the kernels in Triton's interpreter (on a GPU, run the script itself)")
    calls = []

    def one_call(run, grads_to_clear, args):
        run()
        calls.append(len(grads_to_clear))
        return 1.0

    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "_median_ms", one_call)
    monkeypatch.setattr(bench, "TILE_SIZES", (128,))
    monkeypatch.setattr(bench, "TILE_HEAD_DIM", 16)
    monkeypatch.setattr(bench, "CHECK_TOKENS", 128)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "CPU standing in for a GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    status = bench.main(
        ["--out", str(tmp_path), "--sizes", "64,128", "--head-dims", "16", "--dtypes", "float16",
         "--causal", "false,true", "--tokens", "256", "--hidden", "32"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0, printed
    with open(tmp_path / "flash_gpu.csv") as handle:
        rows = list(csv.DictReader(handle))
    # 2 sizes x 2 causal x 3 methods x 2 passes, each timed once
    assert len(rows) == 24 and {r["method"] for r in rows} == set(bench.METHODS)
    assert {(r["N"], r["B"], r["H"]) for r in rows} == {("64", "4", "2"), ("128", "2", "2")}
    assert all(r["ms"] == "1.0" and float(r["tflops"]) > 0 for r in rows)
    assert (tmp_path / "flash_gpu.png").exists()
    with open(tmp_path / "flash_gpu_tiles.csv") as handle:
        tiles = list(csv.DictReader(handle))
    assert {r["tiling"] for r in tiles} == set(bench.TILINGS) and len(tiles) == len(bench.TILINGS) * 2 * 2
    assert "FAILED" not in printed and len(calls) == len(rows) + len(tiles)
