"""Measure wall time and peak memory of attention methods, side by side in one run.

How (see FACTS.md of the project):

* **time**: the median of ``repeats`` calls after ``warmup`` calls; on a GPU each
  call is synchronized. On the shared CPUs only ratios measured in the same run
  mean something; absolute times are quoted only from a GPU.
* **peak memory on CPU**: each configuration runs in a *fresh process* (forked from a
  server process that has imported torch and run nothing: the ~3 s import is paid once,
  not once per configuration); it builds its inputs, calls the method once on a short
  input (the first call of a process also sets up thread pools and BLAS buffers, about
  10 MB that belong to no method), hands the memory that call freed back to the system, resets the
  kernel's high-water mark of the resident set, reads the current resident set
  size, calls the method once, and reports the high-water mark minus that.
  Dense attention then reads exactly its two ``N x N`` float32 buffers (scores
  and probabilities). On a GPU: ``torch.cuda.max_memory_allocated`` minus the
  memory held before the call.
* **a steady C allocator while timing (CPU)**: after the memory measurement the worker fixes
  glibc's thresholds (:func:`steady_allocator`). By default glibc serves a large block with a
  fresh ``mmap`` once the block is above a threshold that it moves as the process frees memory,
  so the same code ran in two speeds in different fresh processes: Swin's window layer at
  112 x 112 took 35 ms in some and 50 ms in others, where every call paid ~7,100 page faults.
  Fixed thresholds let every call reuse the pages of the previous one in every process, as
  PyTorch's caching allocator does on a GPU. Blocks above 32 MiB (dense attention's N x N
  buffers) are still mapped fresh each call, as before.

Two kinds of configuration:

* ``language``: attention kernels ``f(q, k, v)`` on ``q, k, v: (B, H, N, d)``, N tokens;
* ``vision``: token mixers ``x: (B, side, side, C) -> (B, side, side, C)`` built by the
  registry's ``make_mixer``; ``dense`` and ``sdpa`` are then a global multi-head
  self-attention mixer of the same C and heads. ``--sizes`` are the sides of square maps.

Long runs: every row is written to the CSV as soon as its configuration is measured (written
to a temporary file, then renamed, so the file is never half-written); a run stopped with Ctrl-C
and started again with the same command measures only what is missing. A run holds a lock on its
CSV (``flock`` on a hidden ``.NAME.lock`` beside it, removed at the end): a second run on the same
file stops at once instead of overwriting the first one's rows. A file that is not a results file
of this tool, or has a malformed row, is refused and left as it is. A configuration whose estimated memory
exceeds what the machine has is recorded as ``skipped`` instead of being run.

Command line::

    python -m attnlib.bench run --methods dense,sdpa,bigbird --sizes 1024,4096 --out results.csv
    python -m attnlib.bench run --kind vision --methods dense,sdpa,swin --sizes 28,56,112 --out vision.csv
    python -m attnlib.bench plot results.csv --out results.png

The exit status is 0 when every row was measured or skipped, 1 when a row failed, 2 for bad
arguments (an ``--out`` that is not a results file of this tool, has a malformed row or is being
written by another run included; nothing is measured then) and 130 when interrupted.

Chapter: "Introduction" (chapters/*/00_introduction.ipynb).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from ._platform import (
    ask_fork_server,
    available_bytes,
    release_free_memory,
    reset_peak_rss,
    serve_forks,
    status_bytes,
    steady_allocator,
)

__all__ = [
    "median_time",
    "peak_memory_bytes",
    "measure_in_fresh_process",
    "run",
    "fit_slope",
    "results_path",
    "read_results",
    "ResultsFileError",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KINDS = ("language", "vision")
# One CSV row per configuration. N is the number of tokens (side * side for vision);
# side and C are empty for language rows, d is C / H for vision rows.
# status: "ok", "skipped" (estimated memory too large, see error) or "error".
CONFIG_FIELDS = ["method", "kind", "N", "side", "B", "H", "d", "C", "dtype", "device", "causal", "threads"]
FIELDS = CONFIG_FIELDS + ["median_s", "peak_mib", "status", "error"]
# Files written before the vision kind and the status column existed lack these; every other field is required.
OPTIONAL_FIELDS = ("kind", "side", "C", "status")
STATUSES = ("ok", "skipped", "error")


class ResultsFileError(ValueError):
    """A file is not a results file of this tool (or not a well-formed one), or another run is writing it."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device="cpu") -> float:
    """Median wall time of ``fn()`` in seconds, over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_bytes(fn: Callable[[], object], device="cpu") -> int:
    """Peak memory that one call of ``fn()`` adds, in bytes.

    On CPU: the resident-set high-water mark is reset just before the call (or, where
    the kernel does not allow that, ``ru_maxrss`` is read, which is only meaningful for
    the first large call in a fresh process: use :func:`measure_in_fresh_process`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if reset_peak_rss():
        before = status_bytes("VmRSS")
        fn()
        peak = status_bytes("VmHWM")
    else:
        before = status_bytes("VmRSS")
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(0, peak - before)


def _make_inputs(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, d, generator=generator).to(device=device, dtype=dtype) for _ in range(3))
    return q, k, v  # each (B, H, N, d)


