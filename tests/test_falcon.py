"""Tests for attnlib.models.falcon: a Falcon-style model on FlashAttention, with a KV cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from attnlib import registry
from attnlib.models.falcon import (
    FalconConfig,
    FalconForCausalLM,
    KVCache,
    apply_rotary,
    kv_cache_bytes,
    rotary_cos_sin,
    rotate_half,
    split_fused_qkv,
)

# (name, new_decoder_architecture, H, H_kv): the three head settings and the released layouts
SETTINGS = [
    ("multi-head", False, 4, 4),  # [q_h, k_h, v_h] per head
    ("multi-query (Falcon-7B)", False, 4, 1),  # [q_0 .. q_{H-1}, k, v]
    ("grouped-query (Falcon-40B)", True, 4, 2),  # groups [q .. q, k, v]
    ("multi-query, new architecture", True, 4, 1),
]
IDS = [s[0] for s in SETTINGS]


def make_model(new_arch: bool, H: int, H_kv: int, *, seed: int = 0, **overrides) -> FalconForCausalLM:
    options = dict(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=H,
        num_kv_heads=H_kv,
        new_decoder_architecture=new_arch,
        max_position_embeddings=64,
        initializer_range=0.2,  # larger than the default, so attention is far from uniform
    )
    options.update(overrides)
    torch.manual_seed(seed)
    return FalconForCausalLM(FalconConfig(**options)).eval()


def token_ids(B: int, N: int, vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------
# Flash path = dense reference path, with and without the cache
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, new_arch, H, H_kv", SETTINGS, ids=IDS)
def test_flash_equals_reference_without_cache(name, new_arch, H, H_kv):
    model = make_model(new_arch, H, H_kv)
    ids = token_ids(2, 37)
    with torch.no_grad():
        flash = model(ids, attention="flash")
        dense = model(ids, attention="reference")
    assert flash.shape == (2, 37, 50)
    torch.testing.assert_close(flash, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["flash", "reference"])
@pytest.mark.parametrize("name, new_arch, H, H_kv", SETTINGS, ids=IDS)
def test_cached_logits_equal_full_forward(name, new_arch, H, H_kv, attention):
    """Prefill 20 tokens, then 1, 1 and 15 at a time: the logits are those of one full pass."""
    model = make_model(new_arch, H, H_kv)
    ids = token_ids(2, 37)
    cache = KVCache(model.config, batch_size=2)
    with torch.no_grad():
        pieces = [
            model(ids[:, a:b], cache=cache, attention=attention) for a, b in ((0, 20), (20, 21), (21, 22), (22, 37))
        ]
        full = model(ids, attention="reference")
    assert cache.length == 37
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_gradients_flash_equal_reference():
    model = make_model(True, 4, 2)
    ids = token_ids(2, 21)
    grads = {}
    for attention in ("flash", "reference"):
        model.zero_grad()
        model(ids, attention=attention).logsumexp(-1).sum().backward()
        grads[attention] = [p.grad.clone() for p in model.parameters()]
    for flash, dense in zip(grads["flash"], grads["reference"]):
        torch.testing.assert_close(flash, dense, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_path_equals_reference():
    """The Triton kernel (Triton's interpreter on a CPU), head dimension 16, with the cache."""
    model = make_model(False, 2, 1, hidden_size=32, num_hidden_layers=1)
    ids = token_ids(1, 12)
    cache = KVCache(model.config, batch_size=1)
    with torch.no_grad():
        prefill = model(ids[:, :10], cache=cache, attention="flash_triton")
        step = model(ids[:, 10:], cache=cache, attention="flash_triton")
        dense = model(ids, attention="reference")
    torch.testing.assert_close(torch.cat([prefill, step], dim=1), dense, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, new_arch, H, H_kv", SETTINGS, ids=IDS)
def test_greedy_with_cache_equals_recompute(name, new_arch, H, H_kv):
    model = make_model(new_arch, H, H_kv)
    prompt = token_ids(3, 9)
    cached = model.generate(prompt, 16, use_cache=True)
    recomputed = model.generate(prompt, 16, use_cache=False)
    assert cached.shape == (3, 25)
    assert torch.equal(cached[:, :9], prompt)
    assert torch.equal(cached, recomputed)
    # and it is greedy: each new token is the argmax of a full forward pass over its prefix
    with torch.no_grad():
        logits = model(cached[:, :-1], attention="reference")  # (3, 24, V)
    assert torch.equal(logits[:, 8:].argmax(-1), cached[:, 9:])


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = make_model(False, 4, 1)
    prompt = token_ids(2, 5)
    a = model.generate(prompt, 12, do_sample=True, temperature=1.5, seed=3)
    b = model.generate(prompt, 12, do_sample=True, temperature=1.5, seed=3)
    c = model.generate(prompt, 12, do_sample=True, temperature=1.5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt, 12)
    assert torch.equal(model.generate(prompt, 12, do_sample=True, top_k=1, seed=5), greedy)
    # top_k = 3: every sampled token is among the 3 most likely ones after its prefix
    sampled = model.generate(prompt, 12, do_sample=True, top_k=3, seed=6)
    with torch.no_grad():
        top3 = model(sampled[:, :-1]).topk(3, dim=-1).indices[:, 4:]  # (2, 12, 3)
    assert (top3 == sampled[:, 5:, None]).any(-1).all()


def test_generation_reaches_exactly_the_maximum_length():
    model = make_model(False, 4, 1, max_position_embeddings=16)
    assert model.generate(token_ids(1, 6), 10).shape == (1, 16)


# ----------------------------------------------------------------------------
# Rotary embeddings: scores depend only on relative positions
# ----------------------------------------------------------------------------


def test_rotate_half():
    x = torch.arange(6.0)
    assert rotate_half(x).tolist() == [-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize("shift", [1, 17, 1000])
def test_rotary_score_depends_only_on_relative_position(shift):
    d = 16
    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64),
        torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64),
    )

    def score(m: int, n: int) -> float:
        cos, sin = rotary_cos_sin(torch.tensor([m, n]), d, dtype=torch.float64)  # (2, d)
        return (apply_rotary(q, cos[:1], sin[:1]) * apply_rotary(k, cos[1:], sin[1:])).sum().item()

    for m, n in [(5, 2), (3, 3), (0, 9)]:
        assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-10)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # but it does depend on the relative position
    assert score(0, 0) == pytest.approx((q * k).sum().item(), abs=1e-12)  # position 0: no rotation


