"""What measuring memory needs from the operating system and the C library (Linux and glibc).

:mod:`attnlib.bench` says *what* is measured and how it is reported; this module holds the
platform-specific pieces it (and ``attnlib.optim.ring_launcher``, ``benchmarks/``) stands on:

1. the resident set: :func:`status_bytes` reads ``VmRSS``/``VmHWM`` of ``/proc/self/status``,
   :func:`reset_peak_rss` resets the kernel's high-water mark, :func:`available_bytes` reads
   ``MemAvailable``;
2. glibc's allocator: :func:`release_free_memory` (``malloc_trim``), :func:`set_malloc_option`
   (``mallopt``) and :func:`steady_allocator`, which fixes the mmap and trim thresholds so that
   repeated calls reuse their pages (why: :mod:`attnlib.bench`, "a steady C allocator");
3. the fork server (:func:`ask_fork_server`, :func:`serve_forks`): each job in a freshly forked
   process of a server that imported torch once.

Where a piece is missing (no glibc, no ``/proc``) the functions say so (False, or a large number)
instead of failing, except :func:`status_bytes`, which needs ``/proc``.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable

__all__ = [
    "status_bytes",
    "reset_peak_rss",
    "available_bytes",
    "release_free_memory",
    "M_TRIM_THRESHOLD",
    "M_MMAP_THRESHOLD",
    "set_malloc_option",
    "steady_allocator",
    "ask_fork_server",
    "serve_forks",
    "stop_fork_server",
]


# --------------------------------------------------------------------------
# 1. The resident set (Linux /proc)
# --------------------------------------------------------------------------


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def available_bytes() -> int:
    """Memory the system can still give (``MemAvailable`` of /proc/meminfo), or a large number elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


# --------------------------------------------------------------------------
# 2. glibc's allocator
# --------------------------------------------------------------------------


def _libc_function(name: str):
    """The C library's function ``name`` (glibc's ``malloc_trim``, ``mallopt``), or None where there is none."""
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name), name, None) if libc_name else None


def release_free_memory() -> None:
    """Hand the memory that the C allocator holds free back to the system (glibc's ``malloc_trim``).

    So that the measured call pays for every page it touches instead of reusing pages an
    earlier call left behind. A no-op where the C library has no ``malloc_trim``.
    """
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
STEADY_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit machines
STEADY_TRIM_THRESHOLD = 1 * 2**30  # keep up to 1 GiB of freed heap for the next call


def set_malloc_option(parameter: int, value: int) -> bool:
    """glibc's ``mallopt(parameter, value)``; False where it failed or there is no ``mallopt``.

    Setting a threshold turns off glibc's dynamic adjustment of it, whose state depends on the
    history of the process (see :mod:`attnlib.bench`).
    """
    mallopt = _libc_function("mallopt")
    return mallopt is not None and bool(mallopt(parameter, value))


def steady_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds so that repeated calls reuse their pages; False if no glibc.

    Called after the memory measurement, before the timing (and by the benchmark scripts that time
    in their own workers).
    """
    return set_malloc_option(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) and set_malloc_option(
        M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD
    )


# --------------------------------------------------------------------------
# 3. The fork server: a fresh process per measurement, without importing torch each time
# --------------------------------------------------------------------------
# A new interpreter per configuration spent ~3 s of each measurement importing torch. Instead
# one server process imports torch once and never runs an operation (so it has no thread pools
# and no CUDA context to pass on); for each job it forks a child, and the child, a new process
# with its own heap, resident set, thread pools and allocator settings, does the job and exits.
# The server runs in its own session, so that Ctrl-C reaches only the caller, which then stops
# the server and the child with it. POSIX only (fork, process groups, select on a pipe).
_FORK_SERVER: subprocess.Popen | None = None


def _start_fork_server(command: list[str]) -> subprocess.Popen:
    global _FORK_SERVER
    if _FORK_SERVER is None or _FORK_SERVER.poll() is not None:
        _FORK_SERVER = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
    return _FORK_SERVER


def stop_fork_server() -> None:
    """Stop the fork server and any job running in it (also done at exit)."""
    global _FORK_SERVER
    if _FORK_SERVER is not None:
        try:
            os.killpg(_FORK_SERVER.pid, signal.SIGKILL)  # the server and its child share a process group
        except ProcessLookupError:
            pass
        _FORK_SERVER.wait()
        _FORK_SERVER.stdin.close()
        _FORK_SERVER.stdout.close()
        _FORK_SERVER = None


atexit.register(stop_fork_server)


def ask_fork_server(command: list[str], job: dict, timeout: float) -> dict | str:
    """Send ``job`` to the fork server (started with ``command`` if none runs), wait up to ``timeout`` seconds.

    Returns the child's answer (a dict), or a message saying why there is none (the server is
    then stopped, and the next call starts a new one). ``command`` must run :func:`serve_forks`.
    """
    server = _start_fork_server(command)
    try:
        server.stdin.write(json.dumps(job).encode() + b"\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        line = server.stdout.readline() if ready else b""
    except BaseException:  # Ctrl-C: the child would go on working and leave its answer in the pipe
        stop_fork_server()
        raise
    if not ready:
        stop_fork_server()
        return f"timeout after {timeout} s"
    if not line:
        stop_fork_server()
        return "the fork server stopped"
    return json.loads(line)


def serve_forks(work: Callable[[dict], dict], error: Callable[[str], dict]) -> None:
    """The fork server's loop: a JSON job per line in, ``work(job)`` in a forked child, a JSON answer per line out.

    ``error(message)`` is the answer when ``work`` raises or the child dies before answering.
    """
    for line in sys.stdin.buffer:
        job = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one job in a process of its own
            os.close(read_end)
            os.dup2(2, 1)  # whatever the job prints must not reach the server's answers
            try:
                result = work(job)
            except Exception as exception:
                result = error(f"{type(exception).__name__}: {exception}")
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(result))
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not answer:  # killed (out of memory) or crashed before it could answer
            if os.WIFSIGNALED(status):
                how = f"killed by signal {os.WTERMSIG(status)}"
            else:
                how = f"exit code {os.waitstatus_to_exitcode(status)}"
            answer = json.dumps(error(f"the measuring process died ({how})"))
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
