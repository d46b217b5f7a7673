"""The task generators of attnlib.tasks: deterministic per seed, right labels on hand-made examples, clear errors."""

import pytest
import torch

from attnlib import tasks
from attnlib.tasks import IGNORE, dots_connected
from attnlib.tasks.listops import OPERATORS, PAD, decode, encode, evaluate
from attnlib.tasks.pathfinder import DOT, PATH, draw_paths
from attnlib.tasks.same_shape import SHAPES, STAMP, stamp
from attnlib.tasks.selective_copying import NOISE, marker_id

SMALL = {
    "mqar": lambda g: tasks.mqar(8, 64, num_kv_pairs=4, vocab_size=64, generator=g),
    "listops": lambda g: tasks.listops(8, 64, max_depth=4, max_args=5, generator=g),
    "selective_copying": lambda g: tasks.selective_copying(8, 48, num_tokens=8, generator=g),
    "pathfinder": lambda g: tasks.pathfinder(8, 20, generator=g),
    "same_shape": lambda g: tasks.same_shape(8, 28, generator=g),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_per_seed(name):
    first, again, other = SMALL[name](3), SMALL[name](torch.Generator().manual_seed(3)), SMALL[name](4)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_every_task_is_listed_with_its_kind():
    assert set(tasks.TASKS) == set(SMALL)
    assert {t.kind for t in tasks.TASKS.values()} == {"language", "vision"}


# ---------------------------------------------------------------- ListOps
@pytest.mark.parametrize(
    "expression, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),  # max(2, 9, 4, 0)
        ("[MIN 3 [MAX 1 8 ] 5 ]", 3),  # min(3, 8, 5)
        ("[SM 7 8 9 ]", 4),  # 24 mod 10
        ("[MED 1 9 4 ]", 4),  # median of 1 4 9
        ("[MED 2 3 ]", 2),  # median 2.5, rounded down as int(np.median)
        ("[SM [MED 1 2 3 4 ] [MAX 0 5 ] [MIN 9 [SM 5 5 ] ] ]", 7),  # med 2.5 -> 2; 5; min(9, 0) = 0: 7
        ("[MAX [SM 9 9 ] [MIN 6 7 ] ]", 8),  # max(18 mod 10 = 8, 6)
        ("6", 6),
    ],
)
def test_listops_evaluates_hand_made_expressions(expression, value):
    assert evaluate(expression) == value
    assert evaluate(decode(encode(expression, 40))) == value


def test_listops_labels_are_the_values_of_the_generated_expressions():
    inputs, labels = tasks.listops(64, 128, max_depth=6, max_args=6, generator=0)
    assert inputs.shape == (64, 128) and labels.shape == (64,)
    for row, label in zip(inputs, labels):
        assert evaluate(decode(row)) == label.item()
        length = (row != PAD).sum().item()
        assert 128 // 4 < length <= 128 and (row[length:] == PAD).all()  # LRA's length rule, padded at the end
    assert len(set(labels.tolist())) > 3


def test_listops_draws_only_the_operators_asked_for():
    inputs, labels = tasks.listops(
        64, 64, max_depth=3, max_args=5, min_length=8, operators=("[MIN", "[MAX"), generator=3
    )
    used = {token for row in inputs for token in decode(row).split() if token.startswith("[")}
    assert used == {"[MIN", "[MAX"}
    assert [evaluate(decode(row)) for row in inputs] == labels.tolist()
    every = tasks.listops(64, 64, max_depth=3, max_args=5, min_length=8, generator=3)[0]
    assert {token for row in every for token in decode(row).split() if token.startswith("[")} == set(OPERATORS)


def test_listops_respects_depth_and_arguments():
    inputs, _ = tasks.listops(32, 256, max_depth=3, max_args=4, min_length=5, generator=1)
    for row in inputs:
        depth = deepest = 0
        for token in decode(row).split():
            depth += token.startswith("[")
            depth -= token == "]"
            deepest = max(deepest, depth)
        assert deepest <= 2  # root at depth 1, operators above max_depth = 3 only: 2 nested operators


