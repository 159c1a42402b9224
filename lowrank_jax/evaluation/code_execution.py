"""Runs untrusted generated Python in a child process: a time limit, a memory limit, no network, a scratch directory.

The child is a fresh interpreter (`python -I`, so no user site or PYTHONPATH) in an empty temporary directory with
stdin closed and a minimal environment. Where the kernel allows unprivileged namespaces (`unshare -rn`), it runs
in a new network namespace that has no interfaces; always, a prelude replaces socket creation with an error. This
stops accidents (a completion that downloads or writes around), not a determined attacker: run untrusted models'
code on a machine you can throw away.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import NamedTuple

MEMORY_LIMIT_BYTES = 4 << 30

_PRELUDE = f"""\
import resource as _resource, socket as _socket
_resource.setrlimit(_resource.RLIMIT_AS, ({MEMORY_LIMIT_BYTES}, {MEMORY_LIMIT_BYTES}))
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while evaluating generated code")
_socket.socket = _socket.create_connection = _socket.socketpair = _socket.getaddrinfo = _no_network
del _resource, _socket, _no_network
"""


class ExecutionResult(NamedTuple):
    """How a program ended: `passed` (exit status 0), and 'passed', 'timed out' or 'failed: <last error line>'."""

    passed: bool
    result: str


@functools.cache
def network_namespace_prefix() -> tuple[str, ...]:
    """('unshare', '-rn') when this machine can start a process without network access that way, else ()."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        works = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return (unshare, "-rn") if works else ()


def run_python(program: str, timeout: float) -> ExecutionResult:
    """Runs `program` (Python source) in a sandboxed child interpreter; it passes when it exits with status 0.

    Args:
      program: the source to run, e.g. a completed function followed by its tests.
      timeout: seconds of wall time (interpreter start-up included) before the child is killed.

    >>> run_python("assert sum([1, 2]) == 3", timeout=10)
    ExecutionResult(passed=True, result='passed')
    >>> run_python("assert 1 == 2, 'one is not two'", timeout=10).result
    'failed: AssertionError: one is not two'
    """
    with tempfile.TemporaryDirectory(prefix="generated_code_") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(_PRELUDE + program)
        command = [*network_namespace_prefix(), sys.executable, "-I", path]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the whole session: whatever the program started goes too
            child.communicate()
            return ExecutionResult(False, "timed out")
    if child.returncode == 0:
        return ExecutionResult(True, "passed")
    lines = stderr.decode(errors="replace").strip().splitlines()
    return ExecutionResult(False, f"failed: {lines[-1] if lines else f'exit status {child.returncode}'}")
