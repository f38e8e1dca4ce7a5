"""`promtool` (Debian's `prometheus` package) for the monitoring tests: `make test` and .ci/run
install it; a test that needs it fails, never skips, when it is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
"""The rules, their unit tests and the Grafana dashboard."""


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run `promtool <args>` (fails the test if promtool is not installed)."""
    exe = shutil.which("promtool")
    assert exe, (
        "promtool is missing: `make test` installs it (Debian package `prometheus`), or run "
        "`apt-get install prometheus`"
    )
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, timeout=120, cwd=MONITORING, check=False
    )


def check_metrics(text: bytes) -> None:
    """`promtool check metrics` on an exposition; fail with what it says unless it is clean."""
    done = promtool("check", "metrics", stdin=text)
    said = (done.stdout + done.stderr).decode()
    assert done.returncode == 0 and not said.strip(), said