WARMUP_TOKENS = 1024  # the short input of the warm-up call before the memory measurement
WARMUP_SIDE = 28  # the small map of the warm-up call of a vision mixer


def _language_call(config: dict, device: torch.device):
    """(warm-up call, measured call) for an attention kernel on ``(B, H, N, d)`` inputs."""
    from . import registry

    method = registry.get(config["method"])
    attention = method.attention_fn()
    kwargs = dict(method.bench_kwargs)
    if config["causal"]:
        kwargs["causal"] = True
    q, k, v = _make_inputs(config["B"], config["H"], config["N"], config["d"], DTYPES[config["dtype"]], device)
    short = min(config["N"], WARMUP_TOKENS)
    small = tuple(x[:, :, :short].contiguous() for x in (q, k, v))  # each (B, H, short, d)
    return (lambda: attention(*small, **kwargs)), (lambda: attention(q, k, v, **kwargs))


def _vision_call(config: dict, device: torch.device):
    """(warm-up call, measured call) for a vision mixer on a ``(B, side, side, C)`` map."""
    from . import registry

    factory = registry.get(config["method"]).mixer_factory()
    dtype, side, B, C, H = DTYPES[config["dtype"]], config["side"], config["B"], config["C"], config["H"]
    generator = torch.Generator(device="cpu").manual_seed(0)
    small_side = min(side, WARMUP_SIDE)
    small_mixer = factory(C, H, small_side, small_side).to(device=device, dtype=dtype).eval()
    mixer = factory(C, H, side, side).to(device=device, dtype=dtype).eval()
    small = torch.randn(B, small_side, small_side, C, generator=generator).to(device=device, dtype=dtype)
    x = torch.randn(B, side, side, C, generator=generator).to(device=device, dtype=dtype)  # (B, side, side, C)
    return (lambda: small_mixer(small)), (lambda: mixer(x))


def _measure_here(config: dict) -> dict:
    """Measure one configuration in this process (the worker side of the fresh process)."""
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    make_calls = _vision_call if config.get("kind", "language") == "vision" else _language_call
    warmup_call, measured_call = make_calls(config, device)

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn()

        return call

    warmup_call, measured_call = no_grad(warmup_call), no_grad(measured_call)
    # Warm-up on a short input: one-time setup (thread pools, BLAS buffers) is not the method's memory.
    warmup_call()
    release_free_memory()
    peak = peak_memory_bytes(measured_call, device)  # the memory measurement
    if device.type == "cpu":
        steady_allocator()  # the timing: every call reuses the pages of the previous one
    seconds = median_time(measured_call, repeats=config["repeats"], warmup=config["warmup"], device=device)
    return {"median_s": seconds, "peak_mib": peak / 2**20, "status": "ok", "error": ""}


