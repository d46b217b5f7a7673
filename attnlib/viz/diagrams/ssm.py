"""Schematics of the state-space chapter: the decay mask beside a causal mask, and the chunked algorithm's steps.

* :func:`duality` - a causal attention mask beside the decay mask ``L`` of the same length, drawn
  from :func:`attnlib.ssm.ssd.decay_mask`.
* :func:`chunk_bounds` - the token range of each chunk of ``chunk_size`` tokens (the last one may be
  shorter), as :func:`attnlib.ssm.ssd.ssd_chunked` cuts the sequence.
* :func:`step_blocks` - which ``(row chunk i, column chunk j)`` blocks of ``L`` each of the four steps
  of the chunked algorithm works on, and :func:`block_mask` the ``(N, N)`` element mask of the diagonal
  or off-diagonal blocks.
* :func:`chunked_steps` - the four steps drawn on the ``N x N`` matrix, one panel each.

The four steps (Mamba-2, Section 6; :mod:`attnlib.ssm.ssd`): 1. the diagonal blocks (``Y_diag``,
:func:`~attnlib.ssm.ssd.intra_chunk_output`); every block below them factors as
``(decay from chunk i's start to token t) x (decays of the chunks between) x (decay from token s
to chunk j's end)`` times ``C_t . B_s``: 2. the right factor, one state ``S_j`` per column chunk
(:func:`~attnlib.ssm.ssd.chunk_states`); 3. the middle factor, the recurrence over chunks
(:func:`~attnlib.ssm.ssd.pass_states`: block ``(i, j)`` crosses ``i - j - 1`` whole chunks);
4. the left factor, the state ``h_i`` entering row chunk ``i`` read by ``C``
(:func:`~attnlib.ssm.ssd.state_to_output`, ``Y_off``). Drawn blocks carry a ``gid``
``"block STEP,i,j"`` (their labels ``"label STEP,i,j"``) so that tests can read the figure back.

Chapter: "State-space models" (chapters/*/17_state_space.ipynb).
"""

from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_tensor
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure, score_matrix_axes

__all__ = ["STEPS", "chunk_bounds", "step_blocks", "block_mask", "duality", "chunked_steps"]

FONT_SIZE = 12  # readable when a 6-inch figure shrinks to a phone's column
MAX_TOKENS = 64  # every token is a cell of the drawing
STEPS = ("intra_chunk", "chunk_states", "pass_states", "state_to_output")
CHUNK_COLORS = [CATEGORY_COLORS[index] for index in (1, 2, 3, 4, 5, 6, 7, 10)]


def _check_sizes(N: int, chunk_size: int) -> None:
    check_positive_int("N", N)
    check_positive_int("chunk_size", chunk_size)
    if N > MAX_TOKENS:
        raise ValueError(f"N must be at most {MAX_TOKENS} to draw every token, got {N}")


