"""The one process launcher: the stack's services, a job's cluster processes and the demo's jobs.

Every child is started in its own session (process group), so stopping it stops what it started
too; its output goes to a log file (or is inherited when none is given). `ProcessGroup` keeps
named children, waits for them, and stops them: SIGINT (or SIGTERM) first, SIGKILL after a grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from infra.errors import InfraError


class ProcessError(InfraError):
    """A child process failed, died or did not finish in time; the message names its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(
    argv: Sequence[str],
    log: Path | None = None,
    env: dict[str, str] | None = None,
    append: bool = False,
    new_session: bool = True,
) -> subprocess.Popen:
    """Start `argv`; stdout and stderr to `log` (inherited when None).

    Args:
        new_session: start it in a session (and process group) of its own, so that stopping it
            stops what it started; False keeps it in ours (a signal to our group reaches it).
    """
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab" if append else "wb")  # noqa: SIM115 - the child keeps it open
    try:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
    finally:
        if out is not None:
            out.close()


def pid_runs(pid: int | None, name: str) -> bool:
    """True if process `pid` runs and its command line contains `name` (guards pid reuse)."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return name.encode() in cmdline


def stop_pid(pid: int | None, name: str, grace_s: float = 5.0) -> bool:
    """SIGTERM a process recorded by pid (if it still is `name`), SIGKILL after `grace_s`.

    Returns:
        True if such a process ran and was stopped.
    """
    if not pid_runs(pid, name):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pid_runs(pid, name):
        time.sleep(0.05)
    if pid_runs(pid, name):
        os.kill(pid, signal.SIGKILL)
    return True


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child (its whole process group, if it leads one) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait()


def stop(
    procs: Sequence[subprocess.Popen], sig: int = signal.SIGINT, grace_s: float = 10.0
) -> None:
    """Send `sig` to each running child (its group, if it leads one); SIGKILL what is left after
    `grace_s`."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(proc)


class ProcessGroup:
    """Named children, each logging to `<log_dir>/<name>.log` (inherited output without one)."""

    def __init__(
        self,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        new_session: bool = True,
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.new_session = new_session
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path | None:
        """Log file of a child (None when output is inherited)."""
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        """Start a child under `name`."""
        proc = spawn(argv, self.log(name), self.env, new_session=self.new_session)
        self.procs[name] = proc
        return proc

    def _tail(self, name: str) -> str:
        log = self.log(name)
        if log is None or not log.exists():
            return ""
        return f"; see {log}:\n{log.read_text(errors='replace')[-2000:]}"

    def run(self, name: str, argv: Sequence[str], timeout: float) -> str:
        """Run a child to completion; return its log text.

        Raises:
            ProcessError: it failed or did not finish within `timeout` seconds.
        """
        proc = self.start(name, argv)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            raise ProcessError(
                f"{name} did not finish in {timeout:.0f} s{self._tail(name)}"
            ) from None
        if code != 0:
            raise ProcessError(f"{name} failed (exit {code}){self._tail(name)}")
        log = self.log(name)
        return log.read_text(errors="replace") if log is not None else ""

    def check(self) -> None:
        """Raise `ProcessError` if a child has exited with a non-zero code."""
        for name, proc in self.procs.items():
            if proc.poll() not in (None, 0):
                raise ProcessError(f"{name} exited with {proc.returncode}{self._tail(name)}")

    def wait(self) -> int:
        """Wait for every child; 0 if all exited 0, else the first non-zero exit code.

        Interrupted (Ctrl-C), it stops the children before re-raising.
        """
        try:
            codes = [p.wait() for p in self.procs.values()]
        except BaseException:
            self.stop()
            raise
        return next((c for c in codes if c != 0), 0)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT every running child, SIGKILL what is left after `grace_s`."""
        stop(list(self.procs.values()), signal.SIGINT, grace_s)