def _config(
    method: str,
    size: int,
    *,
    kind: str = "language",
    B: int = 1,
    H: int | None = None,
    d: int | None = None,
    C: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    causal: bool = False,
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 1,
) -> dict:
    """The full configuration of one measurement; ``size`` is N (language) or the side (vision)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if kind == "language":
        H = 4 if H is None else H
        d = 64 if d is None else d
        config = dict(N=size, side="", C="", H=H, d=d)
    else:
        H = 3 if H is None else H
        C = 96 if C is None else C
        if C % H != 0:
            raise ValueError(f"C must be divisible by the number of heads H, got C={C}, H={H}")
        config = dict(N=size * size, side=size, C=C, H=H, d=C // H)
    config.update(
        method=method,
        kind=kind,
        B=B,
        dtype=dtype,
        device=device,
        causal=causal,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
    )
    return config


def estimated_bytes(config: dict) -> int:
    """A rough upper estimate of the memory one configuration needs, to skip what cannot fit.

    Dense attention holds two ``N x N`` score buffers per head in float32; every method holds
    its inputs and output. Other methods are assumed to need no more than a few times their inputs.
    """
    B, H, N = config["B"], config["H"], config["N"]
    width = config["d"] * H if config["kind"] == "language" else config["C"]
    io_bytes = 8 * B * N * width * 4  # q, k, v, out and projections, float32
    if config["method"] == "dense":
        return 2 * B * H * N * N * 4 + io_bytes
    return io_bytes


def measure_in_fresh_process(
    method: str, N: int, *, timeout: float = 900, max_bytes: int | None = None, **options
) -> dict:
    """Run one configuration in a new Python process and return its row (see ``FIELDS``).

    ``N`` is the sequence length (``kind="language"``) or the side of the square map
    (``kind="vision"``); ``options`` are those of :func:`run`.
    """
    return _measure_config(_config(method, N, **options), timeout=timeout, max_bytes=max_bytes)


def _measure_config(config: dict, *, timeout: float, max_bytes: int | None) -> dict:
    row = {key: config[key] for key in CONFIG_FIELDS}
    limit = int(0.8 * available_bytes()) if max_bytes is None else max_bytes
    need = estimated_bytes(config)
    if need > limit:
        row.update(
            median_s=math.nan,
            peak_mib=math.nan,
            status="skipped",
            error=f"estimated {need / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB allowed",
        )
        return row
    if sys.platform == "linux":
        result = _measure_in_forked_process(config, timeout)
    else:  # no fork (Windows), or a fork after importing torch may be unsafe (macOS): a new interpreter
        result = _measure_in_new_interpreter(config, timeout)
    row.update(result)
    return row


def _error_result(message: str) -> dict:
    return {"median_s": math.nan, "peak_mib": math.nan, "status": "error", "error": message}


def _measure_in_forked_process(config: dict, timeout: float) -> dict:
    """Measure one configuration in a child of the fork server (:mod:`attnlib._platform`), within ``timeout`` s."""
    answer = ask_fork_server([sys.executable, "-m", "attnlib.bench", "_fork_server"], config, timeout)
    return answer if isinstance(answer, dict) else _error_result(answer)


def _measure_in_new_interpreter(config: dict, timeout: float) -> dict:
    command = [sys.executable, "-m", "attnlib.bench", "_worker", json.dumps(config)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _error_result(f"timeout after {timeout} s")
    if completed.returncode != 0:
        return _error_result((completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"])[-1])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _key(row: dict) -> tuple:
    """What identifies a configuration in a CSV (numbers compared as text, as they are stored).

    Files written before the vision kind existed have no ``kind`` column: their rows are language rows.
    """
    defaults = {"kind": "language"}
    values = (row.get(field) for field in CONFIG_FIELDS)
    return tuple(
        str(defaults.get(field, "") if value in (None, "") else value) for field, value in zip(CONFIG_FIELDS, values)
    )


def check_writable(out: str | Path) -> Path:
    """Fail before measuring anything if ``out`` cannot be written (a folder, a read-only place)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out must be a file path, got the folder {str(out)!r}")
    parent = out.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"out cannot be written: {str(existing)!r} is not a writable folder")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"out cannot be written: {str(out)!r} is read-only")
    return out


