"""The vision schematics (attnlib.viz.diagrams.vision) draw the library's partitions, in either language."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from attnlib.sparse import dat, maxvit, pvt, swin
from attnlib.viz import figure_images
from attnlib.viz.diagrams import vision

matplotlib.use("Agg")

CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# ASCII words a Japanese label may keep: method and layer names, the map's letters
ALLOWED_ASCII = {"W-MSA", "SW-MSA", "MSA", "attention", "x", "DAT", "Deformable", "DETR"}


def _cells(figure, panel: str) -> dict[tuple[int, int], tuple[int, Rectangle]]:
    """``{(row, col): (group, patch)}`` of the squares drawn for ``panel`` (read back from the gids)."""
    cells = {}
    for patch in figure.findobj(Rectangle):
        gid = patch.get_gid()
        if gid and gid.startswith(panel + ":"):
            _, row, col, group = gid.split(":")
            cells[int(row), int(col)] = int(group), patch
    return cells


def _drawn(figure, panel: str, rows: int, cols: int, *, numbered: bool = False) -> np.ndarray:
    """The ``(rows, cols)`` groups drawn, after checking each square sits at its pixel and has its group's style."""
    cells = _cells(figure, panel)
    assert sorted(cells) == [(r, c) for r in range(rows) for c in range(cols)], panel
    groups = np.empty((rows, cols), dtype=np.int64)
    for (row, col), (group, patch) in cells.items():
        assert patch.get_xy() == (col, row) and patch.get_width() == 1 and patch.get_height() == 1
        color, hatch = vision.group_style(group, numbered=numbered)
        assert np.allclose(patch.get_facecolor()[:3], color), (panel, row, col)
        assert (patch.get_hatch() or "") == hatch, (panel, row, col)
        groups[row, col] = group
    return groups


def _same_partition(drawn: np.ndarray, library: torch.Tensor) -> bool:
    """True iff two pixels share a drawn group exactly when they share the library's group."""
    a, b = drawn.flatten(), library.flatten().numpy()
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())


def _texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text().strip()]


def _check_language(figure, lang: str) -> None:
    texts = _texts(figure)
    words = [t for t in texts if not t.strip().lstrip("-").isdigit()]  # cell and key numbers aside
    assert words, "the figure has no labels"
    for label in words:
        if lang == "en":
            assert not CJK.search(label), label
        else:
            assert CJK.search(label), label
            for word in re.findall(r"[A-Za-z][A-Za-z-]+", label):
                assert word in ALLOWED_ASCII, (word, label)


