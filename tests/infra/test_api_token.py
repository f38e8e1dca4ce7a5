"""`streamrec serve`'s token: read at the entry point from `serving.api_token_file` (or
STREAMREC_API_TOKEN_FILE), optional on loopback, required elsewhere - as the deployed unit,
which binds 0.0.0.0, is set up to provide."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from infra.cli_serve import api_token
from infra.config import load_settings
from infra.errors import ConfigError
from serving.errors import ServingError

UNIT = Path(__file__).resolve().parents[2] / "infra/deploy/systemd/streamrec-serve.service"


def test_no_token_is_allowed_on_loopback_only(tmp_path: Path) -> None:
    settings = load_settings(env={"STREAMREC_DATA_DIR": str(tmp_path)})
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert api_token(settings, host) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "api.internal"):
        with pytest.raises(ConfigError, match="needs an API token"):
            api_token(settings, host)


def test_the_token_is_read_from_the_file_the_environment_names(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    (tmp_path / "api-token").write_text(token + "\n")
    env = {"STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_API_TOKEN_FILE": str(tmp_path / "t")}
    with pytest.raises(ConfigError, match="cannot read the API token file"):
        api_token(load_settings(env=env), "0.0.0.0")
    env["STREAMREC_API_TOKEN_FILE"] = str(tmp_path / "api-token")
    assert api_token(load_settings(env=env), "0.0.0.0") == token
    (tmp_path / "api-token").write_text("guessable")
    with pytest.raises(ServingError, match="at least 16"):
        api_token(load_settings(env=env), "0.0.0.0")


def test_the_deployed_unit_binds_every_interface_and_provides_the_token(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert re.search(r"ExecStart=.*streamrec serve --host 0\.0\.0\.0", text)
    assert "LoadCredential=api-token:/etc/streamrec/api-token" in text
    (line,) = re.findall(r"^Environment=STREAMREC_API_TOKEN_FILE=(.*)$", text, re.M)
    # %d is the unit's credentials directory, where systemd puts the loaded credential.
    (tmp_path / "api-token").write_text("0123456789abcdef0123")
    path = line.replace("%d", str(tmp_path))
    env = {"STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_API_TOKEN_FILE": path}
    assert api_token(load_settings(env=env), "0.0.0.0") == "0123456789abcdef0123"
