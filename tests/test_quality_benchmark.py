"""benchmarks/quality.py: a tiny configuration end to end, resuming, the registry's methods, bad arguments."""

import csv
import sys
from pathlib import Path

import pytest
import torch

from attnlib import registry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # importable by name: the workers of --workers 2 import it too
import quality  # noqa: E402

FEW = "dense,reformer,pvt,poolformer"


def read(path):
    with open(path) as handle:
        first = handle.readline()
        return first, list(csv.DictReader(handle))


def test_tiny_run_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "arena.csv"
    assert quality.main(["--out", str(out), "--tiny", "--methods", FEW, "--no-progress"]) == 0
    first, rows = read(out)
    assert first.startswith("# measured ") and "torch " in first and "attnlib " in first
    assert {row["task"] for row in rows} == set(quality.DEFAULT_TASKS)
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert 0 <= float(row["accuracy"]) <= 1
    language = [row for row in rows if row["kind"] == "language"]
    vision = [row for row in rows if row["kind"] == "vision"]
    assert {row["method"] for row in language} == {"dense", "reformer"}
    assert {row["method"] for row in vision} == {"dense", "pvt", "poolformer"}
    # resuming: nothing is trained again, the rows are the same
    before = out.read_text().splitlines()[1:]
    monkeypatch.setattr(quality, "train_and_test", None)  # would fail if called
    assert quality.main(["--out", str(out), "--tiny", "--methods", FEW, "--no-progress"]) == 0
    assert out.read_text().splitlines()[1:] == before


def test_two_workers_write_the_rows_of_the_plan_in_order(tmp_path):
    out = tmp_path / "arena.csv"
    argv = ["--out", str(out), "--tiny", "--tasks", "mqar", "--methods", "dense,sdpa", "--seeds", "0,1"]
    assert quality.main([*argv, "--workers", "2", "--no-progress"]) == 0
    _, rows = read(out)
    assert [(row["method"], row["seed"]) for row in rows] == [
        ("dense", "0"),
        ("dense", "1"),
        ("sdpa", "0"),
        ("sdpa", "1"),
    ]
    assert all(row["status"] == "ok" for row in rows)
    # dense and SDPA compute the same attention: the same seed trains the same model
    assert rows[0]["accuracy"] == rows[2]["accuracy"]


def test_every_registered_method_of_each_kind_is_planned():
    language = quality.methods_of_kind("language")
    vision = quality.methods_of_kind("vision")
    assert language == [m.name for m in registry.METHODS if m.attention]
    assert vision == [m.name for m in registry.METHODS if m.make_mixer]
    assert {"dense", "bigbird", "reformer"} <= set(language) and {"dense", "swin", "mixer"} <= set(vision)


def test_vision_models_match_the_dense_parameter_count():
    setting = quality.TASK_SETTINGS["pathfinder"]
    dense = quality.parameter_count(quality.build_model(setting, registry.get("dense"), 28))
    matched = []
    for name in quality.methods_of_kind("vision"):
        try:
            count = quality.parameter_count(quality.build_model(setting, registry.get(name), 28))
        except quality.ParameterBudgetError as error:  # only when even the narrowest model is too large
            closest = int(str(error).split("closest: ")[1].split()[0])
            assert closest > (1 + quality.PARAM_TOLERANCE) * dense, name
            continue
        assert abs(count - dense) <= quality.PARAM_TOLERANCE * dense, name
        matched.append(name)
    assert {"dense", "swin", "mixer", "poolformer"} <= set(matched)


def test_a_mixer_too_large_for_the_budget_is_skipped(tmp_path, monkeypatch):
    def build(*args, **kwargs):
        raise quality.ParameterBudgetError("no width gives it (closest: 999999 at C = 4)")

    monkeypatch.setattr(quality, "build_model", build)
    out = tmp_path / "arena.csv"
    argv = ["--out", str(out), "--tiny", "--tasks", "same_shape", "--methods", "mixer", "--no-progress"]
    assert quality.main(argv) == 0
    _, rows = read(out)
    assert rows[0]["status"] == "skipped" and "closest" in rows[0]["error"]


def test_language_models_are_the_same_model_for_every_kernel():
    setting = quality.TASK_SETTINGS["mqar"]
    counts = {quality.parameter_count(quality.build_model(setting, registry.get(name), 64))
              for name in quality.methods_of_kind("language")}  # fmt: skip
    assert len(counts) == 1