@pytest.mark.parametrize("bad", ["[MAX 1 2", "[MAX ] ", "1 2", "[FOO 1 ]", "[MIN 1 ] 3", ""])
def test_listops_rejects_malformed_expressions(bad):
    with pytest.raises(ValueError, match="expression"):
        evaluate(bad)


# ---------------------------------------------------------------- MQAR
def test_mqar_hand_checked_answers():
    inputs, labels = tasks.mqar(16, 64, num_kv_pairs=4, vocab_size=64, generator=5)
    for row, label in zip(inputs, labels):
        keys, values = row[0:8:2].tolist(), row[1:8:2].tolist()
        assert len(set(keys)) == 4 and all(1 <= k < 32 for k in keys)
        assert len(set(values)) == 4 and all(32 <= v < 64 for v in values)
        table = dict(zip(keys, values))
        positions = (label != IGNORE).nonzero().flatten().tolist()
        assert len(positions) == 4 and all(p >= 8 and p % 2 == 0 for p in positions)
        asked = [row[p].item() for p in positions]
        assert sorted(asked) == sorted(keys)  # every key asked once
        assert [label[p].item() for p in positions] == [table[k] for k in asked]


def test_mqar_power_law_puts_most_queries_near_the_context():
    _, labels = tasks.mqar(256, 512, num_kv_pairs=8, vocab_size=1024, generator=0)
    positions = (labels != IGNORE).nonzero()[:, 1].float()
    assert positions.median() < 16 + (512 - 16) / 2  # the power law favours short gaps


# ---------------------------------------------------------------- selective copying
def test_selective_copying_targets_are_the_marked_tokens_in_order():
    inputs, labels = tasks.selective_copying(16, 40, num_tokens=5, vocab_size=10, generator=2)
    for row, label in zip(inputs, labels):
        body, tail = row[:35], row[35:]
        data = body[body != NOISE].tolist()
        assert len(data) == 5 and all(1 <= t < 10 for t in data)
        assert (tail == marker_id(10)).all()
        assert label[35:].tolist() == data and (label[:35] == IGNORE).all()


def test_selective_copying_hand_made_example():
    generator = torch.Generator().manual_seed(0)
    inputs, labels = tasks.selective_copying(1, 8, num_tokens=2, vocab_size=4, generator=generator)
    data = [t for t in inputs[0, :6].tolist() if t != NOISE]
    assert labels[0].tolist() == [IGNORE] * 6 + data and inputs[0, 6:].tolist() == [4, 4]


# ---------------------------------------------------------------- Pathfinder-like
def test_a_dashed_path_connects_its_dots_and_two_paths_do_not():
    path = [(5, c) for c in range(2, 12)] + [(r, 11) for r in range(6, 12)]  # an L, drawn dashed
    other = [(r, 3) for r in range(9, 15)]  # far enough from the first path
    connected = draw_paths(16, [path, other], [path[0], path[-1]])
    assert connected[5, 4] == 0 and connected[5, 3] == PATH  # the dash gaps are really there
    assert dots_connected(connected)
    disconnected = draw_paths(16, [path, other], [path[0], other[-1]])
    assert not dots_connected(disconnected)
    broken = connected.clone()
    broken[5, 5:8] = 0  # a gap of three pixels breaks the path
    assert not dots_connected(broken)


def test_the_two_ends_of_a_dashed_path_look_alike():
    """The dashes are symmetric: an end does not tell whether it is a walk's first or last cell.

    With the dashes laid from the first cell only, the two ends differed, so a model could answer
    "not connected" whenever both dots sat on ends of the same kind (a quarter of the maps) and
    reach 0.75 without following any path."""
    for length in range(3, 31):
        for dash in (1, 2, 3):
            cells = [(1, c) for c in range(1, length + 1)]
            row = draw_paths(length + 2, [cells], [], dash=dash)[1, 1 : length + 1]
            assert torch.equal(row, row.flip(0)), (length, dash, row)
            gaps = (row == 0).int()
            assert (gaps[1:] * gaps[:-1]).sum() == 0, (length, dash, row)  # never two gaps in a row
            assert row[0] == row[-1] == PATH


