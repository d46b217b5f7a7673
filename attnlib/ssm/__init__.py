"""State-space models: the SSD model of Mamba-2 (three algorithms and a Triton kernel) and a Mamba-2 block.

Modules: :mod:`attnlib.ssm.ssd` (the model, its recurrent, quadratic and chunked algorithms, the
one-token step, the decays of Mamba-2, RetNet and linear attention), :mod:`attnlib.ssm.ssd_triton`
(the chunked forward as a Triton kernel; imports triton) and :mod:`attnlib.ssm.mamba2` (the block).
"""

from .mamba2 import Mamba2, RMSNormGated
from .ssd import (
    ALGORITHMS,
    DECAYS,
    chunk_states,
    decay_mask,
    intra_chunk_output,
    linear_attention_decay,
    mamba2_decay,
    naive_decay_mask,
    pass_states,
    retnet_decay,
    retnet_gammas,
    run_ssd,
    segsum,
    ssd_attention,
    ssd_chunked,
    ssd_matrix,
    ssd_quadratic,
    ssd_recurrent,
    ssd_step,
    state_bytes,
    state_to_output,
)

__all__ = [
    "ALGORITHMS",
    "DECAYS",
    "Mamba2",
    "RMSNormGated",
    "chunk_states",
    "decay_mask",
    "intra_chunk_output",
    "linear_attention_decay",
    "mamba2_decay",
    "naive_decay_mask",
    "pass_states",
    "retnet_decay",
    "retnet_gammas",
    "segsum",
    "run_ssd",
    "ssd_attention",
    "ssd_chunked",
    "ssd_matrix",
    "ssd_quadratic",
    "ssd_recurrent",
    "ssd_step",
    "state_bytes",
    "state_to_output",
]
