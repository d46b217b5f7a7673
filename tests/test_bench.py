"""The benchmark command: arguments checked before any run, rows that survive an interruption, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnlib import _platform, bench

REPO = Path(__file__).resolve().parent.parent


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(argv)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "nope"], "no method named 'nope'"),
        (["--methods", ""], "expected comma-separated registry names"),
        (["--methods", "dense", "--sizes", "abc"], "expected a positive integer, got 'abc'"),
        (["--methods", "dense", "--sizes", "-8"], "expected a positive integer"),
        (["--methods", "dense", "--sizes", "0"], "expected a positive integer, got 0"),
        (["--methods", "dense", "--heads", "0"], "expected a positive integer, got 0"),
        (["--methods", "dense", "--repeats", "0"], "expected a positive integer, got 0"),
        (["--methods", "dense", "--device", "meta"], "only cpu and cuda can be measured"),
        (["--methods", "dense", "--device", "nonsense"], "expected a device"),
        (["--kind", "vision", "--methods", "bigbird"], "has no vision mixer"),
        (["--kind", "vision", "--methods", "dense", "--channels", "10", "--heads", "3"], "divisible"),
        (
            ["--methods", "dense", "--sizes", "64", "--max-memory-gib", "nan"],
            "expected a positive finite number, got 'nan'",
        ),
        (
            ["--methods", "dense", "--sizes", "64", "--max-memory-gib", "inf"],
            "expected a positive finite number, got 'inf'",
        ),
        (
            ["--methods", "dense", "--sizes", "64", "--max-memory-gib", "-1"],
            "expected a positive finite number, got '-1'",
        ),
        (
            ["--methods", "dense", "--sizes", "64", "--max-memory-gib", "0"],
            "expected a positive finite number, got '0'",
        ),
        (
            ["--methods", "dense", "--sizes", "64", "--max-memory-gib", "lots"],
            "expected a positive finite number, got 'lots'",
        ),
        (["--methods", "dense", "--sizes", "64", "--plot", "figure.nosuchformat"], "--plot"),
    ],
)
def test_bad_arguments_get_a_usage_message_and_exit_2(argv, message, capsys, tmp_path):
    code, err = run_main(["run", *argv, "--out", str(tmp_path / "r.csv")], capsys)
    assert code == 2 and "usage:" in err and message in err, err
    assert not (tmp_path / "r.csv").exists()


def test_a_gpu_asked_for_where_there_is_none(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = run_main(["run", "--methods", "dense", "--device", "cuda", "--out", str(tmp_path / "r.csv")], capsys)
    assert code == 2 and "no CUDA GPU" in err


def test_an_output_path_that_cannot_be_written_fails_before_measuring(capsys, tmp_path):
    started = time.perf_counter()
    code, err = run_main(["run", "--methods", "dense", "--out", str(tmp_path)], capsys)
    assert code == 2 and "out must be a file path" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_main(["run", "--methods", "dense", "--out", str(blocker / "r.csv")], capsys)
    assert code == 2 and "cannot be written" in err
    assert time.perf_counter() - started < 5  # no configuration was measured


def test_the_worker_stays_out_of_help(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "_worker" not in capsys.readouterr().out


def test_failed_rows_give_a_non_zero_exit(tmp_path, capsys):
    # BigBird's default pattern needs N >= 449: the worker fails, the row records why, exit 1
    out = tmp_path / "r.csv"
    assert bench.main(["run", "--methods", "bigbird", "--sizes", "64", "--repeats", "1", "--out", str(out)]) == 1
    (row,) = bench.read_results(out)
    assert row["status"] == "error" and "needs at least" in row["error"]


def test_a_configuration_that_cannot_fit_is_skipped_not_run(tmp_path):
    rows = bench.run(["dense", "sdpa"], [4096], repeats=1, progress=False, out=tmp_path / "r.csv", max_bytes=2**27)
    by_method = {row["method"]: row for row in rows}
    assert by_method["dense"]["status"] == "skipped" and "GiB" in by_method["dense"]["error"]
    assert by_method["sdpa"]["status"] == "ok"
    assert [row["status"] for row in bench.read_results(tmp_path / "r.csv")] == ["skipped", "ok"]


def test_vision_mixers_are_measured_on_feature_maps(tmp_path):
    rows = bench.run(["dense", "sdpa"], [16], kind="vision", C=8, H=2, repeats=1, progress=False)
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert (row["kind"], row["N"], row["side"], row["C"], row["d"]) == ("vision", 256, 16, 8, 4)
    assert rows[0]["peak_mib"] >= 2 * 2 * 256 * 256 * 4 / 2**20 * 0.8  # dense: two N x N float32 per head


def _rows_in(path: Path) -> list[dict]:
    return bench.read_results(path) if path.exists() else []


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...], None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process ended while we looked
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _processes_in_session(session: int) -> set[int]:
    """Live processes (not zombies) of one session: a fork server and the child measuring in it."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[3]) == session:
            found.add(int(entry.name))
    return found