def test_schedule_warms_up_then_decays_to_zero():
    factors = [quality.schedule(step, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] < 0.01


def test_a_failing_method_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(quality, "train_and_test", broken)
    out = tmp_path / "arena.csv"
    assert quality.main(["--out", str(out), "--tiny", "--tasks", "mqar", "--methods", "dense", "--no-progress"]) == 1
    _, rows = read(out)
    assert rows[0]["status"] == "error" and "boom" in rows[0]["error"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tasks", "sorting"], "--tasks"),
        (["--methods", "nothing"], "--methods"),
        (["--steps", "0"], "--steps"),
        (["--steps", "1,2"], "--steps"),
        (["--sizes", "a"], "--sizes"),
        (["--batch", "0"], "--batch"),
        (["--device", "tpu"], "--device"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_arguments_name_the_option(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--out", str(tmp_path / "x.csv"), "--tiny", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_refuses_a_file_of_another_program(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit):
        quality.main(["--out", str(other), "--tiny"])
    assert "--out" in capsys.readouterr().err
    assert other.read_text() == "a,b\n1,2\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tiny_run_on_cuda(tmp_path):
    out = tmp_path / "arena.csv"
    assert quality.main(["--out", str(out), "--tiny", "--methods", "dense", "--device", "cuda", "--no-progress"]) == 0


def test_a_causal_only_method_trains_causally(tmp_path):
    """SSD has no bidirectional form (its state runs forward in time): the arena runs it causal, not as an error."""
    assert registry.get("ssd").causal_only and not registry.get("dense").causal_only
    out = tmp_path / "arena.csv"
    argv = ["--out", str(out), "--tiny", "--tasks", "mqar,listops", "--methods", "ssd,dense", "--no-progress"]
    assert quality.main(argv) == 0
    _, rows = read(out)
    assert all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
    setting = quality.TASK_SETTINGS["mqar"]
    attention = quality.build_model(setting, registry.get("ssd"), 64).blocks[0].attn
    assert attention.causal
    assert not quality.build_model(setting, registry.get("dense"), 64).blocks[0].attn.causal


class NoMixing(torch.nn.Module):
    """A token mixer that mixes nothing: every token stays what it was (the block adds it once more)."""

    def forward(self, x):
        return torch.zeros_like(x)


def test_the_vision_readout_cannot_compare_tokens():
    # Two shapes on disjoint patches, left and right. Without a mixer, a readout that is a sum of
    # one term per token gives logits(both) + logits(none) == logits(left) + logits(right); a maximum
    # over the tokens would not, and could tell "one shape" from "two" without any mixing.
    torch.manual_seed(0)
    side = 28
    model = quality.VisionModel(side, 2, lambda dim, heads, h, w: NoMixing(), dim=16).eval()
    with torch.no_grad():
        for block in model.blocks:  # no near-zero output layer: the test must not pass by accident
            torch.nn.init.normal_(block.mlp[2].weight, std=0.5)
    left, right = torch.zeros(1, 1, side, side), torch.zeros(1, 1, side, side)
    left[0, 0, 4:9, 2:7] = torch.rand(5, 5) + 0.5
    right[0, 0, 14:19, 20:25] = torch.rand(5, 5) + 0.5
    with torch.no_grad():
        both, none = model(left + right), model(torch.zeros_like(left))
        one_each = model(left) + model(right)
    assert (both - model(left)).abs().max() > 1e-3  # the right shape changes the logits
    torch.testing.assert_close(both + none, one_each, atol=1e-5, rtol=1e-5)


def test_pvt_in_the_arena_draws_its_keys_from_the_whole_map():
    # PVT's first-stage R = 8 on 14 x 14 tokens keeps one 8 x 8 key cell: the other tokens are never keys
    model = quality.build_model(quality.TASK_SETTINGS["same_shape"], registry.get("pvt"), 28)
    tokens = 28 // quality.PATCH
    for block in model.blocks:
        ratio = block.mixer.sr_ratio
        assert tokens % ratio == 0 and (tokens // ratio) ** 2 > 1, ratio


def test_dat_in_the_arena_samples_a_grid_of_keys_not_four():
    # DAT++'s first-stage stride 8 on 14 x 14 tokens leaves a 2 x 2 reference grid: 4 keys for 196 queries
    model = quality.build_model(quality.TASK_SETTINGS["same_shape"], registry.get("dat"), 28)
    for block in model.blocks:
        rows, cols = block.mixer.grid_size
        assert rows * cols == 49, (rows, cols)


def test_swin_in_the_arena_alternates_regular_and_shifted_windows():
    model = quality.build_model(quality.TASK_SETTINGS["same_shape"], registry.get("swin"), 28)
    shifts = [block.mixer.shift_size for block in model.blocks]
    assert shifts == [0, 3][: quality.LAYERS], shifts


def test_maxvit_in_the_arena_runs_block_then_grid_attention():
    model = quality.build_model(quality.TASK_SETTINGS["same_shape"], registry.get("maxvit"), 28)
    kinds = [block.mixer.partition_type for block in model.blocks]
    assert kinds == ["block", "grid"][: quality.LAYERS], kinds