def test_rotary_is_a_rotation_and_uses_base_10000():
    cos, sin = rotary_cos_sin(torch.tensor([1]), 4, dtype=torch.float64)
    # frequencies 10000^(-0/4) = 1 and 10000^(-2/4) = 0.01, repeated for both halves
    torch.testing.assert_close(cos[0], torch.tensor([1.0, 0.01, 1.0, 0.01], dtype=torch.float64).cos())
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    cos, sin = rotary_cos_sin(torch.arange(5), 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


# ----------------------------------------------------------------------------
# Layout and names of the released code
# ----------------------------------------------------------------------------


def test_fused_qkv_layouts():
    d = 2

    def split(new_arch, H, H_kv):
        config = FalconConfig(
            vocab_size=8, hidden_size=H * d, num_attention_heads=H, num_kv_heads=H_kv, new_decoder_architecture=new_arch
        )
        fused = torch.arange(config.qkv_features, dtype=torch.float32).view(1, 1, -1)  # feature i holds the value i
        q, k, v = split_fused_qkv(fused, config)
        head = lambda x, h: x[0, h, 0, 0].item() / d  # noqa: E731 - which d-wide slot the head came from
        return [head(q, h) for h in range(H)], [head(k, h) for h in range(H_kv)], [head(v, h) for h in range(H_kv)]

    assert split(False, 3, 1) == ([0, 1, 2], [3], [4])  # Falcon-7B: [q_0, q_1, q_2, k, v]
    assert split(False, 2, 2) == ([0, 3], [1, 4], [2, 5])  # multi-head: [q_0, k_0, v_0, q_1, k_1, v_1]
    assert split(True, 4, 2) == ([0, 1, 4, 5], [2, 6], [3, 7])  # Falcon-40B: [q_0, q_1, k_0, v_0, q_2, q_3, k_1, v_1]
    assert split(True, 2, 2) == ([0, 3], [1, 4], [2, 5])  # one query per group: the multi-head layout again


def test_parameter_names_biases_and_tied_head():
    falcon_7b_like = make_model(False, 4, 1)
    names = set(falcon_7b_like.state_dict())
    for name in (
        "transformer.word_embeddings.weight",
        "transformer.h.0.input_layernorm.weight",
        "transformer.h.0.input_layernorm.bias",
        "transformer.h.0.self_attention.query_key_value.weight",
        "transformer.h.0.self_attention.dense.weight",
        "transformer.h.0.mlp.dense_h_to_4h.weight",
        "transformer.h.0.mlp.dense_4h_to_h.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert name in names
    assert not any("ln_attn" in n or "ln_mlp" in n for n in names)
    falcon_40b_like = make_model(True, 4, 2)
    names = set(falcon_40b_like.state_dict())
    assert {"transformer.h.1.ln_attn.weight", "transformer.h.1.ln_mlp.weight"} <= names
    assert not any("input_layernorm" in n for n in names)
    for model in (falcon_7b_like, falcon_40b_like):
        assert model.lm_head.weight is model.transformer.word_embeddings.weight
        assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
        C = model.config.hidden_size
        assert model.transformer.h[0].mlp.dense_h_to_4h.weight.shape == (4 * C, C)
    # the qkv widths of the released models: (H + 2 H_kv) d
    assert falcon_7b_like.transformer.h[0].self_attention.query_key_value.weight.shape == ((4 + 2) * 8, 32)
    assert falcon_40b_like.transformer.h[0].self_attention.query_key_value.weight.shape == ((4 + 4) * 8, 32)
    assert FalconConfig(hidden_size=4544, num_attention_heads=71, num_kv_heads=1).qkv_features == 4672


def test_parallel_block():
    """x + attention(ln(x)) + mlp(ln(x)): both branches read the same normalized input."""
    model = make_model(False, 4, 1)
    block = model.transformer.h[0]
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        out, _ = block(x, start=0, cache=None, layer=0, attention="reference", output_attentions=False)
        normed = block.input_layernorm(x)
        attn, _ = block.self_attention(
            normed, start=0, cache=None, layer=0, attention="reference", output_attentions=False
        )
        torch.testing.assert_close(out, x + attn + block.mlp(normed))


def test_output_attentions_are_causal_softmax_rows():
    model = make_model(True, 4, 2)
    logits, weights = model(token_ids(1, 9), output_attentions=True)
    assert len(weights) == 2 and weights[0].shape == (1, 4, 9, 9)
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(1, 4, 9))
    assert (weights[0].triu(1) == 0).all()


# ----------------------------------------------------------------------------
# The KV cache: bytes as the chapter's formula, H times smaller with multi-query
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, new_arch, H, H_kv", SETTINGS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_match_formula(name, new_arch, H, H_kv, dtype):
    config = make_model(new_arch, H, H_kv).config
    L, B, N, d = config.num_hidden_layers, 3, 40, config.head_dim
    cache = KVCache(config, B, N, dtype=dtype)
    formula = 2 * L * B * H_kv * N * d * (4 if dtype == torch.float32 else 2)  # keys and values
    assert cache.nbytes == formula == kv_cache_bytes(config, B, N, dtype)
    assert cache.keys.shape == (L, B, H_kv, N, d)


def test_multi_query_cache_is_exactly_H_times_smaller():
    for H in (2, 4, 8):
        mha = FalconConfig(hidden_size=8 * H, num_attention_heads=H, num_kv_heads=H)
        mqa = FalconConfig(hidden_size=8 * H, num_attention_heads=H, num_kv_heads=1)
        gqa = FalconConfig(hidden_size=8 * H, num_attention_heads=H, num_kv_heads=2, new_decoder_architecture=True)
        assert kv_cache_bytes(mha, 1, 2048) == H * kv_cache_bytes(mqa, 1, 2048)
        assert kv_cache_bytes(mha, 1, 2048) == (H // 2) * kv_cache_bytes(gqa, 1, 2048)
        assert KVCache(mha, 1, 100).nbytes == H * KVCache(mqa, 1, 100).nbytes


def test_cache_does_not_grow_while_decoding():
    model = make_model(False, 4, 1)
    cache = KVCache(model.config, 1, 30)
    before = (cache.keys.data_ptr(), cache.nbytes)
    with torch.no_grad():
        model(token_ids(1, 10), cache=cache)
        for token in range(5):
            model(torch.tensor([[token]]), cache=cache)
    assert (cache.keys.data_ptr(), cache.nbytes) == before and cache.length == 15


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_prompt_longer_than_the_maximum():
    model = make_model(False, 4, 1, max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"max_position_embeddings=16.*0 cached \+ 17 new"):
        model(token_ids(1, 17))
    with pytest.raises(ValueError, match=r"max_position_embeddings=16, got 17 \+ 1 = 18"):
        model.generate(token_ids(1, 17), 1)


def test_prompt_plus_new_tokens_exceed_the_maximum():
    model = make_model(False, 4, 1, max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"prompt length \+ max_new_tokens.*got 10 \+ 7 = 17"):
        model.generate(token_ids(1, 10), 7)


def test_cache_overflow():
    model = make_model(False, 4, 1)
    cache = KVCache(model.config, 1, max_length=12)
    with torch.no_grad():  # a cached forward pass runs without gradient tracking
        model(token_ids(1, 10), cache=cache)
    with pytest.raises(ValueError, match=r"max_length=12 tokens: it has 10, and 3 more came"):
        model(token_ids(1, 3), cache=cache)
    with pytest.raises(ValueError, match="cache must be built for this model and batch"):
        model(token_ids(2, 1), cache=KVCache(model.config, 1))
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        model(token_ids(1, 1), cache={"keys": None})


@pytest.mark.parametrize(
    "H, H_kv, new_arch, message",
    [
        (4, 3, True, r"num_attention_heads must be divisible by num_kv_heads.*num_attention_heads=4, num_kv_heads=3"),
        (6, 4, True, r"num_attention_heads=6, num_kv_heads=4"),
        (4, 2, False, r"without new_decoder_architecture, num_kv_heads must be 1.*got 2"),
    ],
)
def test_heads_not_divisible(H, H_kv, new_arch, message):
    with pytest.raises(ValueError, match=message):
        FalconConfig(hidden_size=8 * H, num_attention_heads=H, num_kv_heads=H_kv, new_decoder_architecture=new_arch)


def test_bad_config_values():
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_attention_heads, got 30 and 4"):
        FalconConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="head dimension .* must be even"):
        FalconConfig(hidden_size=12, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int, got 0"):
        FalconConfig(num_kv_heads=0)
    with pytest.raises(TypeError, match="config must be a FalconConfig, got dict"):
        FalconForCausalLM({"hidden_size": 8})


@pytest.mark.parametrize("bad", [50, 1000, -1])
def test_token_ids_out_of_range(bad):
    model = make_model(False, 4, 1)
    ids = token_ids(1, 5)
    ids[0, 2] = bad
    with pytest.raises(ValueError, match=r"input_ids must be token ids in \[0, vocab_size=50\)"):
        model(ids)
    with pytest.raises(ValueError, match=r"vocab_size=50"):
        model.generate(ids, 3)


def test_empty_prompt():
    model = make_model(False, 4, 1)
    with pytest.raises(ValueError, match=r"at least one token per sequence, got shape \(1, 0\)"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))


def test_other_bad_arguments():
    model = make_model(False, 4, 1)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"input_ids must be \(B, N\), got shape \(4,\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention must be one of"):
        model(token_ids(1, 4), attention="sdpa")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 0"):
        model.generate(token_ids(1, 4), 0)
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        model.generate(token_ids(1, 4), 2, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        model.generate(token_ids(1, 4), 2, do_sample=True, top_k=0)


def test_registry_row():
    method = registry.get("falcon")
    assert method.category == "computation optimization" and method.domain == "language"
    assert method.chapter == "12_falcon.ipynb"
    assert method.module_cls() is FalconForCausalLM