def machine_description() -> str:
    """CPU model, cores, torch version and GPU (where there is one), for the header of a result file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


def run(
    methods: Sequence[str],
    sizes: Sequence[int],
    *,
    out: str | Path | None = None,
    progress: bool = True,
    resume: bool = True,
    max_bytes: int | None = None,
    timeout: float = 900,
    rounds: int = 1,
    **options,
) -> list[dict]:
    """Measure every method at every size, one fresh process each, in one run.

    ``rounds > 1`` measures every configuration of a size in ``rounds`` fresh processes, the
    methods taking turns (a, b, c, a, b, c, ...), and keeps the median time and memory: on a
    shared machine a slow spell of a few seconds then shifts one of the samples, not the result,
    and it hits every method alike.

    ``options``: ``kind`` ("language" or "vision"), ``B``, ``H`` (heads), ``d`` (head dim,
    language), ``C`` (channels, vision), ``dtype``, ``device``, ``causal``, ``threads``,
    ``repeats``, ``warmup``. Sizes run in the outer loop so that all methods at one size are
    measured close together in time. With ``out``, each row is written as soon as its
    configuration is measured (all its rounds), and rows already in ``out`` for the same
    configuration are kept and not measured again (``resume=False`` starts the file afresh).
    Returns the rows of this run's configurations.

    Raises :class:`ResultsFileError` (a ``ValueError``) before measuring anything when ``out`` is
    not a results file of this tool (left untouched), has a malformed row (when resuming), or
    another run is writing it.
    """
    from . import registry

    kind = options.get("kind", "language")
    for name in methods:
        _check_method(registry.get(name), kind)  # fail early on an unknown or unsuitable name
    configs = [_config(name, size, **options) for size in sizes for name in methods]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"max_bytes must be None or a positive int (bytes), got {max_bytes!r}")
    if out is not None:
        out = check_writable(out)
    with nullcontext() if out is None else results_lock(out):
        done: dict[tuple, dict] = {}
        if out is not None and out.exists() and out.stat().st_size > 0:
            existing = _read_raw(out, check_rows=resume)  # refuses a file of another program, leaves it alone
            if resume:
                done = {_key(row): row for row in existing if read_row(row)["status"] in ("ok", "skipped")}
        return _run_configurations(sizes, methods, options, configs, done, out, progress, timeout, max_bytes, rounds)


def _run_configurations(sizes, methods, options, configs, done, out, progress, timeout, max_bytes, rounds):
    """The measuring loop of :func:`run`: each row is written as soon as its configuration is done."""
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(configs) * rounds, desc="bench", disable=not progress)
    for size in sizes:
        at_size = [_config(name, size, **options) for name in methods]
        rows += [read_row(done[_key(c)]) for c in at_size if _key(c) in done]
        todo = [c for c in at_size if _key(c) not in done]
        bar.update(rounds * (len(at_size) - len(todo)))
        samples: dict[tuple, list[dict]] = {_key(c): [] for c in todo}
        for round_index in range(rounds):
            for config in todo:  # the methods take turns
                bar.set_postfix_str(f"{config['method']} N={config['N']}")
                samples[_key(config)].append(_measure_config(config, timeout=timeout, max_bytes=max_bytes))
                bar.update(1)
                if round_index == rounds - 1:  # this configuration is done: its row goes to disk now
                    row = _combine(samples[_key(config)])
                    rows.append(row)
                    if out is not None:
                        done[_key(config)] = row
                        _write_atomically(list(done.values()), out)
    bar.close()
    return rows


def _combine(samples: list[dict]) -> dict:
    """One row from the rows of several rounds: the median time and peak memory, or the first failure."""
    failed = [row for row in samples if row["status"] != "ok"]
    if failed:
        return failed[0]
    row = dict(samples[0])
    for key in ("median_s", "peak_mib"):
        row[key] = statistics.median(sample[key] for sample in samples)
    return row


def _check_method(method, kind: str) -> None:
    if kind == "vision" and method.make_mixer is None:
        raise ValueError(f"method {method.name!r} has no vision mixer (make_mixer) and cannot run with kind='vision'")
    if kind == "language" and method.attention is None:
        raise ValueError(f"method {method.name!r} has no attention kernel and cannot run with kind='language'")


@contextmanager
def results_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the results file ``out`` for one run, or raise :class:`ResultsFileError`.

    The lock is ``flock`` on a hidden file ``.NAME.lock`` beside ``out`` (not on ``out`` itself:
    each write replaces ``out`` by a rename, a new file). The lock file is removed while still
    locked at the end; a run that opened it just before checks that it locked the file that is
    still there, and tries again otherwise. A killed run's lock ends with its process.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(f".{out.name}.lock")
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ResultsFileError(
                f"another run is writing {str(out)!r} (it holds {lock_path.name}): wait until it ends, "
                "or write to another file"
            ) from None
        try:
            still_there = os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
        except FileNotFoundError:  # the run before ours removed it after we opened it
            still_there = False
        if still_there:
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())  # who holds it, for a person who looks
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still locked: no other run can hold this file now
        os.close(descriptor)


def _write_atomically(rows: list[dict], out: Path) -> None:
    """Write every row to ``out`` through a temporary file and a rename: never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", newline="") as handle:
            handle.write(f"# measured {datetime.date.today().isoformat()} on {machine_description()}\n")
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, out)
    except BaseException:  # Ctrl-C while writing: the previous file stays, the temporary goes
        temporary.unlink(missing_ok=True)
        raise


