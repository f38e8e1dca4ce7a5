"""`python -m infra.kafka_properties`: the settings' Kafka security as librdkafka properties.

`infra/deploy/kcat` writes them to a private file for `kcat -F`, so kcat talks to a secured
broker as the jobs do (a password never appears on a command line). Settings as every entry
point reads them: `$STREAMREC_CONFIG` and the environment (`KAFKA_SASL_PASSWORD`, ...).
"""

from __future__ import annotations

import sys

from infra.config import load_settings
from infra.errors import ConfigError


def main() -> int:
    """Print one `key=value` line per property (none for PLAINTEXT); 2 on bad settings."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in settings.kafka.security.librdkafka().items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