def chunk_bounds(N: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: chunk ``c`` holds tokens ``start .. stop - 1``; the last may be shorter.

    The cut of :func:`attnlib.ssm.ssd.ssd_chunked` (which pads the last chunk with tokens that
    change nothing and cuts them off again).
    """
    check_positive_int("N", N)
    check_positive_int("chunk_size", chunk_size)
    return [(start, min(start + chunk_size, N)) for start in range(0, N, chunk_size)]


def step_blocks(N: int, chunk_size: int) -> dict[str, list[tuple[int, int]]]:
    """The ``(i, j)`` chunk blocks of ``L`` (row chunk ``i``, column chunk ``j``) each step works on.

    ``"intra_chunk"``: the diagonal blocks ``(i, i)``. The three other steps share the blocks below
    the diagonal, ``i > j``, each computing one factor of them: ``"chunk_states"`` the right one (one
    state per column chunk ``j``), ``"pass_states"`` the middle one (the decay of the ``i - j - 1``
    chunks between), ``"state_to_output"`` the left one (one entering state per row chunk ``i``).
    """
    c = len(chunk_bounds(N, chunk_size))
    below = [(i, j) for i in range(c) for j in range(i)]
    return {
        "intra_chunk": [(i, i) for i in range(c)],
        "chunk_states": list(below),
        "pass_states": list(below),
        "state_to_output": list(below),
    }


def block_mask(N: int, chunk_size: int, part: str) -> torch.Tensor:
    """The ``(N, N)`` bool mask of the entries of ``L`` in the ``"diagonal"`` or ``"off_diagonal"`` blocks.

    Their sum is the whole causal triangle: ``L o diagonal`` gives step 1's output, ``L o off_diagonal``
    steps 2-4's (``(L o mask o C B^T) X``).
    """
    if part not in ("diagonal", "off_diagonal"):
        raise ValueError(f"part must be 'diagonal' or 'off_diagonal', got {part!r}")
    check_positive_int("N", N)
    check_positive_int("chunk_size", chunk_size)
    chunk = torch.arange(N) // chunk_size  # (N,) the chunk of each token
    same = chunk[:, None] == chunk[None, :]
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    return causal & same if part == "diagonal" else causal & ~same


def duality(log_a: torch.Tensor, *, lang: str = "en"):
    """A causal attention mask (1 on and below the diagonal) beside the decay mask ``L = exp(segsum(log_a))``.

    ``log_a: (N,)`` one sequence's log-decays (``<= 0``), ``N <= 64``. Both panels share one colour
    scale from 0 to 1; the images carry ``gid`` ``"causal mask"`` and ``"decay mask"``. Returns the Figure.
    """
    from ...ssm import ssd

    check_language(lang)
    check_tensor("log_a", log_a, ndim=1)
    N = log_a.shape[0]
    _check_sizes(N, 1)
    if not bool(((log_a <= 0) & torch.isfinite(log_a)).all()):
        raise ValueError("log_a must be finite and <= 0 (decays in (0, 1])")
    L = ssd.decay_mask(log_a.detach().to(torch.float64).cpu())  # (N, N)
    causal = torch.ones(N, N, dtype=torch.float64).tril()
    figure, axes = new_figure(6.6, 3.6, columns=2, wspace=0.35)
    step = max(1, N // 4)
    panels = (
        (causal, "causal mask", text(en="causal attention mask", ja="因果マスク")),
        (L, "decay mask", text(en="decay mask L", ja="減衰マスク L")),
    )
    for index, (ax, (matrix, gid, title)) in enumerate(zip(axes, panels)):
        image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=0, vmax=1, extent=(0, N, N, 0),
                          interpolation="nearest")  # fmt: skip
        image.set_gid(gid)
        score_matrix_axes(ax, N, N, step, step, lang=lang, font_size=FONT_SIZE,
                          xlabel=text(en="key / input j", ja="キー / 入力 j"),
                          ylabel=text(en="query / output i", ja="クエリ / 出力 i"))  # fmt: skip
        if index:
            ax.set_ylabel("")  # one row label for both panels
        ax.set_title(in_language(title, lang), fontsize=FONT_SIZE, y=-0.1, va="top")
    figure.colorbar(image, ax=axes, shrink=0.7, pad=0.03).ax.tick_params(labelsize=FONT_SIZE - 3)
    return figure


def chunked_steps(N: int, chunk_size: int, *, lang: str = "en"):
    """The chunked algorithm's four steps on the ``N x N`` matrix, one panel each; returns the Figure.

    Thin lines: the tokens; thick lines: the chunks (:func:`chunk_bounds`); grey: the causal triangle.
    1. the diagonal blocks; 2. the off-diagonal blocks coloured by column chunk ``j`` (the state ``S_j``
    they share); 3. the same blocks, each labelled with the number of whole chunks its state crosses;
    4. coloured by row chunk ``i`` (the entering state ``h_i`` they share). ``N <= 64``.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    _check_sizes(N, chunk_size)
    bounds = chunk_bounds(N, chunk_size)
    blocks = step_blocks(N, chunk_size)
    titles = {
        "intra_chunk": text(en="1. diagonal blocks: Y_diag", ja="1. 対角ブロック：Y_diag"),
        "chunk_states": text(en="2. chunk states S_j (columns)", ja="2. チャンクの状態 S_j（列）"),
        "pass_states": text(en="3. state passing: chunks crossed", ja="3. 状態の受け渡し：越えるチャンク数"),
        "state_to_output": text(en="4. state to output: h_i (rows)", ja="4. 状態から出力へ：h_i（行）"),
    }
    figure, axes = new_figure(6.6, 7.4, rows=2, columns=2, hspace=0.32, wspace=0.3)
    figure.subplots_adjust(top=0.93, bottom=0.07)
    for ax, step in zip(axes, STEPS):
        ax.add_patch(Rectangle((0, 0), N, N, facecolor="white", edgecolor="none", zorder=0))
        for t in range(N):  # the causal triangle, one grey cell per allowed pair
            ax.add_patch(Rectangle((0, t), t + 1, 1, facecolor="0.9", edgecolor="none", zorder=0))
        for i, j in blocks[step]:
            (r0, r1), (c0, c1) = bounds[i], bounds[j]
            if step == "intra_chunk":
                color, label = CHUNK_COLORS[0], ""
            elif step == "chunk_states":
                color, label = CHUNK_COLORS[j % len(CHUNK_COLORS)], f"S{j}"
            elif step == "pass_states":
                color, label = "0.55", str(i - j - 1)
            else:
                color, label = CHUNK_COLORS[i % len(CHUNK_COLORS)], f"h{i}"
            fill = "none" if step == "intra_chunk" else color  # a diagonal block is zero above its diagonal
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, facecolor=fill, alpha=0.55, edgecolor="black",
                                   linewidth=1.0, gid=f"block {step},{i},{j}", zorder=1))  # fmt: skip
            if step == "intra_chunk":  # the causal triangle inside the block
                for t in range(r0, r1):
                    ax.add_patch(Rectangle((c0, t), t + 1 - c0, 1, facecolor=color, alpha=0.7, edgecolor="none",
                                           zorder=1))  # fmt: skip
            if label:
                ax.text((c0 + c1) / 2, (r0 + r1) / 2, label, ha="center", va="center", fontsize=FONT_SIZE - 3,
                        zorder=3, bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"),
                        gid=f"label {step},{i},{j}")  # fmt: skip
        for t in range(N + 1):
            ax.axhline(t, color="0.8", linewidth=0.3, zorder=2)
            ax.axvline(t, color="0.8", linewidth=0.3, zorder=2)
        for start, _ in bounds[1:]:
            ax.axhline(start, color="black", linewidth=1.2, zorder=2)
            ax.axvline(start, color="black", linewidth=1.2, zorder=2)
        score_matrix_axes(ax, N, N, chunk_size, chunk_size, lang=lang, font_size=FONT_SIZE,
                          xlabel=text(en="input j", ja="入力 j"), ylabel=text(en="output i", ja="出力 i"))  # fmt: skip
        ax.set_title(in_language(titles[step], lang), fontsize=FONT_SIZE - 1, y=-0.06, va="top")
    note = text(
        en=f"N = {N}, chunks of Q = {chunk_size} ({len(bounds)} chunks); grey: the causal triangle of L",
        ja=f"N = {N}、チャンクの大きさ Q = {chunk_size}（{len(bounds)}個）。灰色はLの因果的な三角形",
    )
    figure.text(0.5, 0.005, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 3)
    return figure