def write_results(rows: list[dict], out: str | Path) -> None:
    """Write ``rows`` as a CSV with a header line naming the date and the machine."""
    _write_atomically(rows, Path(out))


NOT_OURS = "is not a results file of python -m attnlib.bench"
FIX_THE_LINE = "fix or delete that line, or measure everything again (--restart; resume=False)"


def _read_raw(path: str | Path, *, check_rows: bool = True) -> list[dict]:
    """The rows of a results file as text, after checking that it is one (:class:`ResultsFileError` if not).

    The header must name this tool's columns; with ``check_rows`` every row must also read back
    (:func:`read_row`). Messages name the file and the line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ResultsFileError(f"{str(path)!r} does not exist") from None
    except OSError as error:
        raise ResultsFileError(f"{str(path)!r} cannot be read: {error.strerror}") from None
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ResultsFileError(
            f"{str(path)!r}, line {line} holds a NUL byte, which no results file of python -m attnlib.bench has "
            "(a binary file?): fix or delete that line, or choose another file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ResultsFileError(f"{str(path)!r} {NOT_OURS}: it is not UTF-8 text") from None
    numbered = [
        (number, line) for number, line in enumerate(text.splitlines(keepends=True), 1) if not line.startswith("#")
    ]
    reader = csv.reader(line for _, line in numbered)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise ResultsFileError(f"{str(path)!r} {NOT_OURS}: {error}") from None
    required = [field for field in FIELDS if field not in OPTIONAL_FIELDS]
    if header is None or not set(required) <= set(header) <= set(FIELDS) or len(set(header)) != len(header):
        found = "no header line" if header is None else f"the columns {header}"
        raise ResultsFileError(
            f"{str(path)!r} {NOT_OURS}: it has {found}, expected the columns {FIELDS}; "
            "it was left as it is: choose another file"
        )
    rows = []
    try:
        for fields in reader:
            line = numbered[reader.line_num - 1][0]
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise ResultsFileError(
                    f"{str(path)!r}, line {line} has {len(fields)} fields, expected {len(header)}: {FIX_THE_LINE}"
                )
            row = dict(zip(header, fields))
            if check_rows:
                try:
                    read_row(row)
                except ValueError as error:
                    raise ResultsFileError(f"{str(path)!r}, line {line}: {error}: {FIX_THE_LINE}") from None
            rows.append(row)
    except csv.Error as error:
        line = numbered[reader.line_num - 1][0]
        raise ResultsFileError(f"{str(path)!r}, line {line}: {error}: {FIX_THE_LINE}") from None
    return rows


def _parse(row: dict, key: str, kind: type, what: str):
    value = row[key]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {what}, got {value!r}") from None


def read_row(row: dict) -> dict:
    """One CSV row with its numbers converted back (older files without kind/side/C/status read as language rows).

    A value that cannot be one of this tool's raises ``ValueError`` naming the column.
    """
    row = dict(row)
    if not row.get("kind"):
        row["kind"] = "language"
    if row["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {row['kind']!r}")
    if not row.get("method"):
        raise ValueError(f"method must name a method, got {row.get('method')!r}")
    for key in ("N", "B", "H", "d", "threads"):
        row[key] = _parse(row, key, int, "an integer")
    for key in ("side", "C"):
        row[key] = _parse(row, key, int, "an integer or empty") if row.get(key) not in (None, "") else None
    if str(row["causal"]) not in ("True", "False"):
        raise ValueError(f"causal must be True or False, got {row['causal']!r}")
    row["causal"] = str(row["causal"]) == "True"
    for key in ("median_s", "peak_mib"):
        row[key] = _parse(row, key, float, "a number or empty") if row[key] not in ("", None) else math.nan
    row["error"] = row.get("error") or ""
    if not row.get("status"):
        row["status"] = "error" if row["error"] else "ok"
    if row["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row['status']!r}")
    return row


def read_results(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`run`, numbers converted back (:class:`ResultsFileError` for another file)."""
    return [read_row(row) for row in _read_raw(path)]