def test_pathfinder_labels_agree_with_a_flood_fill():
    images, labels = tasks.pathfinder(48, 24, generator=7)
    assert images.shape == (48, 1, 24, 24) and labels.dtype == torch.int64
    assert 0.25 < labels.float().mean() < 0.75
    for image, label in zip(images, labels):
        assert (image == DOT).sum() == 2
        assert dots_connected(image[0]) == bool(label)


# ---------------------------------------------------------------- same shape
def test_same_shape_labels_and_stamps():
    images, labels, details = tasks.same_shape(32, 28, generator=1, return_details=True)
    assert 0.25 < labels.float().mean() < 0.75
    for image, label, ((a, ra, ca), (b, rb, cb)) in zip(images, labels, details.tolist()):
        assert label.item() == int(a == b)
        assert torch.equal(image[0, ra : ra + STAMP, ca : ca + STAMP], stamp(SHAPES[a]))
        assert torch.equal(image[0, rb : rb + STAMP, cb : cb + STAMP], stamp(SHAPES[b]))
        assert cb - ca >= 28 // 2  # far apart
        assert image.sum() == stamp(SHAPES[a]).sum() + stamp(SHAPES[b]).sum()


def test_same_shape_on_a_grid():
    _, _, details = tasks.same_shape(64, 28, grid=2, generator=3, return_details=True)
    corners = details[:, :, 1:]
    assert (corners % 2 == 0).all()
    assert (details[:, 0, 2] + STAMP <= 7).all() and (details[:, 1, 2] >= 21).all()  # still in the outer quarters


def test_shapes_are_distinct():
    flat = {tuple(stamp(name).flatten().tolist()) for name in SHAPES}
    assert len(flat) == len(SHAPES)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: tasks.mqar(0, 64), "batch"),
        (lambda: tasks.mqar(2, 63, num_kv_pairs=4), "seq_len"),
        (lambda: tasks.mqar(2, 64, num_kv_pairs=20), "seq_len"),
        (lambda: tasks.mqar(2, 64, num_kv_pairs=4, vocab_size=8), "num_kv_pairs"),
        (lambda: tasks.mqar(2, 64, power_a=0), "power_a"),
        (lambda: tasks.listops(2, 64, max_args=1), "max_args"),
        (lambda: tasks.listops(2, 64, min_length=64), "min_length"),
        (lambda: tasks.listops(2, 64, operators=("[MAX", "[AVG")), "operators"),
        (lambda: tasks.listops(2, 64, operators=()), "operators"),
        (lambda: tasks.listops(2, 64, max_depth=1), "min_length"),
        (lambda: tasks.listops(2, 0), "seq_len"),
        (lambda: tasks.selective_copying(2, 20, num_tokens=16), "seq_len"),
        (lambda: tasks.selective_copying(2, 64, vocab_size=1), "vocab_size"),
        (lambda: tasks.pathfinder(2, 4), "side"),
        (lambda: tasks.pathfinder(2, 16, path_length=100), "path_length"),
        (lambda: tasks.pathfinder(2, 16, turn_p=2), "turn_p"),
        (lambda: tasks.same_shape(2, 12), "side"),
        (lambda: tasks.same_shape(2, 28, num_shapes=9), "num_shapes"),
        (lambda: tasks.same_shape(2, 28, grid=5), "grid"),
        (lambda: stamp("star"), "name"),
        (lambda: encode("[MAX 1 2 ]", 3), "seq_len"),
        (lambda: dots_connected(torch.zeros(8, 8)), "image"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.parametrize("generator", [-1, 1.5, "0", True])
def test_bad_generator(generator):
    with pytest.raises(TypeError, match="generator"):
        tasks.mqar(2, 64, generator=generator)
