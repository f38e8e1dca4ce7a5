"""The demo's own error (a failed job process raises `infra.processes.ProcessError` instead)."""

from __future__ import annotations

from infra.errors import InfraError


class DemoError(InfraError):
    """A demo step did not complete; the message names the step."""
