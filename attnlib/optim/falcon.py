"""Temporary: kept until the chapters import from the new path, :mod:`attnlib.models.falcon`.

The Falcon model is a language model built on the kernels, not a kernel: it lives in
``attnlib/models/``. This module only re-exports its public names.
"""

from ..models.falcon import (  # noqa: F401
    ATTENTIONS,
    FalconAttention,
    FalconConfig,
    FalconDecoderLayer,
    FalconForCausalLM,
    FalconMLP,
    FalconModel,
    KVCache,
    apply_rotary,
    kv_cache_bytes,
    rotary_cos_sin,
    rotate_half,
    split_fused_qkv,
)
