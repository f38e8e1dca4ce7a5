"""Settings of a multi-host deployment: the cluster's hosts and process id, Kafka secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from infra.config import load_settings
from infra.errors import ConfigError


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cluster_addresses_from_the_hosts_and_the_job_port(tmp_path: Path) -> None:
    path = _write(tmp_path, {"cluster": {"hosts": ["a", "b", "a"], "ports": {"stats": 7000}}})
    settings = load_settings(
        path, {"STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_PROCESS_ID": "2"}
    )
    assert settings.cluster.process_id == 2
    assert settings.cluster.addresses("stats") == ("a:7000", "b:7001", "a:7002")
    assert settings.cluster.addresses("exposure") == ("a:2103", "b:2104", "a:2105")


def test_hosts_from_the_environment_and_a_process_id_outside_them(tmp_path: Path) -> None:
    env = {"STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_CLUSTER_HOSTS": "h1, h2"}
    assert load_settings(None, env).cluster.hosts == ("h1", "h2")
    with pytest.raises(ConfigError, match="process_id 2 is not an index of the 2 hosts"):
        load_settings(None, {**env, "STREAMREC_PROCESS_ID": "2"})


def test_a_host_process_without_its_id_is_told_how_to_set_it(tmp_path: Path) -> None:
    path = _write(tmp_path, {"cluster": {"hosts": ["127.0.0.2", "127.0.0.3"]}})
    env = {"STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    result = CliRunner().invoke(app, ["run", "validate", "--config", str(path)], env=env)
    assert result.exit_code != 0
    assert "STREAMREC_PROCESS_ID" in result.output


def test_sasl_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-file\n")
    security = {"protocol": "SASL_SSL", "username": "svc", "password_file": str(secret)}
    path = _write(tmp_path, {"kafka": {"security": security}})
    env = {"STREAMREC_DATA_DIR": str(tmp_path)}
    props = load_settings(path, env).kafka.security.librdkafka()
    assert props["sasl.password"] == "from-file"
    props = load_settings(path, {**env, "KAFKA_SASL_PASSWORD": "from-env"}).kafka.security
    assert props.librdkafka()["sasl.password"] == "from-env"
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read the Kafka SASL password file"):
        load_settings(path, env)


@pytest.mark.parametrize(
    ("security", "error"),
    [
        ({"protocol": "SASL_PLAINTEXT"}, "needs a username"),
        ({"protocol": "SSL", "cert_file": "/c.pem"}, "cert_file and key_file go together"),
        ({"protocol": "SASL_PLAINTEXT", "username": "u", "ca_file": "/ca"}, "has no TLS"),
        ({"protocol": "SASL_SSL", "username": "u", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ],
)
def test_inconsistent_security_is_refused(tmp_path: Path, security: dict, error: str) -> None:
    path = _write(tmp_path, {"kafka": {"security": security}})
    with pytest.raises(ConfigError, match=error):
        load_settings(path, {"STREAMREC_DATA_DIR": str(tmp_path)})
