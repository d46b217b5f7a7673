"""Bad input to attnlib.models.falcon: each case fails with a clear error that names the argument.

The cases: backward through two cached forward calls (the KV cache is written in place), a cache
built for another model, a padded batch passed to ``generate``, flags that are not bools, and the
numbers of :class:`FalconConfig` and ``generate``.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlib.models.falcon import FalconConfig, FalconForCausalLM, KVCache, kv_cache_bytes


def make_model(H_kv: int = 1, *, new_arch: bool = False, dtype=torch.float32, **overrides) -> FalconForCausalLM:
    options = dict(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=H_kv,
        new_decoder_architecture=new_arch,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    options.update(overrides)
    torch.manual_seed(0)
    return FalconForCausalLM(FalconConfig(**options)).to(dtype).eval()


def token_ids(B: int, N: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (B, N), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------
# 1. Gradients and the KV cache (written in place)
# ----------------------------------------------------------------------------


def test_cached_forward_with_gradient_tracking_is_refused():
    """Today: autograd's "modified by an inplace operation" error at backward, even after one cached call
    (every layer writes into the same buffer); now a clear error before anything is written."""
    model = make_model()
    ids = token_ids(2, 6)
    cache = KVCache(model.config, 2)
    with pytest.raises(ValueError, match=r"cache: a forward pass with a KV cache must run under torch\.no_grad\(\)"):
        model(ids[:, :4], cache=cache)
    assert cache.length == 0 and not cache.keys.any() and not cache.keys.requires_grad
    # filled under no_grad, then one call with tracking: refused as well (its backward would fail)
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
    with pytest.raises(ValueError, match=r"to train, call the model on the whole sequence without a cache"):
        model(ids[:, 4:], cache=cache)
    assert cache.length == 4


def test_cached_forward_of_a_frozen_model_needs_no_no_grad():
    """Nothing to differentiate (every parameter frozen): no graph is recorded, the cache works as usual."""
    model = make_model().requires_grad_(False)
    ids = token_ids(2, 9)
    cache = KVCache(model.config, 2)
    pieces = [model(ids[:, :5], cache=cache), model(ids[:, 5:], cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(ids), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# 2. A cache built for another model or batch
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cache_options, message",
    [
        (dict(num_kv_heads=4), r"4 key/value heads.*num_kv_heads=1"),  # MHA cache in an MQA model: 4x the memory
        (dict(num_hidden_layers=3), r"3 layers.*num_hidden_layers=2"),
        (dict(hidden_size=64), r"head dimension 16.*head_dim=8"),
    ],
    ids=["key/value heads", "layers", "head dimension"],
)
def test_cache_of_another_model_is_named_as_such(cache_options, message):
    model = make_model(1)
    other = FalconConfig(**{**model.config.__dict__, **cache_options})
    with pytest.raises(ValueError, match=r"cache must be built for this model and batch.*" + message):
        model(token_ids(2, 3), cache=KVCache(other, 2))


def test_multi_query_model_refuses_a_multi_head_cache_without_writing_into_it():
    model = make_model(1)
    mha_cache = KVCache(FalconConfig(**{**model.config.__dict__, "num_kv_heads": 4}), 1)
    with torch.no_grad(), pytest.raises(ValueError, match="key/value heads"):
        model(token_ids(1, 5), cache=mha_cache)
    assert mha_cache.length == 0 and not mha_cache.keys.any()


def test_cache_of_another_dtype_device_or_batch():
    model = make_model(1)
    with pytest.raises(TypeError, match=r"cache must be built for this model.*torch\.float64.*torch\.float32"):
        model(token_ids(2, 3), cache=KVCache(model.config, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"cache must be built for this model.*device meta.*cpu"):
        model(token_ids(2, 3), cache=KVCache(model.config, 2, device="meta"))
    with pytest.raises(ValueError, match=r"cache must be built for this model and batch.*batch size 3.*2"):
        model(token_ids(2, 3), cache=KVCache(model.config, 3))


def test_kv_cache_arguments():
    config = make_model(1).config
    with pytest.raises(TypeError, match="config must be a FalconConfig, got dict"):
        KVCache({}, 1)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype.*torch.int64"):
        KVCache(config, 1, dtype=torch.long)
    with pytest.raises(TypeError, match="config must be a FalconConfig, got dict"):
        kv_cache_bytes({}, 1, 8)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        kv_cache_bytes(config, 1, 8, dtype="float16")


# ----------------------------------------------------------------------------
# 3. Padded batches: attention_mask
# ----------------------------------------------------------------------------


def test_left_padded_batch_is_refused():
    """Padding would change what the padded rows decode, without a word; it is refused instead."""
    model = make_model(1)
    ids = token_ids(2, 6)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # row 1 left-padded by two tokens
    with pytest.raises(ValueError, match=r"attention_mask marks padding.*row 1.*one prompt at a time"):
        model.generate(ids, 3, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask marks padding"):
        model(ids, attention_mask=mask.bool())


def test_attention_mask_of_ones_changes_nothing():
    model = make_model(1)
    ids = token_ids(2, 6)
    ones = torch.ones(2, 6, dtype=torch.long)
    assert torch.equal(model.generate(ids, 4, attention_mask=ones), model.generate(ids, 4))
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=ones.bool()), model(ids))


def test_attention_mask_of_the_wrong_kind():
    model = make_model(1)
    ids = token_ids(2, 6)
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 6\), got \(2, 5\)"):
        model.generate(ids, 2, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        model.generate(ids, 2, attention_mask=[[1] * 6] * 2)
    with pytest.raises(TypeError, match="attention_mask must be a bool or integer tensor.*torch.float32"):
        model.generate(ids, 2, attention_mask=torch.ones(2, 6))
    twos = torch.ones(2, 6, dtype=torch.long)
    twos[0, 3] = 2
    with pytest.raises(ValueError, match=r"attention_mask must hold 0 and 1.*got values in \[1, 2\]"):
        model.generate(ids, 2, attention_mask=twos)


# ----------------------------------------------------------------------------
# 4. Flags are real bools
# ----------------------------------------------------------------------------


def test_flags_must_be_bools():
    model = make_model(1)
    ids = token_ids(1, 4)
    with pytest.raises(TypeError, match="output_attentions must be a bool, got str 'no'"):
        model(ids, output_attentions="no")
    with pytest.raises(TypeError, match="use_cache must be a bool, got str 'no'"):
        model.generate(ids, 2, use_cache="no")
    with pytest.raises(TypeError, match="do_sample must be a bool, got int 1"):
        model.generate(ids, 2, do_sample=1)
    with pytest.raises(TypeError, match="new_decoder_architecture must be a bool, got str 'no'"):
        FalconConfig(new_decoder_architecture="no")


# ----------------------------------------------------------------------------
# The rest of the public API
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("rope_theta", -1.0, ValueError, r"rope_theta must be a positive number, got -1\.0"),
        ("rope_theta", math.nan, ValueError, r"rope_theta must be a finite number, got nan"),
        ("rope_theta", "10000", TypeError, r"rope_theta must be a real number, got str '10000'"),
        ("layer_norm_epsilon", 0.0, ValueError, r"layer_norm_epsilon must be a positive number, got 0\.0"),
        ("initializer_range", -0.02, ValueError, r"initializer_range must be a non-negative number"),
        ("initializer_range", True, TypeError, r"initializer_range must be a real number, got bool"),
    ],
)
def test_config_numbers(field, value, error, message):
    with pytest.raises(error, match=message):
        FalconConfig(**{field: value})


def test_generate_sampling_arguments():
    model = make_model(1)
    ids = token_ids(1, 4)
    with pytest.raises(ValueError, match=r"temperature must be a finite number, got inf"):
        model.generate(ids, 2, do_sample=True, temperature=math.inf)
    with pytest.raises(TypeError, match=r"seed must be an int or None, got str 'a'"):
        model.generate(ids, 2, do_sample=True, seed="a")
    with pytest.raises(TypeError, match=r"seed must be an int or None, got float 1\.5"):
        model.generate(ids, 2, do_sample=True, seed=1.5)
    # sampling options without do_sample=True would be ignored without a word: greedy decoding
    for option in (dict(temperature=0.5), dict(top_k=3), dict(seed=1)):
        name = next(iter(option))
        with pytest.raises(ValueError, match=rf"{name}=.* only acts with do_sample=True"):
            model.generate(ids, 2, **option)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 2.0"):
        model.generate(ids, 2.0)
    with pytest.raises(ValueError, match="attention must be one of"):
        model.generate(ids, 2, attention="sdpa")


def test_input_ids_on_another_device():
    model = make_model(1)
    with pytest.raises(ValueError, match=r"input_ids must be on the model's device \(cpu\), got meta"):
        model(token_ids(1, 4).to("meta"))


def test_int32_input_ids_are_accepted():
    model = make_model(1)
    ids = token_ids(2, 5)
    with torch.no_grad():
        assert torch.equal(model(ids.int()), model(ids))
    assert torch.equal(model.generate(ids.int(), 3), model.generate(ids, 3))