def results_path(name: str) -> Path:
    """Path of a committed benchmark result, ``benchmarks/results/NAME`` in the repository."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "results" / name


def fit_slope(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(sizes): the exponent p in value ~ N^p."""
    points = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v > 0 and math.isfinite(v)]
    if len(points) < 2:
        raise ValueError(f"need at least two positive finite values to fit a slope, got {len(points)}")
    if len({x for x, _ in points}) < 2:
        raise ValueError(
            f"need values at two different sizes to fit a slope, got one size, {math.exp(points[0][0]):.6g}"
        )
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance


def plot(rows: list[dict], *, out: str | Path | None = None, title: str = ""):
    """Log-log plots of time and peak memory against N, one line per method; returns the figure."""
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((r for r in rows if r["method"] == name and not r["error"]), key=lambda r: r["N"])
        sizes = [r["N"] for r in mine]
        time_axis.plot(sizes, [r["median_s"] * 1e3 for r in mine], marker="o", label=name)
        memory_axis.plot(sizes, [max(r["peak_mib"], 1e-2) for r in mine], marker="o", label=name)
    for axis, label in ((time_axis, "time [ms]"), (memory_axis, "peak memory [MiB]")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("N (tokens)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    if out is not None:
        figure.savefig(out, dpi=120)
    return figure


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def check_figure_path(path: str | Path) -> Path:
    """Fail before measuring if a figure cannot be saved at ``path`` (a folder, read-only, unknown format)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = check_writable(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise ValueError(f"the name must end in one of {', '.join('.' + name for name in formats)}, got {path.name!r}")
    return path


def _size_list(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated positive integers, got nothing")
    return [_positive_int(part) for part in parts]


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu or cuda, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"only cpu and cuda can be measured, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} was asked for, but this machine has no CUDA GPU")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnlib.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,plot}")
    run_parser = commands.add_parser("run", help="measure registered methods against N (or the map side)")
    run_parser.add_argument(
        "--kind",
        default="language",
        choices=KINDS,
        help="language: attention kernels on N tokens; vision: token mixers on side x side maps",
    )
    run_parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated registry names, e.g. dense,sdpa (default: every method of the kind)",
    )
    run_parser.add_argument(
        "--sizes",
        type=_size_list,
        help="comma-separated N (language, default 1024..16384) or sides (vision, default 28..112)",
    )
    run_parser.add_argument("--out", required=True, help="CSV file: rows are appended as they finish, and resumed")
    run_parser.add_argument("--restart", action="store_true", help="measure everything again instead of resuming")
    run_parser.add_argument("--plot", help="also write a log-log PNG here")
    run_parser.add_argument("--batch", type=_positive_int, default=1)
    run_parser.add_argument("--heads", type=_positive_int, help="heads (default 4 for language, 3 for vision)")
    run_parser.add_argument("--head-dim", type=_positive_int, default=64, help="language only")
    run_parser.add_argument("--channels", type=_positive_int, default=96, help="vision only: C")
    run_parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    run_parser.add_argument("--device", type=_device, default="cpu")
    run_parser.add_argument("--causal", action="store_true")
    run_parser.add_argument("--threads", type=_positive_int, default=2)
    run_parser.add_argument("--repeats", type=_positive_int, default=5)
    run_parser.add_argument(
        "--rounds", type=_positive_int, default=1, help="fresh processes per configuration, methods taking turns"
    )
    run_parser.add_argument("--max-memory-gib", type=_positive_number, help="skip configurations estimated above this")
    plot_parser = commands.add_parser("plot", help="plot a CSV written by 'run'")
    plot_parser.add_argument("csv")
    plot_parser.add_argument("--out", required=True)
    worker = commands.add_parser("_worker")
    worker.add_argument("config")
    commands.add_parser("_fork_server")
    return parser


def main(argv=None) -> int:
    from . import registry

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "_worker":
        print(json.dumps(_measure_here(json.loads(args.config))))
        return 0
    if args.command == "_fork_server":
        serve_forks(_measure_here, _error_result)
        return 0
    if args.command == "plot":
        try:
            rows = read_results(args.csv)
        except ResultsFileError as error:
            parser.error(f"csv: {error}")
        if not [row for row in rows if row["status"] == "ok"]:
            parser.error(f"csv: {args.csv!r} holds no measured row to plot")
        try:
            check_figure_path(args.out)
        except ValueError as error:
            parser.error(f"--out: {error}")
        plot(rows, out=args.out)
        return 0

    kind = args.kind
    if args.methods is None:
        names = [m.name for m in registry.METHODS if (m.make_mixer if kind == "vision" else m.attention)]
    else:
        names = [name.strip() for name in args.methods.split(",") if name.strip()]
        if not names:
            parser.error(f"--methods: expected comma-separated registry names, got {args.methods!r}")
    for name in names:
        try:
            _check_method(registry.get(name), kind)
        except ValueError as error:
            parser.error(f"--methods: {error}")
    sizes = args.sizes or ([28, 56, 84, 112] if kind == "vision" else [1024, 2048, 4096, 8192, 16384])
    heads = args.heads or (3 if kind == "vision" else 4)
    if kind == "vision" and args.channels % heads != 0:
        parser.error(f"--channels must be divisible by --heads, got {args.channels} and {heads}")
    try:
        check_writable(args.out)
    except ValueError as error:
        parser.error(f"--out: {error}")
    if args.plot:
        try:
            check_figure_path(args.plot)
        except ValueError as error:
            parser.error(f"--plot: {error}")
    options = dict(
        kind=kind,
        B=args.batch,
        H=heads,
        dtype=args.dtype,
        device=args.device,
        causal=args.causal,
        threads=args.threads,
        repeats=args.repeats,
    )
    if kind == "vision":
        options["C"] = args.channels
    else:
        options["d"] = args.head_dim
    max_bytes = None if args.max_memory_gib is None else int(args.max_memory_gib * 2**30)
    try:
        rows = run(
            names, sizes, out=args.out, resume=not args.restart, max_bytes=max_bytes, rounds=args.rounds, **options
        )
    except ResultsFileError as error:  # raised before anything is measured
        parser.error(f"--out: {error}")
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the finished rows are in {args.out}; run the same command again to resume", file=sys.stderr
        )
        return 130
    if args.plot:
        plot(rows, out=args.plot)
    for row in rows:
        status = row["error"] or f"{row['median_s'] * 1e3:9.2f} ms  {row['peak_mib']:9.2f} MiB"
        print(f"{row['method']:>12}  N={row['N']:>6}  {row['status']:>7}  {status}")
    failed = [row for row in rows if row["status"] == "error"]
    if failed:
        print(f"{len(failed)} of {len(rows)} configurations failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
