"""kcat against the bundled broker (Tansu), as docs/operations.md ("Tansu quirks") says:

- Debian 12's kcat (librdkafka 2.0.2) fails its first request: librdkafka < 2.2.0 misreads the
  tagged fields Tansu puts in its ApiVersions answer (`Local: Read underflow`);
- with `-X api.version.request=false -X broker.version.fallback=0.9.0` it skips that request and
  speaks the protocol of Kafka 0.9: it lists topics and consumes from an absolute offset (`-o 0`),
  but cannot produce (Tansu takes only v2 record batches) nor ask for `-o beginning/end`;
- `infra/deploy/kcat` runs the same kcat with the venv's librdkafka (the confluent-kafka wheel's):
  everything works.

kcat comes with Debian's `kcat` package; `make test` installs it when missing. Without it these
tests fail: they never skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from infra import stack

WRAPPER = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "kcat"
OLD_PROTOCOL = ["-X", "api.version.request=false", "-X", "broker.version.fallback=0.9.0"]
FIXED_IN = (2, 2, 0)


def _kcat() -> str:
    tool = shutil.which("kcat")
    if tool is None:
        pytest.fail("kcat is missing: `apt-get install kcat` (make test does)")
    return tool


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMREC_VENV": sys.prefix}  # the wrapper's venv: the suite's
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60, env=env)


def _librdkafka(kcat: list[str]) -> tuple[int, ...]:
    out = _run([*kcat, "-V"]).stdout
    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(x) for x in found.groups())


@pytest.fixture
def topic(bootstrap: str, topic_name: str) -> str:
    """A one-partition topic holding one message, produced by the project's client."""
    name = f"{topic_name}-kcat"
    stack.ensure_topics(bootstrap, [name], 1)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(name, key=b"u1", value=b'{"event": "click"}')
    assert producer.flush(10) == 0
    return name


def _consume(kcat: list[str], bootstrap: str, topic: str, offset: str) -> list[str]:
    proc = _run([*kcat, "-b", bootstrap, "-C", "-t", topic, "-o", offset, "-e", "-q",
                 "-f", "%p %o %k %s\\n"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_debian_kcat_needs_librdkafka_2_2(bootstrap: str) -> None:
    kcat = [_kcat()]
    proc = _run([*kcat, "-b", bootstrap, "-L", "-m", "5"])
    if _librdkafka(kcat) >= FIXED_IN:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, proc.stdout
        assert "ApiVersionRequest failed: Local: Read underflow" in proc.stderr, proc.stderr


def test_debian_kcat_reads_with_the_old_protocol(bootstrap: str, topic: str) -> None:
    kcat = [_kcat(), *OLD_PROTOCOL]
    listed = _run([*kcat, "-b", bootstrap, "-L", "-t", topic, "-m", "10"])
    assert listed.returncode == 0, listed.stderr
    assert f'topic "{topic}" with 1 partitions' in listed.stdout, listed.stdout
    assert _consume(kcat, bootstrap, topic, "0") == ['0 0 u1 {"event": "click"}']


def test_kcat_with_the_venv_librdkafka_lists_produces_and_consumes(
    bootstrap: str, topic: str
) -> None:
    kcat = [str(WRAPPER)]
    assert _librdkafka(kcat) >= FIXED_IN
    listed = _run([*kcat, "-b", bootstrap, "-L", "-t", topic, "-m", "10"])
    assert listed.returncode == 0, listed.stderr
    assert f'topic "{topic}" with 1 partitions' in listed.stdout, listed.stdout
    produced = _run([*kcat, "-b", bootstrap, "-P", "-t", topic, "-k", "u2"], stdin="from kcat\n")
    assert produced.returncode == 0, produced.stderr
    assert _consume(kcat, bootstrap, topic, "beginning") == [
        '0 0 u1 {"event": "click"}',
        "0 1 u2 from kcat",
    ]


def test_wrapper_passes_the_settings_kafka_security(tmp_path: Path) -> None:
    """The wrapper hands kcat the settings' `kafka.security` as a properties file: a TLS CA file
    that does not exist stops kcat's client at creation, naming the property (a kcat without
    the settings would only fail to connect); the password is not on its command line."""
    _kcat()
    config = tmp_path / "settings.yaml"
    security = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "username": "svc",
        "ca_file": "/nonexistent/streamrec-test-ca.pem",
    }
    config.write_text(yaml.safe_dump({"kafka": {"security": security}}))
    env = {
        **os.environ,
        "STREAMREC_VENV": sys.prefix,
        "STREAMREC_CONFIG": str(config),
        "STREAMREC_DATA_DIR": str(tmp_path),
        "KAFKA_SASL_PASSWORD": "pw-secret",
    }
    done = subprocess.run(
        [str(WRAPPER), "-b", "127.0.0.1:1", "-L", "-m", "2"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ssl.ca.location" in done.stderr, done.stderr
    assert "pw-secret" not in done.stdout + done.stderr
