"""benchmarks/pathfinder_variants.py: the calibration's map constructions, its gap rule, a tiny run."""

import sys
from pathlib import Path

import pytest
import torch

from attnlib.tasks.pathfinder import DOT, dots_connected

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import pathfinder_variants as variants  # noqa: E402
import quality  # noqa: E402

BUILDS = {
    "matched": lambda seed: variants.matched_maps(24, 28, path_length=10, generator=seed),
    "cut": lambda seed: variants.cut_maps(24, 28, path_length=12, margin=3, generator=seed),
    "twin": lambda seed: variants.twin_maps(24, 28, path_length=12, margin=3, generator=seed),
}


@pytest.mark.parametrize("variant", sorted(BUILDS))
def test_labels_agree_with_a_flood_fill_and_repeat_per_seed(variant):
    images, labels = BUILDS[variant](3)
    assert images.shape == (24, 1, 28, 28) and labels.dtype == torch.int64
    assert 0 < labels.sum() < len(labels)  # both classes
    for image, label in zip(images, labels):
        assert (image == DOT).sum() == 2
        assert dots_connected(image[0]) == bool(label)
    again, again_labels = BUILDS[variant](3)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, BUILDS[variant](4)[0])


def curves(image) -> int:
    """Groups of drawn pixels joined across gaps of at most one pixel (as dots_connected joins them)."""
    drawn = {tuple(p) for p in (image != 0).nonzero().tolist()}
    count = 0
    while drawn:
        count += 1
        frontier = [drawn.pop()]
        while frontier:
            r, c = frontier.pop()
            near = {(r + i, c + j) for i in range(-2, 3) for j in range(-2, 3)} & drawn
            drawn -= near
            frontier += near
    return count


@pytest.mark.parametrize("build", [variants.cut_maps, variants.twin_maps])
def test_both_classes_draw_three_curves_and_the_gap_is_recorded(build):
    # one whole path and the two pieces of the cut one, whichever is cut: the count of curves tells nothing
    excess = []
    images, labels = build(40, 28, path_length=12, margin=3, generator=5, excess=excess)
    assert [curves(image[0]) for image in images] == [3] * 40
    assert [label for _, label in excess] == labels.tolist()
    assert all(value >= -1e-9 for value, _ in excess)  # the triangle inequality: never negative


def test_the_gap_rule_takes_the_best_threshold():
    assert variants.rule_accuracy([(0.0, 0), (0.5, 0), (2.0, 1), (3.0, 1)]) == 1.0
    assert variants.rule_accuracy([(0.0, 1), (1.0, 0)]) == 0.5  # the rule only says "far from the way: connected"
    assert variants.rule_accuracy([(1.0, 1), (1.0, 1), (0.0, 0), (2.0, 0)]) == 0.75
    with pytest.raises(ValueError, match="excess"):
        variants.rule_accuracy([])


def test_a_tiny_run_end_to_end(monkeypatch, capsys):
    monkeypatch.setattr(quality, "TASK_SETTINGS", dict(quality.TASK_SETTINGS))  # the run registers its task
    monkeypatch.setattr(quality, "LAYERS", quality.LAYERS)
    argv = ["--variant", "cut", "--length", "12", "--margin", "3", "--steps", "2", "--readout", "max", "--rule"]
    assert variants.main([*argv, "--rule-maps", "50"]) == 0
    out = capsys.readouterr().out
    assert "gap rule: right on" in out and "'accuracy':" in out
    assert quality.TASK_SETTINGS["pathfinder_cut"].readout == "max"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "cut", "--length", "12", "--margin", "5"], "--margin"),
        (["--variant", "matched", "--rule"], "--rule"),
        (["--variant", "cut", "--steps", "0"], "--steps"),
        (["--variant", "matched", "--length", "500"], "--length"),
        (["--variant", "twin", "--side", "6"], "--side"),
    ],
)
def test_bad_arguments_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        variants.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_the_vision_model_reads_out_the_mean_or_the_maximum():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 28, 28)
    mixer = quality.mixer_factories(quality.registry.get("dense"))
    mean = quality.VisionModel(28, 2, mixer, 16).eval()
    top = quality.VisionModel(28, 2, mixer, 16, readout="max").eval()
    top.load_state_dict(mean.state_dict())  # the same weights: only the readout differs
    with torch.no_grad():
        assert not torch.allclose(mean(images), top(images))
        features = top.norm(top.blocks[1](top.blocks[0](top.patch(images).permute(0, 2, 3, 1) + top.position)))
        torch.testing.assert_close(top(images), top.head(features.amax(dim=(1, 2))))
    with pytest.raises(ValueError, match="readout"):
        quality.VisionModel(28, 2, mixer, 16, readout="first")
