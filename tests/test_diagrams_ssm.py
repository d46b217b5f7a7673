"""attnlib.viz.diagrams.ssm: the schematics run in both languages and agree with the library."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import check_language, gids  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from attnlib.ssm import ssd  # noqa: E402
from attnlib.viz.diagrams import ssm  # noqa: E402

SIZES = [(14, 4), (16, 4), (5, 8), (7, 1), (12, 12), (64, 16), (1, 1)]  # (N, chunk_size)


def random_problem(N: int, seed: int = 0, n: int = 3, d: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, N, d, generator=g, dtype=torch.float64)
    B = torch.randn(1, 1, N, n, generator=g, dtype=torch.float64)
    C = torch.randn(1, 1, N, n, generator=g, dtype=torch.float64)
    log_a = -torch.rand(1, 1, N, generator=g, dtype=torch.float64)  # decays in (e^-1, 1]
    return x, B, C, log_a


@pytest.mark.parametrize("N, Q", SIZES)
def test_chunk_bounds_are_the_chunked_algorithms_cut(N, Q):
    bounds = ssm.chunk_bounds(N, Q)
    assert bounds[0][0] == 0 and bounds[-1][1] == N
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
    assert all(stop - start == Q for start, stop in bounds[:-1]) and 0 < bounds[-1][1] - bounds[-1][0] <= Q
    assert len(bounds) == -(-N // Q)


@pytest.mark.parametrize("N, Q", SIZES)
def test_step_masks_split_the_quadratic_form_as_the_library_does(N, Q):
    """Step 1 is L on the diagonal blocks, steps 2-4 L on the off-diagonal blocks, of the quadratic form."""
    x, B, C, log_a = random_problem(N)
    diagonal, off = ssm.block_mask(N, Q, "diagonal"), ssm.block_mask(N, Q, "off_diagonal")
    assert torch.equal(diagonal | off, torch.ones(N, N, dtype=torch.bool).tril()) and not (diagonal & off).any()
    L = ssd.decay_mask(log_a)[0, 0]
    scores = (C @ B.transpose(-1, -2))[0, 0]
    # the library's steps, on the padded chunks of ssd_chunked
    pad = (-N) % Q
    c = (N + pad) // Q
    xp, Bp, Cp = (torch.nn.functional.pad(t, (0, 0, 0, pad)).reshape(1, 1, c, Q, -1) for t in (x, B, C))
    lp = torch.nn.functional.pad(log_a, (0, pad)).reshape(1, 1, c, Q)
    y_diag = ssd.intra_chunk_output(xp, Bp, Cp, lp).reshape(1, 1, c * Q, -1)[0, 0, :N]
    entering, _ = ssd.pass_states(ssd.chunk_states(xp, Bp, lp), lp, torch.zeros(1, 1, 3, 2, dtype=torch.float64))
    y_off = ssd.state_to_output(Cp, entering, lp).reshape(1, 1, c * Q, -1)[0, 0, :N]
    torch.testing.assert_close(y_diag, (L * diagonal * scores) @ x[0, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(y_off, (L * off * scores) @ x[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("N, Q", SIZES)
def test_off_diagonal_blocks_factor_as_drawn(N, Q):
    """Block (i, j), i > j: decay from chunk i's start x the i - j - 1 chunks between x decay to chunk j's end."""
    _, _, _, log_a = random_problem(N, seed=1)
    L = ssd.decay_mask(log_a[0, 0])
    bounds = ssm.chunk_bounds(N, Q)
    blocks = ssm.step_blocks(N, Q)
    assert blocks["chunk_states"] == blocks["pass_states"] == blocks["state_to_output"]
    assert blocks["intra_chunk"] == [(i, i) for i in range(len(bounds))]
    for i, j in blocks["pass_states"]:
        (r0, r1), (c0, c1) = bounds[i], bounds[j]
        from_start = torch.exp(torch.cumsum(log_a[0, 0, r0:r1], 0))  # a_start .. a_t
        to_end = torch.exp(log_a[0, 0, c0:c1].flip(0).cumsum(0).flip(0) - log_a[0, 0, c0:c1])  # a_{s+1} .. a_end
        between = torch.exp(log_a[0, 0, c1:r0].sum())  # the i - j - 1 whole chunks between
        assert len(range(j + 1, i)) == i - j - 1 and c1 == bounds[j + 1][0]
        torch.testing.assert_close(L[r0:r1, c0:c1], from_start[:, None] * between * to_end[None, :], rtol=1e-12,
                                   atol=0)  # fmt: skip


@pytest.mark.parametrize("N, Q", [(14, 4), (16, 4), (5, 8), (64, 16)])
def test_drawn_blocks_are_the_steps_blocks(N, Q):
    figure = ssm.chunked_steps(N, Q)
    drawn = gids(figure, "block ")
    plt.close(figure)
    expected = [f"block {step},{i},{j}" for step, blocks in ssm.step_blocks(N, Q).items() for i, j in blocks]
    assert sorted(drawn) == sorted(expected)


def test_labels_name_the_state_and_the_chunks_crossed():
    figure = ssm.chunked_steps(14, 4)
    labels = {artist.get_gid(): artist.get_text() for artist in figure.findobj(Text)
              if (artist.get_gid() or "").startswith("label ")}  # fmt: skip
    plt.close(figure)
    below = ssm.step_blocks(14, 4)["pass_states"]
    assert len(below) == 6  # 4 chunks: 3 + 2 + 1 blocks below the diagonal
    for i, j in below:
        assert labels[f"label chunk_states,{i},{j}"] == f"S{j}"
        assert labels[f"label pass_states,{i},{j}"] == str(i - j - 1)
        assert labels[f"label state_to_output,{i},{j}"] == f"h{i}"
    assert not [gid for gid in labels if gid.startswith("label intra_chunk")]


def test_duality_draws_the_causal_mask_and_the_library_decay_mask():
    log_a = torch.log(torch.linspace(0.3, 1.0, 16, dtype=torch.float64))
    figure = ssm.duality(log_a)
    images = {image.get_gid(): torch.as_tensor(image.get_array()) for ax in figure.axes for image in ax.images}
    plt.close(figure)
    assert torch.equal(images["causal mask"], torch.ones(16, 16, dtype=torch.float64).tril())
    torch.testing.assert_close(images["decay mask"], ssd.decay_mask(log_a), rtol=1e-12, atol=0)
    assert images["decay mask"][5, 2].item() == pytest.approx(float(torch.exp(log_a[3:6].sum())))


def test_both_figures_in_both_languages():
    check_language(lambda lang: ssm.chunked_steps(14, 4, lang=lang))
    check_language(lambda lang: ssm.duality(torch.log(torch.full((12,), 0.8)), lang=lang))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="chunk_size"):
        ssm.chunked_steps(8, 0)
    with pytest.raises(ValueError, match="N must be at most 64"):
        ssm.chunked_steps(65, 4)
    with pytest.raises(ValueError, match="part"):
        ssm.block_mask(8, 4, "diag")
    with pytest.raises(ValueError, match="log_a"):
        ssm.duality(torch.tensor([-0.1, 0.2]))
    with pytest.raises(ValueError, match="log_a"):
        ssm.duality(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="language"):
        ssm.chunked_steps(8, 4, lang="fr")
