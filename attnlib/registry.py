"""The registry of methods: one row per implemented method, plus the survey's map.

The comparison chapter and ``attnlib.bench`` iterate :data:`METHODS`. Each row
names its code by import path ("module:attribute") and is resolved only when
asked for, so importing the registry imports no method (no work at import time).

To add a method, append a :class:`Method` to ``METHODS`` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

CATEGORIES = {
    "baseline": "ベースライン",
    "sparsification": "attentionの間引き",
    "approximation": "近似計算",
    "computation optimization": "計算過程の最適化",
    # families the survey note does not have (its three families are the three above)
    "beyond the survey": "サーベイの先",
}
DOMAINS = ("language", "vision", "any")
# What a method computes, measured against softmax attention over all pairs (the comparison chapter's
# "exact" column reads it). Only "exact" gives the dense reference's output for the same weights.
EXACTNESS = {
    "exact": "softmax attention over all pairs, on another schedule",
    "restricted pattern": "softmax attention over a subset of the pairs (exact for that pattern)",
    "derived keys": "softmax attention over fewer keys made from the input (pooled or sampled)",
    "shared heads": "softmax attention with keys and values shared between query heads (MQA/GQA)",
    "another mixer": "a different token mixer in attention's place",
    "another kernel": "attention normalized with another similarity kernel (a feature map) in exp's place",
    "random features": "an unbiased random-feature estimate of softmax's kernel exp(q.k), then normalized",
    "projected keys": "softmax attention over k keys and values projected from all N along the sequence (low rank)",
}
# Whether a method approximates softmax attention (the linear-attention chapter's column): "yes" (the
# error can be made small: a low-rank projection, Linformer's Theorem 2), "in expectation" (an unbiased
# estimate of softmax's kernel, Performer), "no" (a different model in attention's place). None where
# the question does not arise (exact methods, restricted patterns, derived keys, shared heads).
APPROXIMATES_SOFTMAX = ("yes", "in expectation", "no")


def _resolve(path: str | None):
    if path is None:
        return None
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class Method:
    name: str  # registry key, e.g. "bigbird"
    title: str  # display name, e.g. "BigBird sparse attention"
    category: str  # a key of CATEGORIES
    domain: str  # one of DOMAINS
    paper: str  # authors, title, venue year
    url: str  # the paper (arXiv)
    time_cost: str  # O-notation in the sequence length N (and head dim d)
    memory_cost: str  # extra memory beyond q, k, v, out
    attention: str | None  # "module:function" with signature f(q, k, v, *, causal=False, ...) -> out
    module: str  # "module:Class", the nn.Module block
    pattern: str | None  # "module:function" returning a bool (N_q, N_k) or (H, N_q, N_k) mask
    chapter: str  # notebook file name under chapters/en and chapters/ja
    # keyword arguments for attention() in benchmarks and the comparison chapter
    bench_kwargs: dict = field(default_factory=dict)
    # Vision token mixers: "module:function" with signature
    #   make_mixer(dim, num_heads, height, width) -> nn.Module mapping x: (B, height, width, dim) to the same shape.
    # attnlib.bench --kind vision builds the mixer with this and times it on one feature map;
    # dense and sdpa provide a global multi-head self-attention mixer of the same C and heads.
    make_mixer: str | None = None
    # a key of EXACTNESS: what the method computes, compared with softmax attention over all pairs
    exactness: str | None = None
    # one of APPROXIMATES_SOFTMAX, or None where the question does not arise
    approximates_softmax: str | None = None
    # True when attention() refuses causal=False: the method has no bidirectional form (a scan
    # forward in time); a model that attends both ways runs it causal instead
    causal_only: bool = False

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {sorted(CATEGORIES)}, got {self.category!r}")
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.exactness not in EXACTNESS:
            raise ValueError(f"exactness must be one of {sorted(EXACTNESS)}, got {self.exactness!r}")
        if self.approximates_softmax not in (None, *APPROXIMATES_SOFTMAX):
            raise ValueError(
                f"approximates_softmax must be None or one of {APPROXIMATES_SOFTMAX}, got {self.approximates_softmax!r}"
            )

    def attention_fn(self) -> Callable | None:
        """The attention kernel, imported on first use."""
        return _resolve(self.attention)

    def module_cls(self) -> type:
        """The ``nn.Module`` block class, imported on first use."""
        return _resolve(self.module)

    def mixer_factory(self) -> Callable | None:
        """The vision mixer factory ``(dim, num_heads, height, width) -> nn.Module``, imported on first use."""
        return _resolve(self.make_mixer)

    def pattern_fn(self) -> Callable | None:
        """The pattern function, imported on first use (None for exact methods)."""
        return _resolve(self.pattern)


METHODS: list[Method] = [
    Method(
        name="dense",
        title="Dense softmax attention",
        category="baseline",
        domain="any",
        paper="Vaswani et al., Attention Is All You Need, NeurIPS 2017",
        url="https://arxiv.org/abs/1706.03762",
        time_cost="O(N^2 d)",
        memory_cost="O(N^2)",
        attention="attnlib.reference:attention",
        module="attnlib.reference:MultiHeadSelfAttention",
        pattern=None,
        exactness="exact",
        chapter="00_introduction.ipynb",
        make_mixer="attnlib.reference:dense_global_mixer",
    ),
    Method(
        name="sdpa",
        title="PyTorch scaled_dot_product_attention (fused)",
        category="baseline",
        domain="any",
        paper="PyTorch torch.nn.functional.scaled_dot_product_attention",
        url="https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html",
        time_cost="O(N^2 d)",
        memory_cost="O(N) (fused kernel)",
        attention="attnlib.reference:sdpa_attention",
        module="attnlib.reference:MultiHeadSelfAttention",
        pattern=None,
        exactness="exact",
        chapter="00_introduction.ipynb",
        make_mixer="attnlib.reference:sdpa_global_mixer",
    ),
    Method(
        name="bigbird",
        title="BigBird block-sparse attention (global + window + random blocks)",
        category="sparsification",
        domain="language",
        paper="Zaheer et al., Big Bird: Transformers for Longer Sequences, NeurIPS 2020",
        url="https://arxiv.org/abs/2007.14062",
        time_cost="O(N (r + 5) b d), b = block size, r = random blocks",
        memory_cost="O(N (r + 5) b d) gathered key/value blocks",
        attention="attnlib.sparse.bigbird:bigbird_attention",
        module="attnlib.sparse.bigbird:BigBirdSelfAttention",
        pattern="attnlib.sparse.bigbird:bigbird_pattern",
        exactness="restricted pattern",
        chapter="05_bigbird.ipynb",
        # the paper's base ITC setting: 64-token blocks, 3 random blocks; needs N >= 449
        bench_kwargs={"block_size": 64, "num_random_blocks": 3, "seed": 0},
    ),
    Method(
        name="reformer",
        title="Reformer LSH attention",
        category="sparsification",
        domain="language",
        paper="Kitaev, Kaiser, Levskaya, Reformer: The Efficient Transformer, ICLR 2020",
        url="https://arxiv.org/abs/2001.04451",
        # R hash rounds, chunk size m; the default n_buckets ~ 2N/m makes hashing ~ R N^2 d / m
        time_cost="O(R N m d + R N n_buckets d + R N log N)",
        memory_cost="O(N m + R N d)",
        attention="attnlib.sparse.reformer:lsh_attention_qkv",
        module="attnlib.sparse.reformer:ReformerSelfAttention",
        pattern="attnlib.sparse.reformer:lsh_pattern",
        exactness="restricted pattern",
        chapter="06_reformer.ipynb",
        # shared-QK: q is the shared query/key, k is unused; n_buckets defaults to 2 * ceil(N / 64)
        bench_kwargs={"n_hashes": 4, "chunk_size": 64, "seed": 0},
    ),
    Method(
        name="flash",
        title="FlashAttention (tiles and online softmax, exact)",
        category="computation optimization",
        domain="any",
        paper="Dao et al., FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness, NeurIPS 2022",
        url="https://arxiv.org/abs/2205.14135",
        time_cost="O(N^2 d), HBM accesses O(N^2 d^2 / M) for SRAM size M",
        memory_cost="O(N) (one B_r x B_c tile of scores per head)",
        attention="attnlib.optim.flash:flash_attention",
        module="attnlib.reference:MultiHeadSelfAttention",
        pattern=None,
        exactness="exact",
        chapter="10_flash_attention.ipynb",
        # the PyTorch tiles, on any device: "auto" would run the Triton kernel in Triton's (slow)
        # interpreter on a CPU where TRITON_INTERPRET=1 is set; the kernels have their own benchmark
        bench_kwargs={"backend": "torch", "block_q": 256, "block_k": 512},
    ),
    Method(
        name="bigbird_flash",
        title="BigBird's pattern inside block-sparse FlashAttention (block mask: full, partial, empty tiles)",
        category="sparsification",
        domain="language",
        paper="Dong et al., Flex Attention: A Programming Model for Generating Optimized Attention Kernels, 2024",
        url="https://arxiv.org/abs/2412.05496",
        time_cost="O(N (r + 5) b d) for BigBird's pattern: O(visited tiles x B_r B_c d) in general",
        memory_cost="O(N) (lists of tiles and the element masks of partial tiles)",
        attention="attnlib.optim.block_sparse:bigbird_flash_attention",
        module="attnlib.sparse.bigbird:BigBirdSelfAttention",
        pattern="attnlib.sparse.bigbird:bigbird_pattern",
        exactness="restricted pattern",
        chapter="14_block_sparse_flash.ipynb",
        # BigBird's bench setting; the PyTorch tiles on a CPU ("auto" would pick Triton's interpreter there)
        bench_kwargs={"block_size": 64, "num_random_blocks": 3, "seed": 0, "backend": "torch"},
    ),
    Method(
        name="falcon",
        title="Falcon: multi-query / grouped-query attention on FlashAttention, with a KV cache",
        category="computation optimization",
        domain="language",
        paper="Almazrouei et al., The Falcon Series of Open Language Models, arXiv 2023",
        url="https://arxiv.org/abs/2311.16867",
        time_cost="O(N^2 d) per sequence; O(N d) per decoded token with the KV cache",
        memory_cost="KV cache 2 L B H_kv N d elements (H_kv = 1: H times smaller than multi-head)",
        # the attention kernel Falcon runs on; the model (attnlib.models.falcon) has its own decoding benchmark,
        # benchmarks/falcon_decode.py
        attention="attnlib.optim.flash:flash_attention",
        module="attnlib.models.falcon:FalconForCausalLM",
        pattern=None,
        exactness="shared heads",
        chapter="12_falcon.ipynb",
        bench_kwargs={"backend": "torch", "block_q": 256, "block_k": 512},
    ),
    Method(
        name="ring",
        title="Ring attention (sequence split across ranks, exact)",
        category="computation optimization",
        domain="any",
        paper="Liu, Zaharia, Abbeel, Ring Attention with Blockwise Transformers for Near-Infinite Context, ICLR 2024",
        url="https://arxiv.org/abs/2310.01889",
        time_cost="O(N^2 d / P) per rank, P ranks; P - 1 hops of O(N d / P) key/value bytes each",
        memory_cost="O(N / P) per rank (shards, two key/value buffers, FlashAttention tiles)",
        # the one-process simulation of the schedule (same blocks and merges, no communication):
        # ring_attention itself needs a process group, see the chapter and benchmarks/ring_cpu.py
        attention="attnlib.optim.ring:simulated_ring_attention",
        module="attnlib.reference:MultiHeadSelfAttention",
        pattern=None,
        exactness="exact",
        chapter="15_ring_attention.ipynb",
        bench_kwargs={"world_size": 4, "layout": "zigzag"},
    ),
    Method(
        name="pvt",
        title="PVT spatial-reduction attention",
        category="sparsification",
        domain="vision",
        paper="Wang et al., Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction "
        "without Convolutions, ICCV 2021",
        url="https://arxiv.org/abs/2102.12122",
        time_cost="O(N^2 C / R^2 + N C^2), R = reduction ratio (8 here)",
        memory_cost="O(N^2 / R^2) scores (or O(N) fused)",
        attention=None,
        module="attnlib.sparse.pvt:SpatialReductionAttention",
        pattern="attnlib.sparse.pvt:pvt_key_cells",
        exactness="derived keys",
        chapter="03_pvt.ipynb",
        make_mixer="attnlib.sparse.pvt:pvt_mixer",
    ),
    Method(
        name="swin",
        title="Swin shifted-window attention (W-MSA / SW-MSA)",
        category="sparsification",
        domain="vision",
        paper="Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021",
        url="https://arxiv.org/abs/2103.14030",
        time_cost="O(N M^2 C + N C^2), M = window side (7 here)",
        memory_cost="O(N M^2) scores (windows of M^2 x M^2)",
        attention=None,  # swin_attention needs the map's height and width: see the module
        module="attnlib.sparse.swin:SwinWindowAttention2d",
        # swin_pattern(height, width, window_size, shift_size) -> (N, N)
        pattern="attnlib.sparse.swin:swin_pattern",
        exactness="restricted pattern",
        chapter="01_swin.ipynb",
        # the shifted layer (SW-MSA), window 7, shift 3
        make_mixer="attnlib.sparse.swin:swin_mixer",
    ),
    Method(
        name="maxvit",
        title="MaxViT block and grid attention",
        category="sparsification",
        domain="vision",
        paper="Tu et al., MaxViT: Multi-Axis Vision Transformer, ECCV 2022",
        url="https://arxiv.org/abs/2204.01697",
        time_cost="O(N P^2 C + N C^2), P = block or grid side (7 here)",
        memory_cost="O(N P^2) scores (groups of P^2 x P^2)",
        attention=None,  # block_attention / grid_attention need the map's height and width
        module="attnlib.sparse.maxvit:MaxViTPartitionAttention2d",
        # maxvit_pattern(height, width, partition_type, partition_size) -> (N, N)
        pattern="attnlib.sparse.maxvit:maxvit_pattern",
        exactness="restricted pattern",
        chapter="02_maxvit.ipynb",
        # one grid layer, G = 7
        make_mixer="attnlib.sparse.maxvit:maxvit_mixer",
    ),
    Method(
        name="dat",
        title="DAT deformable attention",
        category="sparsification",
        domain="vision",
        paper="Xia et al., Vision Transformer with Deformable Attention, CVPR 2022",
        url="https://arxiv.org/abs/2201.00520",
        time_cost="O(N^2 C / r^2 + N C^2), r = stride of the reference grid (8 here)",
        memory_cost="O(N^2 / r^2) scores and position bias",
        attention=None,
        module="attnlib.sparse.dat:DeformableAttention",
        pattern="attnlib.sparse.dat:bilinear_weights",
        exactness="derived keys",
        chapter="04_dat.ipynb",
        make_mixer="attnlib.sparse.dat:dat_mixer",
    ),
    Method(
        name="mixer",
        title="MLP-Mixer token-mixing MLP",
        category="approximation",
        domain="vision",
        paper="Tolstikhin et al., MLP-Mixer: An all-MLP Architecture for Vision, NeurIPS 2021",
        url="https://arxiv.org/abs/2105.01601",
        # D_S = token-mixing width (C / 2 here, timm's tie); its weights are (D_S, N): one size of map
        time_cost="O(N D_S C)",
        memory_cost="O(N D_S) weights + O(C D_S) hidden per image",
        attention=None,
        module="attnlib.approx.mixer:MixerBlock",
        pattern=None,
        exactness="another mixer",
        chapter="07_mlp_mixer.ipynb",
        make_mixer="attnlib.approx.mixer:make_mixer",
        approximates_softmax="no",
    ),
    Method(
        name="poolformer",
        title="PoolFormer average pooling (MetaFormer)",
        category="approximation",
        domain="vision",
        paper="Yu et al., MetaFormer Is Actually What You Need for Vision, CVPR 2022",
        url="https://arxiv.org/abs/2111.11418",
        time_cost="O(K^2 N C), K = pool size (3)",
        memory_cost="O(N C), no parameters",
        attention=None,
        module="attnlib.approx.poolformer:PoolFormerBlock",
        pattern=None,
        exactness="another mixer",
        chapter="08_poolformer.ipynb",
        make_mixer="attnlib.approx.poolformer:make_mixer",
        approximates_softmax="no",
    ),
    Method(
        name="coat",
        title="CoaT factorized attention with convolutional relative position encoding",
        category="approximation",
        domain="vision",
        paper="Xu, Xu, Chang, Tu, Co-Scale Conv-Attentional Image Transformers, ICCV 2021",
        url="https://arxiv.org/abs/2104.06399",
        time_cost="O(N C^2 / h + N C k^2), k = depthwise kernel (3, 5, 7)",
        memory_cost="O(N C) (a d x d context per head, never N x N)",
        attention=None,
        module="attnlib.approx.coat:FactorAttConvRelPosEnc",
        pattern=None,
        exactness="another mixer",
        chapter="09_coat.ipynb",
        make_mixer="attnlib.approx.coat:make_mixer",
        approximates_softmax="no",
    ),
    Method(
        name="linear",
        title="Linear attention (feature map elu + 1, the product reordered)",
        category="approximation",
        domain="any",
        paper="Katharopoulos, Vyas, Pappas, Fleuret, Transformers are RNNs: Fast Autoregressive Transformers "
        "with Linear Attention, ICML 2020",
        url="https://arxiv.org/abs/2006.16236",
        # m = feature dimension (= d for elu + 1); causal: chunked, C = chunk size (64)
        time_cost="O(N m d); causal chunked O(N C m + N m d)",
        memory_cost="O(m d) state per head (no N x N); decoding: constant per token",
        attention="attnlib.approx.linear:linear_attention",
        module="attnlib.approx.linear:LinearSelfAttention",
        pattern=None,
        exactness="another kernel",
        approximates_softmax="no",
        chapter="16_linear_attention.ipynb",
        bench_kwargs={"chunk_size": 64},
        make_mixer="attnlib.approx.linear:make_mixer",
    ),
    Method(
        name="performer",
        title="Performer (FAVOR+: positive orthogonal random features)",
        category="approximation",
        domain="any",
        paper="Choromanski et al., Rethinking Attention with Performers, ICLR 2021",
        url="https://arxiv.org/abs/2009.14794",
        time_cost="O(N m d), m = random features (256 here)",
        memory_cost="O(m d) state per head (no N x N)",
        attention="attnlib.approx.performer:performer_attention",
        module="attnlib.approx.performer:PerformerSelfAttention",
        pattern=None,
        exactness="random features",
        approximates_softmax="in expectation",
        chapter="16_linear_attention.ipynb",
        bench_kwargs={"num_features": 256, "orthogonal": True, "seed": 0},
        make_mixer="attnlib.approx.performer:make_mixer",
    ),
    Method(
        name="linformer",
        title="Linformer (keys and values projected along the sequence to k rows)",
        category="approximation",
        domain="any",
        paper="Wang, Li, Khabsa, Fang, Ma, Linformer: Self-Attention with Linear Complexity, arXiv 2020",
        url="https://arxiv.org/abs/2006.04768",
        time_cost="O(N k d), k = projected length (256 here); not causal",
        memory_cost="O(N k) scores (O(N) fused), (k, N) projections E, F",
        attention="attnlib.approx.linformer:linformer_attention",
        module="attnlib.approx.linformer:LinformerSelfAttention",
        pattern=None,
        exactness="projected keys",
        approximates_softmax="yes",
        chapter="16_linear_attention.ipynb",
        # random projections (Theorem 2's N(0, 1/k)) drawn from the seed, in blocks; in a model E, F are learned
        bench_kwargs={"proj_len": 256, "seed": 0},
        make_mixer="attnlib.approx.linformer:make_mixer",
    ),
    Method(
        name="ssd",
        title="State-space duality (Mamba-2's SSD, chunked scan)",
        category="beyond the survey",
        domain="language",
        paper="Dao, Gu, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
        "Structured State Space Duality, ICML 2024",
        url="https://arxiv.org/abs/2405.21060",
        time_cost="O(N Q (n + d) + N n d): O(N), Q = chunk size, n = state size",
        memory_cost="O(N Q) within chunks; decoding: an O(1) state (n x d per head)",
        attention="attnlib.ssm.ssd:ssd_attention",
        module="attnlib.ssm.mamba2:Mamba2",
        pattern=None,
        exactness="another mixer",
        approximates_softmax="no",
        chapter="17_state_space.ipynb",
        bench_kwargs={"chunk_size": 64},
        causal_only=True,
    ),
]


def get(name: str) -> Method:
    """The registered method called ``name``; ValueError listing the names otherwise."""
    for method in METHODS:
        if method.name == name:
            return method
    raise ValueError(f"no method named {name!r}; registered: {[m.name for m in METHODS]}")


def by_category(category: str) -> list[Method]:
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {sorted(CATEGORIES)}, got {category!r}")
    return [m for m in METHODS if m.category == category]


@dataclass(frozen=True)
class SurveyEntry:
    """One row of Table 1 of the survey note the book follows, 「self-attentionを代替する各種手法について」.

    The note's columns: task domain, family (Reformer is listed under two), mechanism and
    representative architecture. ``registry_names`` are the methods of attnlib that implement
    the row: the note's FlashAttention row (architecture: Falcon) is two chapters here, the
    exact kernel (``flash``) and the model that runs on it (``falcon``).
    """

    domain: str  # "vision" or "language" (画像 / 言語)
    categories: tuple[str, ...]  # keys of CATEGORIES, as the note lists them
    mechanism: str  # the note's 手法 column
    architecture: str  # the note's 代表的なアーキテクチャ column
    registry_names: tuple[str, ...]  # keys of METHODS that implement the row

    def __post_init__(self):
        for category in self.categories:
            if category not in CATEGORIES:
                raise ValueError(f"category must be one of {sorted(CATEGORIES)}, got {category!r}")

    @property
    def category(self) -> str:
        """The first family the note gives (the one the book files the chapter under)."""
        return self.categories[0]

    @property
    def implemented(self) -> bool:
        names = {m.name for m in METHODS}
        return all(name in names for name in self.registry_names)


SURVEY: list[SurveyEntry] = [  # the note's Table 1, in its order
    SurveyEntry("vision", ("sparsification",), "Spatial-reduction attention", "PVT", ("pvt",)),
    SurveyEntry("vision", ("sparsification",), "Block / grid attention", "MaxViT", ("maxvit",)),
    SurveyEntry("vision", ("sparsification",), "Shifted window", "Swin Transformer", ("swin",)),
    SurveyEntry("vision", ("sparsification",), "Deformable attention", "DAT", ("dat",)),
    SurveyEntry("vision", ("approximation",), "MLP", "MLP-Mixer", ("mixer",)),
    SurveyEntry("vision", ("approximation",), "Mean pooling", "PoolFormer", ("poolformer",)),
    SurveyEntry("vision", ("approximation",), "Factorized attention", "CoaT", ("coat",)),
    SurveyEntry("language", ("sparsification",), "Sparse attention", "BigBird", ("bigbird",)),
    SurveyEntry(
        "language", ("sparsification", "approximation"), "Locality-sensitive hashing", "Reformer", ("reformer",)
    ),
    SurveyEntry("language", ("computation optimization",), "FlashAttention", "Falcon", ("flash", "falcon")),
]


def beyond_the_survey() -> list[Method]:
    """Registered methods that no row of the survey's table covers (where the book goes further)."""
    covered = {name for entry in SURVEY for name in entry.registry_names}
    return [m for m in METHODS if m.category != "baseline" and m.name not in covered]