def _fork_servers_of(parent: int) -> set[int]:
    """The fork servers that process ``parent`` started (each leads a session of its own)."""
    servers = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            is_server = b"_fork_server" in cmdline.read_bytes()
        except OSError:
            continue
        fields = _stat_fields(int(cmdline.parent.name))
        if is_server and fields is not None and int(fields[1]) == parent:
            servers.add(int(cmdline.parent.name))
    return servers


def _process_group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server runs on Linux")
def test_a_timeout_stops_the_measuring_process_and_the_next_configuration_runs():
    assert bench.measure_in_fresh_process("sdpa", 64, repeats=1)["status"] == "ok"  # the server is up
    server = _platform._FORK_SERVER
    stuck = bench.measure_in_fresh_process("dense", 4096, repeats=1000, timeout=2)  # minutes of work
    assert stuck["status"] == "error" and stuck["error"] == "timeout after 2 s"
    assert server.poll() is not None
    deadline = time.monotonic() + 10  # the killed child is gone once the system has reaped it
    while _process_group_exists(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _process_group_exists(server.pid)  # the child measuring in the server is gone too
    row = bench.measure_in_fresh_process("sdpa", 64, repeats=1)  # measured by a new server
    assert row["status"] == "ok", row["error"]
    assert _platform._FORK_SERVER is not server


def test_a_new_interpreter_measures_the_same_as_a_forked_process():
    # Outside Linux every configuration starts a new Python; both give a full row.
    config = bench._config("dense", 1024, repeats=1)
    fresh = bench._measure_in_new_interpreter(config, timeout=300)
    assert fresh["status"] == "ok", fresh["error"]
    if sys.platform == "linux":
        forked = bench._measure_in_forked_process(config, timeout=300)
        expected = 2 * 4 * 1024**2 * 4 / 2**20  # dense: two N x N float32 buffers per head
        for row in (fresh, forked):
            assert abs(row["peak_mib"] - expected) < 0.1 * expected, row


def _restore_default_sigint():
    """Run in the child before exec: a shell that starts a job in the background without job
    control leaves SIGINT ignored, and an ignored signal stays ignored across exec. The tests
    below interrupt the run with SIGINT, as a reader's Ctrl-C would, so the child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    out = tmp_path / "r.csv"
    command = [sys.executable, "-m", "attnlib.bench", "run", "--methods", "sdpa", "--sizes", "64,128,256,512,2048,4096",
               "--repeats", "3", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_restore_default_sigint
    )
    deadline = time.monotonic() + 120
    while len(_rows_in(out)) < 1 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    # only the fork server of this run is watched: other benchmarks on the machine may run theirs
    servers = _fork_servers_of(process.pid) if sys.platform == "linux" else set()
    assert servers or sys.platform != "linux", "the run measures in a fork server"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    before = _rows_in(out)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert 1 <= len(before) < 6  # stopped part-way, with every finished row on disk and well-formed
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    for server in servers:  # the run stopped its fork server and the measurement in it (the server's session)
        deadline = time.monotonic() + 10  # killed processes are gone once the system has reaped them
        while _processes_in_session(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_in_session(server)

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    after = bench.read_results(out)
    assert [row["N"] for row in after] == [64, 128, 256, 512, 2048, 4096]  # each size once, in order
    assert after[: len(before)] == before  # the finished rows were kept, not measured again
    assert os.path.getsize(out) > 0


def test_rounds_take_turns_and_keep_the_median(tmp_path, monkeypatch):
    """rounds=3: each configuration in 3 processes, methods alternating; the median of each is kept."""
    calls = []
    times = {"sdpa": iter([0.9, 0.1, 0.5]), "dense": iter([2.0, 3.0, 1.0])}

    def fake_measure(config, *, timeout, max_bytes):
        calls.append(config["method"])
        row = {key: config[key] for key in bench.CONFIG_FIELDS}
        seconds = next(times[config["method"]])
        return dict(row, median_s=seconds, peak_mib=10 * seconds, status="ok", error="")

    monkeypatch.setattr(bench, "_measure_config", fake_measure)
    rows = bench.run(["dense", "sdpa"], [64], out=tmp_path / "r.csv", progress=False, rounds=3)
    assert calls == ["dense", "sdpa"] * 3
    assert {row["method"]: row["median_s"] for row in rows} == {"dense": 2.0, "sdpa": 0.5}
    written = bench.read_results(tmp_path / "r.csv")
    assert {row["method"]: row["median_s"] for row in written} == {"dense": 2.0, "sdpa": 0.5}
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        bench.run(["dense"], [64], progress=False, rounds=0)
    for max_bytes in (-1, 0, float("nan")):  # would skip every configuration, or fail mid-run
        with pytest.raises(ValueError, match="max_bytes must be None or a positive int"):
            bench.run(["dense"], [64], progress=False, max_bytes=max_bytes)


_CHURN = """
import ctypes, ctypes.util, resource, sys, torch
from attnlib import _platform
libc = ctypes.CDLL(ctypes.util.find_library("c"))
# a churning state, as glibc's moving threshold leaves some processes: every block above 1 MiB
# gets pages of its own, handed back when it is freed, so each call faults them in again
libc.mallopt(_platform.M_MMAP_THRESHOLD, 2**20)
if sys.argv[1] == "steady":
    assert _platform.steady_allocator()
faults = []
for _ in range(4):  # one "call": ten 3 MiB blocks on the heap, touched, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(3 * 2**18) for _ in range(10)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_steady_allocator_lets_repeated_calls_reuse_their_pages():
    """In the churning state glibc maps each 3 MiB block on its own and hands it back when freed, so
    every call faults its 30 MiB in again (Swin's slow mode in the module docstring); after
    ``steady_allocator`` the calls after the first reuse the heap's pages and fault none."""

    def faults_per_call(mode):
        run = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    assert faults_per_call("churning") > 5000  # 30 MiB of 4 KiB pages, every call
    assert faults_per_call("steady") < 100


def _fake_measure(calls: list, interrupt_at: int):
    """A stand-in for one measurement that Ctrl-C interrupts at call ``interrupt_at``."""

    def measure(config, *, timeout, max_bytes):
        calls.append((config["method"], config["N"]))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        row = {key: config[key] for key in bench.CONFIG_FIELDS}
        return dict(row, median_s=0.001 * len(calls), peak_mib=1.0, status="ok", error="")

    return measure


def test_ctrl_c_keeps_every_finished_configuration_of_a_multi_method_run(tmp_path, monkeypatch):
    """Each row is on disk as soon as its configuration is done, not when every method of its size is."""
    out = tmp_path / "r.csv"
    calls = []
    monkeypatch.setattr(bench, "_measure_config", _fake_measure(calls, interrupt_at=6))
    with pytest.raises(KeyboardInterrupt):
        bench.run(["dense", "sdpa", "flash"], [64, 128], out=out, progress=False)
    assert calls[:5] == [("dense", 64), ("sdpa", 64), ("flash", 64), ("dense", 128), ("sdpa", 128)]
    assert [(row["method"], row["N"]) for row in bench.read_results(out)] == calls[:5]
    assert not list(tmp_path.glob(".*"))  # no temporary or lock file left behind
    # with rounds, a configuration is done after its last round: dense is, sdpa is not yet
    out = tmp_path / "rounds.csv"
    calls.clear()
    monkeypatch.setattr(bench, "_measure_config", _fake_measure(calls, interrupt_at=4))
    with pytest.raises(KeyboardInterrupt):
        bench.run(["dense", "sdpa"], [64], out=out, progress=False, rounds=2)
    assert [row["method"] for row in bench.read_results(out)] == ["dense"]


RESULTS_HEADER = ",".join(bench.FIELDS) + "\n"
GOOD_ROW = "sdpa,language,64,,1,4,64,,float32,cpu,False,2,0.001,1.0,ok,\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"my notes, do not lose\n", "is not a results file of python -m attnlib.bench"),
        (b"name,score\nalice,3\nbob,5\n", "is not a results file of python -m attnlib.bench"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not a results file"),
        ((RESULTS_HEADER + GOOD_ROW + GOOD_ROW.replace(",64,,", ",abc,,")).encode(), "line 3: N must be an integer"),
        ((RESULTS_HEADER + GOOD_ROW + "sdpa,language,64\n").encode(), "line 3 has 3 fields, expected 16"),
        ((RESULTS_HEADER + GOOD_ROW.replace("False", "maybe")).encode(), "line 2: causal must be True or False"),
        ((RESULTS_HEADER + GOOD_ROW.replace(",ok,", ",fine,")).encode(), "line 2: status must be one of"),
        ((RESULTS_HEADER + "sdpa,lang\0uage" + GOOD_ROW[14:]).encode(), "NUL byte"),
    ],
    ids=["text", "another-csv", "binary", "bad-number", "short-row", "bad-flag", "bad-status", "nul"],
)
def test_an_out_file_that_is_not_a_good_results_file_is_refused_and_left_alone(content, message, tmp_path, capsys):
    out = tmp_path / "r.csv"
    out.write_bytes(content)
    argv = ["run", "--methods", "sdpa", "--sizes", "64", "--repeats", "1", "--out", str(out)]
    code, err = run_main(argv, capsys)
    assert code == 2 and "usage:" in err and message in err, err
    assert out.read_bytes() == content
    if b"is not a results file" in message.encode():  # measuring afresh would still destroy it
        code, err = run_main([*argv, "--restart"], capsys)
        assert code == 2 and message in err and out.read_bytes() == content
    with pytest.raises(ValueError, match=message):
        bench.run(["sdpa"], [64], out=out, progress=False)
    assert out.read_bytes() == content
    code, err = run_main(["plot", str(out), "--out", str(tmp_path / "r.png")], capsys)
    assert code == 2 and message in err and not (tmp_path / "r.png").exists()