SWIN_CASES = [(14, 7, 3), (8, 4, 2), (9, 4, 2), (7, 3, 1), (5, 7, 3), (6, 2, 0), (4, 1, 0)]


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("side,window,shift", SWIN_CASES)
def test_swin_draws_the_library_windows(side, window, shift, lang):
    figure = vision.swin_windows(side, window, shift, lang=lang)
    M, s = swin.swin_window_and_shift(side, side, window, shift)
    assert _same_partition(_drawn(figure, "plain", side, side), swin.swin_groups(side, side, M, 0))
    shifted = _drawn(figure, "shifted", side, side)
    assert _same_partition(shifted, swin.swin_groups(side, side, M, s))
    # the rolled panel: window (from its position) and mask region (the official img_mask), padding -1
    Hp = -(-side // M) * M
    rolled = _drawn(figure, "rolled", Hp, Hp)
    regions = swin.swin_region_labels(side, side, M, s)  # (Hp, Hp)
    window_of = (torch.arange(Hp)[:, None] // M) * (Hp // M) + torch.arange(Hp)[None, :] // M
    source = (torch.arange(Hp) + s) % Hp
    real = (source[:, None] < side) & (source[None, :] < side)
    assert ((torch.from_numpy(rolled) < 0) == ~real).all()
    assert _same_partition(rolled[real.numpy()], (window_of * 9 + regions)[real])
    # a rolled cell shows the same group as the pixel it came from
    for r, c in zip(*np.nonzero(real.numpy())):
        assert rolled[r, c] == shifted[source[r], source[c]]
    _check_language(figure, lang)
    assert figure.get_figwidth() <= 7


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize(
    "side,window,grid", [(16, 4, 4), (8, 4, 2), (6, 3, 2), (9, 3, 3), (5, 5, 1), (12, 2, 6), (20, 5, 4)]
)
def test_maxvit_draws_the_library_groups(side, window, grid, lang):
    figure = vision.maxvit_partitions(side, window, grid, lang=lang)
    numbered = side <= 16  # the cells carry their group's number (and no hatch)
    block = _drawn(figure, "block", side, side, numbered=numbered)
    assert _same_partition(block, maxvit.maxvit_groups(side, side, "block", window))
    drawn_grid = _drawn(figure, "grid", side, side, numbered=numbered)
    assert _same_partition(drawn_grid, maxvit.maxvit_groups(side, side, "grid", grid))
    assert drawn_grid.max() + 1 == (side // grid) ** 2 and (drawn_grid == 0).sum() == grid * grid
    if numbered:  # each cell's number is its group
        numbers = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in figure.axes[1].texts}
        assert all(numbers[r, c] == str(drawn_grid[r, c]) for r in range(side) for c in range(side))
    _check_language(figure, lang)
    assert figure.get_figwidth() <= 7


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("side,R", [(8, 2), (16, 4), (30, 7), (7, 7), (5, 2), (3, 1), (9, 4), (18, 2)])
def test_pvt_draws_the_library_cells(side, R, lang):
    figure = vision.pvt_reduction(side, R, lang=lang)
    queries = _drawn(figure, "queries", side, side, numbered=True)  # colours only: no hatch
    assert (queries == pvt.pvt_cell_index(side, side, R).numpy()).all()
    Hr, Wr = pvt.reduced_size(side, side, R)
    keys = _cells(figure, "keys")
    assert len(keys) == Hr * Wr
    for (a, b), (key, patch) in keys.items():
        assert key == a * Wr + b
        assert patch.get_xy() == (b * R, a * R) and patch.get_width() == R
        assert np.allclose(patch.get_facecolor()[:3], vision.group_style(key)[0])
        assert (patch.get_hatch() or "") == vision.group_style(key, numbered=Hr * Wr <= 64)[1]
        assert (queries[a * R : (a + 1) * R, b * R : (b + 1) * R] == key).all()  # the cell it summarizes
    texts = " ".join(_texts(figure))
    assert f"{Hr}x{Wr} = {Hr * Wr}" in texts and f"{side * side} x {Hr * Wr}" in texts
    _check_language(figure, lang)


def test_neighbouring_groups_differ_in_colour_or_hatch():
    styles = [vision.group_style(g) for g in range(40)]
    assert all(styles[g] != styles[g + 1] for g in range(39))
    assert len(set(styles)) == 40  # seven colours times six hatches before a style repeats
    assert vision.group_style(-1) != vision.group_style(0)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: vision.swin_windows(14, 7, 7), "shift_size"),
        (lambda: vision.swin_windows(14, 0), "window_size"),
        (lambda: vision.swin_windows(0, 7), "side"),
        (lambda: vision.swin_windows(65, 7), "at most 64"),
        (lambda: vision.swin_windows(14, 7, 3, lang="fr"), "language"),
        (lambda: vision.maxvit_partitions(10, 4), "window_size must divide"),
        (lambda: vision.maxvit_partitions(12, 4, 5), "grid_size must divide"),
        (lambda: vision.maxvit_partitions(12.0, 4), "side"),
        (lambda: vision.pvt_reduction(6, 7), "sr_ratio"),
        (lambda: vision.pvt_reduction(6, 0), "sr_ratio"),
        (lambda: vision.pvt_reduction(True, 2), "side"),
        (lambda: vision.dat_sampling(8, 9), "stride"),
        (lambda: vision.dat_sampling(8, 0), "stride"),
        (lambda: vision.dat_sampling(8, 2, 0.0), "offset_range_factor"),
        (lambda: vision.dat_sampling(8, 2, seed=-1), "seed"),
        (lambda: vision.dat_sampling(8, 2, seed=1.5), "seed"),
        (lambda: vision.dat_sampling(8, 3, raw_offsets=torch.zeros(2, 2, 2)), "raw_offsets"),
        (lambda: vision.dat_sampling(65, 8), "at most 64"),
    ],
)
def test_refused_parameters_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "draw",
    [
        lambda lang: vision.swin_windows(9, 4, 2, lang=lang),
        lambda lang: vision.maxvit_partitions(8, 4, 2, lang=lang),
        lambda lang: vision.pvt_reduction(9, 4, lang=lang),
        lambda lang: vision.dat_sampling(9, 4, lang=lang),
    ],
)
def test_the_stored_pngs_are_the_same_bytes_every_time(draw):
    first, second = figure_images(draw), figure_images(draw)
    assert first.images == second.images
    assert first.images["en"] != first.images["ja"]


