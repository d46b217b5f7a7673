"""A small Falcon-style causal language model on the book's FlashAttention, with a KV cache.

Contract
--------
``FalconForCausalLM(config)(input_ids) -> logits (B, N, V)`` is a decoder-only Transformer laid
out as the released Falcon code (Hugging Face ``modeling_falcon.py``): the same module tree and
parameter names, so ``state_dict()`` keys read ``transformer.word_embeddings.weight``,
``transformer.h.0.self_attention.query_key_value.weight``, ``transformer.h.0.mlp.dense_h_to_4h.weight``,
``transformer.ln_f.weight``, ``lm_head.weight``. Attention runs through
:func:`attnlib.optim.flash.flash_attention` (Triton kernel on a GPU, PyTorch tiles on a CPU), or
through :func:`attnlib.reference.attention` for checking. :meth:`FalconForCausalLM.generate`
decodes with a preallocated :class:`KVCache`. Chapter: "Falcon" (chapters/*/12_falcon.ipynb).

Papers and code
---------------
* Almazrouei et al., "The Falcon Series of Open Language Models", arXiv:2311.16867 (2023):
  rotary embeddings, multi-query attention (7B) and grouped-query attention (40B, 180B),
  the parallel attention/MLP block, no biases in the linear layers, FlashAttention.
* Shazeer, "Fast Transformer Decoding: One Write-Head is All You Need", arXiv:1911.02150 (MQA).
* Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
  Checkpoints", EMNLP 2023, arXiv:2305.13245.
* Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864,
  Eq. (34): the rotation; the released Falcon code uses its "rotate-half" form, base 10000.

Where the papers are silent the released code decides: the fused query/key/value layout, the
names, the two LayerNorms of the new decoder architecture, LayerNorm with affine bias
(only the linear layers lose their biases), exact (erf) GELU, tied ``lm_head``.

The block (one layer; Falcon-7B has one LayerNorm, the "new decoder architecture" two)::

    a = ln_attn(x)       (7B: a = input_layernorm(x))
    m = ln_mlp(x)        (7B: m = a)
    x = x + dense(Attention(RoPE(q), RoPE(k), v)) + dense_4h_to_h(GELU(dense_h_to_4h(m)))

Fused ``query_key_value`` layout (output features, in order), head dimension ``d``:

* multi-query, Falcon-7B (``new_decoder_architecture=False``, ``num_kv_heads=1``):
  ``[q_0, ..., q_{H-1}, k, v]``, ``(H + 2) d`` features;
* multi-head, the interleaved layout of Falcon-RW (``new_decoder_architecture=False``,
  ``num_kv_heads=H``): ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``, ``3 H d`` features. Only the
  layout: the released RW models also use ALiBi instead of rotary embeddings, biases in the
  linear layers and a sequential (not parallel) block, which this module does not express, so
  their weights do not load here;
* grouped, Falcon-40B (``new_decoder_architecture=True``, any ``num_kv_heads`` dividing ``H``):
  ``H_kv`` groups ``[q_{gG}, ..., q_{gG+G-1}, k_g, v_g]``, ``(H + 2 H_kv) d`` features, ``G = H / H_kv``.

KV cache: per layer, keys and values of ``B x H_kv x N_max x d`` elements each, preallocated, so
``2 L B H_kv N d`` elements in all (:func:`kv_cache_bytes`): ``H / H_kv`` times smaller than
multi-head attention's, ``H`` times smaller with multi-query attention.

The cache is for decoding, not for training. It is written in place, and autograd cannot
differentiate through a buffer that a later write changes (every layer, and every later step,
writes into the same one), so a cached forward pass must run under ``torch.no_grad()``
(``generate`` does) and is refused otherwise. Training needs no cache: one forward pass over the
whole sequence gives the logits of every position at once (teacher forcing). Making the cache
differentiable would mean copying it at every write, which is exactly what it exists to avoid.

Padded batches are not supported: every row of ``input_ids`` is read as real tokens from position
0. An ``attention_mask`` that marks padding is refused (decode prompts of different lengths one at
a time, or group prompts of equal length), since padding tokens would be attended to and shift the
rotary positions of the row, and the row would decode differently without a word.

Shape legend
------------
    B     batch size
    N     tokens in this call, P tokens already in the cache, N_max cache capacity
    C     hidden size (``hidden_size``), V vocabulary size
    H     query heads, H_kv key/value heads, G = H // H_kv, d = C // H head dimension
    L     layers
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import reference
from .._checks import check_flag, check_float_dtype, check_positive_int, check_real
from ..optim.flash import flash_attention

__all__ = [
    "ATTENTIONS",
    "FalconConfig",
    "KVCache",
    "kv_cache_bytes",
    "rotate_half",
    "rotary_cos_sin",
    "apply_rotary",
    "split_fused_qkv",
    "FalconAttention",
    "FalconMLP",
    "FalconDecoderLayer",
    "FalconModel",
    "FalconForCausalLM",
]

# How attention is computed: "flash" picks the Triton kernel for CUDA tensors and the PyTorch
# tiles otherwise (also when TRITON_INTERPRET=1 is set on a CPU: the interpreter is far too slow
# for a model); "flash_torch" / "flash_triton" force one; "reference" is the dense oracle.
ATTENTIONS = ("flash", "flash_torch", "flash_triton", "reference")


def _check_config(config) -> None:
    if not isinstance(config, FalconConfig):
        raise TypeError(f"config must be a FalconConfig, got {type(config).__name__}")


@dataclass
class FalconConfig:
    """Hyper-parameters, named as in Hugging Face's ``FalconConfig``; the defaults are a toy."""

    vocab_size: int = 64
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_kv_heads: int = 1  # 1: multi-query; H: multi-head; in between: grouped (new architecture only)
    new_decoder_architecture: bool = False  # True: Falcon-40B's grouped layout and two LayerNorms
    max_position_embeddings: int = 256  # the longest sequence (prompt + generated tokens)
    rope_theta: float = 10000.0  # rotary base
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02  # std of the normal initialization of weights

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_kv_heads"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_position_embeddings", self.max_position_embeddings)
        check_flag("new_decoder_architecture", self.new_decoder_architecture)
        check_real("rope_theta", self.rope_theta)
        check_real("layer_norm_epsilon", self.layer_norm_epsilon)
        check_real("initializer_range", self.initializer_range, allow_zero=True)
        H, H_kv, C = self.num_attention_heads, self.num_kv_heads, self.hidden_size
        if C % H != 0:
            raise ValueError(f"hidden_size must be divisible by num_attention_heads, got {C} and {H}")
        if (C // H) % 2 != 0:
            raise ValueError(
                f"the head dimension hidden_size / num_attention_heads must be even (rotary), got {C // H}"
            )
        if H % H_kv != 0:
            raise ValueError(
                f"num_attention_heads must be divisible by num_kv_heads (each key/value head serves "
                f"H / H_kv query heads), got num_attention_heads={H}, num_kv_heads={H_kv}"
            )
        if not self.new_decoder_architecture and H_kv not in (1, H):
            raise ValueError(
                f"without new_decoder_architecture, num_kv_heads must be 1 (multi-query, Falcon-7B) or "
                f"num_attention_heads={H} (multi-head); got {H_kv}: use new_decoder_architecture=True for "
                f"grouped-query attention"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def qkv_features(self) -> int:
        """Output features of ``query_key_value``: ``(H + 2 H_kv) d`` (multi-head: ``3 H d``)."""
        return (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim


# --------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------


def kv_cache_bytes(config: FalconConfig, batch_size: int, num_tokens: int, dtype=torch.float32) -> int:
    """Bytes of a KV cache for ``num_tokens`` tokens: ``2 L B H_kv N d`` elements (keys and values)."""
    _check_config(config)
    check_float_dtype("dtype", dtype)
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_tokens", num_tokens)
    element_bytes = torch.empty((), dtype=dtype).element_size()
    elements = 2 * config.num_hidden_layers * batch_size * config.num_kv_heads * num_tokens * config.head_dim
    return elements * element_bytes


class KVCache:
    """Keys and values of past tokens, per layer, in preallocated buffers.

    ``keys`` and ``values`` are ``(L, B, H_kv, N_max, d)``; ``length`` tokens are filled. During
    one forward pass every layer writes its new keys and values at positions
    ``length .. length + N - 1`` with :meth:`update`; the model then calls :meth:`advance`.
    It serves decoding under ``torch.no_grad()`` only (see the module docstring).
    """

    def __init__(
        self, config: FalconConfig, batch_size: int, max_length: int | None = None, *, dtype=None, device=None
    ):
        _check_config(config)
        check_positive_int("batch_size", batch_size)
        max_length = config.max_position_embeddings if max_length is None else max_length
        check_positive_int("max_length", max_length)
        dtype = torch.float32 if dtype is None else dtype
        check_float_dtype("dtype", dtype)
        shape = (config.num_hidden_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, N_max, d)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, N_max, d)
        self.length = 0
        self.max_length = max_length

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def check_room(self, num_new: int) -> None:
        if self.length + num_new > self.max_length:
            raise ValueError(
                f"the KV cache holds at most max_length={self.max_length} tokens: it has {self.length}, "
                f"and {num_new} more came"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v: (B, H_kv, N, d)`` after the cached tokens; return all keys and values so far."""
        start, stop = self.length, self.length + k.shape[2]
        self.keys[layer, :, :, start:stop] = k
        self.values[layer, :, :, start:stop] = v
        return self.keys[layer, :, :, :stop], self.values[layer, :, :, :stop]  # each (B, H_kv, P + N, d)

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def check_fits(self, config: FalconConfig, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
        """Raise unless this cache was built for a model of ``config`` and ``batch_size`` rows.

        A cache of another model would fail with a broadcasting error, or worse be accepted: an
        ``H_kv = 4`` cache takes the keys of a multi-query model (``H_kv = 1``) by broadcasting,
        with 4 times the memory.
        """
        build = "build one with KVCache(model.config, batch_size, dtype=..., device=...) for the model that uses it"
        if self.values.shape != self.keys.shape:
            raise ValueError(
                f"cache.values must have the shape of cache.keys {tuple(self.keys.shape)}, "
                f"got {tuple(self.values.shape)}"
            )
        L, B, H_kv, _, d = self.keys.shape  # (L, B, H_kv, N_max, d)
        found = [
            (L, config.num_hidden_layers, f"{L} layers, the model num_hidden_layers={config.num_hidden_layers}"),
            (H_kv, config.num_kv_heads, f"{H_kv} key/value heads, the model num_kv_heads={config.num_kv_heads}"),
            (d, config.head_dim, f"head dimension {d}, the model head_dim={config.head_dim}"),
            (B, batch_size, f"batch size {B}, input_ids {batch_size} rows"),
        ]
        for got, want, what in found:
            if got != want:
                raise ValueError(f"cache must be built for this model and batch: it has {what}; {build}")
        if self.keys.dtype != dtype or self.values.dtype != dtype:
            raise TypeError(
                f"cache must be built for this model: it holds {self.keys.dtype}, the model's parameters are {dtype}; "
                f"{build}"
            )
        if self.keys.device != device or self.values.device != device:
            raise ValueError(
                f"cache must be built for this model: it is on device {self.keys.device}, the model on {device}; "
                f"{build}"
            )


# --------------------------------------------------------------------------
# Rotary position embeddings (rotate-half form)
# --------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (split in two halves)."""
    x1, x2 = x.chunk(2, dim=-1)  # each (..., d/2)
    return torch.cat((-x2, x1), dim=-1)  # (..., d)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype=torch.float32):
    """``cos, sin: (N, d)`` for integer ``positions: (N,)``.

    Frequencies ``theta_i = base^(-2i/d)``, i = 0 .. d/2 - 1 (RoFormer Eq. (15)); the angle
    ``m theta_i`` of position ``m`` is repeated for both halves, as ``rotate_half`` pairs
    dimension ``i`` with ``i + d/2``.
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=compute, device=positions.device) / head_dim)  # (d/2,)
    angles = positions.to(compute)[:, None] * inv_freq[None, :]  # (N, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (N, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: (B, heads, N, d)`` by the angles of its positions: ``x cos + rotate_half(x) sin``."""
    return x * cos + rotate_half(x) * sin  # (B, heads, N, d), RoFormer Eq. (34)


# --------------------------------------------------------------------------
# Attention, MLP, block, model
# --------------------------------------------------------------------------


def split_fused_qkv(fused: torch.Tensor, config: FalconConfig):
    """Split ``query_key_value`` output ``(B, N, (H + 2 H_kv) d)`` into ``q: (B, H, N, d)``, ``k, v: (B, H_kv, N, d)``.

    The three layouts of the released code (see the module docstring).
    """
    B, N, _ = fused.shape
    H, H_kv, d = config.num_attention_heads, config.num_kv_heads, config.head_dim
    if config.new_decoder_architecture:
        groups = fused.view(B, N, H_kv, H // H_kv + 2, d)  # (B, N, H_kv, G + 2, d)
        q = groups[:, :, :, :-2].reshape(B, N, H, d)  # (B, N, H, d), head h = g * G + i
        k, v = groups[:, :, :, -2], groups[:, :, :, -1]  # each (B, N, H_kv, d)
    elif H_kv == 1:
        heads = fused.view(B, N, H + 2, d)  # (B, N, H + 2, d)
        q, k, v = heads[:, :, :-2], heads[:, :, -2:-1], heads[:, :, -1:]  # (B, N, H, d), (B, N, 1, d) x 2
    else:
        triples = fused.view(B, N, H, 3, d)  # (B, N, H, 3, d)
        q, k, v = triples[:, :, :, 0], triples[:, :, :, 1], triples[:, :, :, 2]  # each (B, N, H, d)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, d), (B, H_kv, N, d) x 2


def _attend(q, k, v, attention: str) -> torch.Tensor:
    """Causal attention aligned to the end of the keys (KV cache: N_q <= N_k)."""
    if attention == "reference":
        return reference.attention(q, k, v, causal=True)
    if attention == "flash":
        backend = "triton" if q.device.type == "cuda" else "torch"
    else:
        backend = attention.removeprefix("flash_")
    return flash_attention(q, k, v, causal=True, backend=backend)


class FalconAttention(nn.Module):
    """Fused ``query_key_value``, rotary embeddings, causal attention, output projection ``dense``."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.config = config
        self.query_key_value = nn.Linear(config.hidden_size, config.qkv_features, bias=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, *, start: int, cache: KVCache | None, layer: int, attention: str, output_attentions: bool):
        B, N, C = x.shape
        q, k, v = split_fused_qkv(self.query_key_value(x), self.config)  # (B, H, N, d), (B, H_kv, N, d) x 2
        positions = torch.arange(start, start + N, device=x.device)  # (N,) absolute positions
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype=x.dtype)  # (N, d)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # rotate queries and keys, not values
        if cache is not None:
            k, v = cache.update(layer, k, v)  # each (B, H_kv, P + N, d)
        out = _attend(q, k, v, attention)  # (B, H, N, d)
        out = self.dense(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C)
        weights = reference.attention_weights(q, k, causal=True) if output_attentions else None  # (B, H, N, P + N)
        return out, weights


class FalconMLP(nn.Module):
    """``dense_4h_to_h(GELU(dense_h_to_4h(x)))``, 4x width, no biases."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size, bias=False)
        self.act = nn.GELU()
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))  # (B, N, 4C) inside, (B, N, C) out


class FalconDecoderLayer(nn.Module):
    """The parallel block: attention and MLP read the same normalized input, both added to the residual."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.config = config
        if config.new_decoder_architecture:
            self.ln_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
            self.ln_mlp = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        else:
            self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.self_attention = FalconAttention(config)
        self.mlp = FalconMLP(config)

    def forward(self, x, **attention_options):
        if self.config.new_decoder_architecture:
            attn_in, mlp_in = self.ln_attn(x), self.ln_mlp(x)  # each (B, N, C)
        else:
            attn_in = mlp_in = self.input_layernorm(x)  # (B, N, C), one LayerNorm for both
        attn_out, weights = self.self_attention(attn_in, **attention_options)  # (B, N, C)
        return x + attn_out + self.mlp(mlp_in), weights  # (B, N, C)


class FalconModel(nn.Module):
    """Token embeddings, ``L`` decoder layers, final LayerNorm ``ln_f`` (no position embeddings: rotary)."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(FalconDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, *, cache, attention, output_attentions):
        start = 0 if cache is None else cache.length
        x = self.word_embeddings(input_ids)  # (B, N, C)
        all_weights = []
        for layer, block in enumerate(self.h):
            x, weights = block(
                x, start=start, cache=cache, layer=layer, attention=attention, output_attentions=output_attentions
            )  # (B, N, C)
            all_weights.append(weights)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.ln_f(x), all_weights  # (B, N, C)


class FalconForCausalLM(nn.Module):
    """The language model: ``transformer`` (a :class:`FalconModel`) and ``lm_head`` tied to the embeddings."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        if not isinstance(config, FalconConfig):
            raise TypeError(f"config must be a FalconConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = FalconModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.lm_head.weight = self.transformer.word_embeddings.weight  # tied

    def _init_weights(self, module: nn.Module) -> None:
        """As the released code: normal(0, initializer_range) weights, LayerNorm weight 1 and bias 0."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_ids(self, input_ids) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, N), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one token per sequence, got shape {tuple(input_ids.shape)}")
        model_device = self.transformer.word_embeddings.weight.device
        if input_ids.device != model_device:
            raise ValueError(
                f"input_ids must be on the model's device ({model_device}), got {input_ids.device}: "
                f"move them with input_ids.to(device)"
            )
        low, high = input_ids.min().item(), input_ids.max().item()
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"input_ids must be token ids in [0, vocab_size={self.config.vocab_size}), "
                f"got values in [{low}, {high}]"
            )

    @staticmethod
    def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> None:
        """``attention_mask: (B, N)``, 1 = a real token, 0 = padding; padding is refused (module docstring)."""
        if attention_mask is None:
            return
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
        if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
            raise TypeError(
                f"attention_mask must be a bool or integer tensor (1 = a real token, 0 = padding), "
                f"got {attention_mask.dtype}"
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if attention_mask.device != input_ids.device:
            raise ValueError(
                f"attention_mask must be on the device of input_ids ({input_ids.device}), got {attention_mask.device}"
            )
        mask = attention_mask.long()  # (B, N)
        low, high = mask.min().item(), mask.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"attention_mask must hold 0 and 1 (1 = a real token, 0 = padding), got values in [{low}, {high}]"
            )
        padded_rows = (mask == 0).any(dim=1).nonzero().flatten().tolist()
        if padded_rows:
            rows = ", ".join(map(str, padded_rows))
            raise ValueError(
                f"attention_mask marks padding in {'row' if len(padded_rows) == 1 else 'rows'} {rows}: padded "
                f"batches are not supported (padding would be attended to and would shift the row's positions, "
                f"so the row would decode differently). Pass one prompt at a time, or batch prompts of equal length"
            )

    @staticmethod
    def _check_attention(attention) -> None:
        if not isinstance(attention, str) or attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")

    def _check_cache(self, cache: KVCache, batch_size: int, num_new: int) -> None:
        weight = self.transformer.word_embeddings.weight
        cache.check_fits(self.config, batch_size, weight.dtype, weight.device)
        cache.check_room(num_new)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise ValueError(
                "cache: a forward pass with a KV cache must run under torch.no_grad() (generate does): the cache "
                "is written in place, so autograd cannot differentiate through it. The cache is for decoding; "
                "to train, call the model on the whole sequence without a cache (one pass gives the logits of "
                "every position)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention: str = "flash",
        output_attentions: bool = False,
        attention_mask: torch.Tensor | None = None,
    ):
        """Logits ``(B, N, V)`` for ``input_ids: (B, N)``; position ``i`` predicts token ``i + 1``.

        Args:
            input_ids: ``(B, N)`` token ids in ``[0, vocab_size)``, on the model's device.
            cache: a :class:`KVCache` holding ``P`` earlier tokens; the ``N`` new tokens take
                positions ``P .. P + N - 1``, attend to the cached keys and are appended. Built
                for this model (layers, key/value heads, head dimension, dtype, device) and batch;
                only under ``torch.no_grad()`` (the cache is written in place: not differentiable).
            attention: one of :data:`ATTENTIONS`.
            output_attentions: also return, per layer, the softmax weights ``(B, H, N, P + N)``
                (dense, from :func:`attnlib.reference.attention_weights`; for figures).
            attention_mask: optional ``(B, N)``, 1 = a real token, 0 = padding. Padding is not
                supported and refused; all ones changes nothing.

        Returns:
            ``logits``, or ``(logits, weights)`` with ``output_attentions``.
        """
        self._check_ids(input_ids)
        self._check_attention(attention)
        check_flag("output_attentions", output_attentions)
        self._check_attention_mask(attention_mask, input_ids)
        B, N = input_ids.shape
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        start = 0 if cache is None else cache.length
        if start + N > self.config.max_position_embeddings:
            raise ValueError(
                f"the sequence must fit max_position_embeddings={self.config.max_position_embeddings}: "
                f"got {start} cached + {N} new tokens"
            )
        if cache is not None:
            self._check_cache(cache, B, N)
        hidden, weights = self.transformer(
            input_ids, cache=cache, attention=attention, output_attentions=output_attentions
        )  # (B, N, C)
        logits = self.lm_head(hidden)  # (B, N, V)
        return (logits, weights) if output_attentions else logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        use_cache: bool = True,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        attention: str = "flash",
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue ``input_ids: (B, N)`` by ``max_new_tokens`` tokens; returns ``(B, N + max_new_tokens)``.

        Greedy by default (the most likely token). With ``do_sample``: divide the logits by
        ``temperature``, keep the ``top_k`` largest (if given) and sample, from a generator seeded
        with ``seed``; these three are refused without ``do_sample`` (they would be ignored). With
        ``use_cache`` the prompt fills a :class:`KVCache` once and each new token costs one
        position; without it every step recomputes the whole prefix. Every row of ``input_ids``
        is read as real tokens: an ``attention_mask`` that marks padding is refused.
        """
        self._check_ids(input_ids)
        check_positive_int("max_new_tokens", max_new_tokens)
        check_flag("use_cache", use_cache)
        check_flag("do_sample", do_sample)
        self._check_attention(attention)
        self._check_attention_mask(attention_mask, input_ids)
        check_real("temperature", temperature)
        if top_k is not None:
            check_positive_int("top_k", top_k)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
        if not do_sample:
            for name, value, default in (
                ("temperature", temperature, 1.0),
                ("top_k", top_k, None),
                ("seed", seed, None),
            ):
                if value != default:
                    raise ValueError(
                        f"{name}={value!r} only acts with do_sample=True (sampling); pass do_sample=True, "
                        f"or leave {name} out for greedy decoding"
                    )
        B, N = input_ids.shape
        if N + max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt length + max_new_tokens must be at most max_position_embeddings="
                f"{self.config.max_position_embeddings}, got {N} + {max_new_tokens} = {N + max_new_tokens}"
            )
        generator = None
        if do_sample:
            generator = torch.Generator(device=input_ids.device)
            generator.manual_seed(0 if seed is None else seed)

        tokens = input_ids
        cache = None
        if use_cache:
            dtype = self.transformer.word_embeddings.weight.dtype
            cache = KVCache(self.config, B, N + max_new_tokens, dtype=dtype, device=input_ids.device)
        step_input = tokens  # the prompt first; with a cache, then one token per step
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else tokens, cache=cache, attention=attention)[:, -1]  # (B, V)
            next_token = self._choose(logits, do_sample, temperature, top_k, generator)  # (B, 1)
            tokens = torch.cat([tokens, next_token], dim=1)  # (B, N + t + 1)
            step_input = next_token
        return tokens

    @staticmethod
    def _choose(logits, do_sample, temperature, top_k, generator) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        logits = logits.float() / temperature  # (B, V)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1), the k-th largest
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator)  # (B, 1)
