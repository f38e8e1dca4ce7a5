"""The systemd units of infra/deploy/systemd: sandboxed (`systemd-analyze security` <= 4.0 each,
analysed offline from the unit files) and valid (`systemd-analyze verify`, with no warning).

`systemd-analyze` comes with Debian's `systemd` package; `make test` installs it when missing.
Without it these tests fail: they never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "systemd"
SERVICES = sorted(UNIT_DIR.glob("*.service"))
UNITS = sorted([*SERVICES, *UNIT_DIR.glob("*.timer")])
MAX_EXPOSURE = 4.0
EXEC = "/opt/streamrec/.venv/bin/streamrec"
SANDBOX_START = "# Sandbox, the same in every streamrec unit"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: `apt-get install systemd` (make test does)")
    return tool


def test_every_unit_is_found() -> None:
    names = {p.name for p in UNITS}
    assert {
        "streamrec-job@.service",
        "streamrec-learn-full.service",
        "streamrec-learn-full.timer",
        "streamrec-learn-online.service",
        "streamrec-serve.service",
    } <= names


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_security_exposure_at_most_4(unit: Path) -> None:
    """`--threshold=40` makes the tool itself fail above 4.0; the score is also parsed."""
    proc = subprocess.run(
        [
            _analyze(),
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sandbox_is_the_same_in_every_service() -> None:
    blocks = {}
    for unit in SERVICES:
        text = unit.read_text()
        assert SANDBOX_START in text, unit.name
        block = text[text.index(SANDBOX_START) :].split("\n[", 1)[0]
        blocks[unit.name] = block.strip()
    assert len(set(blocks.values())) == 1, blocks.keys()


def test_units_verify_without_warnings(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks that ExecStart exists: the units are copied with the
    venv's entry point replaced by a stub; verify exits 0 on unknown keys or bad values, so any
    output fails too."""
    stub = tmp_path / "streamrec"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        if unit.suffix == ".service":
            assert EXEC in text, unit.name
        copy = tmp_path / unit.name
        copy.write_text(text.replace(EXEC, str(stub)))
        copies.append(copy)
    instance = tmp_path / "streamrec-job@stats.service"
    instance.write_text((tmp_path / "streamrec-job@.service").read_text())
    proc = subprocess.run(
        [_analyze(), "verify", "--man=no", "--generators=no", *map(str, [*copies, instance])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


SANDBOX_RUN = UNIT_DIR.parent / "sandbox_run.py"
WORKLOAD = """
import mmap, socket, sys
import torch
from confluent_kafka.admin import AdminClient
from features.redis_conn import connect

try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable and executable memory was allowed: no filter")
except OSError:
    pass
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    sys.exit("AF_NETLINK was allowed: no filter")
except OSError:
    pass
model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
bag = torch.nn.EmbeddingBag(100, 16, mode="sum")
optimizer = torch.optim.Adagrad([*model.parameters(), *bag.parameters()])
x = bag(torch.randint(0, 100, (40,)), torch.arange(0, 40, 4))
model(x).sum().backward()
optimizer.step()
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
assert admin.list_topics(timeout=10).brokers
assert connect(sys.argv[2]).ping()  # a single Redis or a cluster
print("ok")
"""


def test_the_stack_runs_under_the_units_seccomp_filters(bootstrap: str, redis_url: str) -> None:
    """`MemoryDenyWriteExecute`, `SystemCallFilter` and `RestrictAddressFamilies` as systemd
    builds them (infra/deploy/sandbox_run.py, system Python with python3-seccomp, which
    `make test` installs): torch training, the Kafka and Redis clients still work. The whole
    stream jobs, learners and serving were run under it too (docs/operations.md, "systemd")."""
    python3 = shutil.which("python3")
    assert python3, "no system python3"
    proc = subprocess.run(
        [python3, str(SANDBOX_RUN), sys.executable, "-c", WORKLOAD, bootstrap, redis_url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
