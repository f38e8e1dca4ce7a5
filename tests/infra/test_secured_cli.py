"""The commands on a secured Redis: with `requirepass` (the NOAUTH case of issue 17) and with an
ACL user over mutual TLS, `features get` and `infra status` work from
REDIS_URL alone - and print no password."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from features.online_writer import OnlineWriter
from features.redis_conn import connect
from features.schema import feature_types
from tests.secured_redis import SecuredRedis

CLI = Path(sys.executable).with_name("streamrec")


@pytest.mark.parametrize("way", ["password", "tls"])
def test_commands_work_on_a_secured_redis(
    way: str, secured_redis: SecuredRedis, bootstrap: str, tmp_path: Path
) -> None:
    url = secured_redis.all()[way]
    user = f"u-{uuid.uuid4().hex[:8]}"
    client = connect(url)
    cols = {
        n: np.array([7 if k == "int64" else 0.5]) for n, k in feature_types("user_stats").items()
    }
    OnlineWriter(client, "streamrec").write("user_stats", [user], cols, 1_767_225_600_000)
    client.close()
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    env.update(REDIS_URL=url, KAFKA_BOOTSTRAP=bootstrap)
    password = unquote(urlparse(url).password or "")
    commands = [(["features", "get", "user", user], r"│ clicks +│ +7 │")]
    if way == "tls":  # the probe, and a redacted URL in what it prints
        commands.append((["infra", "status"], r"redis .*:\*\*\*@.* up "))
    for args, expected in commands:
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(expected, done.stdout), done.stdout
        assert password not in done.stdout + done.stderr