def _points(figure, gid: str) -> np.ndarray:
    """The ``(n, 2)`` drawn ``(x, y)`` of the scatter collection with this gid."""
    (collection,) = [c for c in figure.axes[0].collections + figure.axes[1].collections if c.get_gid() == gid]
    return np.asarray(collection.get_offsets())


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize(
    "side,stride,s,seed", [(16, 4, 2.0, 0), (9, 4, 2.0, 3), (7, 2, 1.0, 1), (5, 5, 3.0, 0), (2, 1, 0.5, 7)]
)
def test_dat_draws_the_library_points(side, stride, s, seed, lang):
    figure = vision.dat_sampling(side, stride, s, seed=seed, lang=lang)
    Hk = -(-side // stride)
    # the library's reference grid and deformed points, computed here through the module itself
    block = dat.DeformableAttention(2, 1, side, side, stride=stride, offset_range_factor=s).double()
    assert block.grid_size == (Hk, Hk)
    raw = 0.6 * torch.randn(2, Hk, Hk, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reference = dat.reference_points(Hk, Hk, dtype=torch.float64)
    positions = reference + dat.bounded_offsets(raw, s)  # (Hk, Hk, 2)
    drawn_ref = _points(figure, "dat:reference")
    drawn_pos = _points(figure, "dat:sampled")
    assert drawn_ref.shape == drawn_pos.shape == (Hk * Hk, 2)
    # where grid_sample reads: sample a map holding each pixel's own (row, col) at the points
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords = torch.stack((rows, cols)).double()[None]  # (1, 2, H, W)
    for points, drawn in ((reference, drawn_ref), (positions, drawn_pos)):
        read = dat.sample_at(coords, points[None]).reshape(2, -1).T  # (Ns, 2) (row, col)
        inside = ((points.reshape(-1, 2).abs() <= 1).all(-1)).numpy()
        assert np.allclose(drawn[inside][:, ::-1] - 0.5, read.numpy()[inside])  # pixel centre at +0.5
        expected = ((points.reshape(-1, 2) + 1) / 2 * (side - 1) + 0.5).numpy()[:, ::-1]
        assert np.allclose(drawn, expected)  # also those outside the map, which read zeros
    # offsets stay within s / 2 grid spacings (the library's bound), and some point moved
    spacing = (side - 1) / Hk
    assert np.abs(drawn_pos - drawn_ref).max() <= s / 2 * spacing + 1e-9
    assert np.abs(drawn_pos - drawn_ref).max() > 0
    queries = vision._queries(side)
    for j in range(len(queries)):
        assert len(_points(figure, f"detr:points:{j}")) == 4
    assert f"{Hk}x{Hk} = {Hk * Hk}" in " ".join(_texts(figure))
    _check_language(figure, lang)
    assert figure.get_figwidth() <= 7


def test_dat_draws_given_offsets_and_zero_offsets_on_the_grid():
    raw = torch.zeros(2, 3, 3)
    raw[0, 1, 2] = 10.0  # saturates: moves down by s / 2 = 1 grid spacing
    figure = vision.dat_sampling(9, 3, 2.0, raw_offsets=raw)
    ref, pos = _points(figure, "dat:reference"), _points(figure, "dat:sampled")
    moved = np.abs(pos - ref).sum(-1) > 1e-9
    assert moved.tolist() == [i == 5 for i in range(9)]
    assert np.isclose(pos[5, 1] - ref[5, 1], (9 - 1) / 3 * np.tanh(10.0))
    reference, positions = vision.dat_points(9, 3, 2.0, raw_offsets=raw)
    assert torch.equal(reference, dat.reference_points(3, 3, dtype=torch.float64))