def test_plot_of_a_missing_or_empty_file_is_a_usage_error(tmp_path, capsys):
    code, err = run_main(["plot", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r.png")], capsys)
    assert code == 2 and "usage:" in err and "does not exist" in err
    (tmp_path / "empty.csv").write_text(RESULTS_HEADER)
    code, err = run_main(["plot", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "r.png")], capsys)
    assert code == 2 and "no measured row" in err
    (tmp_path / "one.csv").write_text(RESULTS_HEADER + GOOD_ROW)
    code, err = run_main(["plot", str(tmp_path / "one.csv"), "--out", str(tmp_path / "r.nosuchformat")], capsys)
    assert code == 2 and "--out" in err and "nosuchformat" in err


def test_a_second_run_on_the_same_out_is_refused_while_the_first_writes(tmp_path):
    """Two runs on one --out: the second stops at once with a usage error, the first keeps its rows."""
    out = tmp_path / "r.csv"
    first = [sys.executable, "-m", "attnlib.bench", "run", "--methods", "sdpa", "--sizes", "64,4096",
             "--repeats", "200", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        first, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_restore_default_sigint
    )
    try:
        deadline = time.monotonic() + 120
        while len(_rows_in(out)) < 1 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert process.poll() is None and len(_rows_in(out)) == 1, "the first run is still measuring"
        second = [sys.executable, "-m", "attnlib.bench", "run", "--methods", "dense", "--sizes", "64",
                  "--repeats", "1", "--out", str(out)]  # fmt: skip
        refused = subprocess.run(second, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert process.poll() is None, "the first run was still measuring when the second was refused"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "usage:" in refused.stderr and "another run is writing" in refused.stderr
    assert [row["method"] for row in bench.read_results(out)] == ["sdpa"]  # the second measured nothing
    assert not list(tmp_path.glob(".*"))  # the first run left no lock or temporary file
