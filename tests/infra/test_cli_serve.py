"""`streamrec serve --workers 2`: two worker processes on one port, each answering /recommend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.processes import free_port, stop
from tests.learners.helpers import publish_trained


def _children(pid: int) -> list[str]:
    """Command lines of the processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(cmdline)
    return out


def test_serve_with_two_workers(tmp_path: Path, bootstrap: str, redis_url: str) -> None:
    publish_trained(tmp_path / "snapshots")
    env = {
        **os.environ,
        "STREAMREC_DATA_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP": bootstrap,
        "REDIS_URL": redis_url,
    }
    env.pop("STREAMREC_CONFIG", None)
    port = free_port()
    cli = Path(sys.executable).with_name("streamrec")
    proc = subprocess.Popen(
        [cli, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        answered = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while answered < 10:  # consecutive answers: the workers are up
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "serve --workers 2 did not answer in 240 s"
                try:
                    answered = answered + 1 if http.get("/healthz").status_code == 200 else 0
                except httpx.HTTPError:
                    answered = 0
                    time.sleep(0.5)
            workers = [c for c in _children(proc.pid) if "spawn_main" in c]
            assert len(workers) == 2, _children(proc.pid)
            for user in ("u1", "u2", "nobody"):
                r = http.get("/recommend", params={"user_id": user, "n": 5})
                assert r.status_code == 200, r.text
                assert len(r.json()["items"]) == 5
    finally:
        stop([proc], signal.SIGTERM, grace_s=30)
    assert proc.returncode is not None
