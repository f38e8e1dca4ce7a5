"""Bearer-token authentication of the API (`serving.api_token_file`, docs/operations.md).

Every request must carry `Authorization: Bearer <token>`, except the probes (/healthz, /readyz,
/metrics), which load balancers and Prometheus ask without credentials. A request without the
token, or with another, gets 401 with `WWW-Authenticate: Bearer` before it takes a slot of the
admission limit. Tokens are compared in constant time. The token itself is read at the entry
point (`streamrec serve`), never here.
"""

from __future__ import annotations

import hmac

from serving.errors import ServingError

PUBLIC = ("/healthz", "/readyz", "/metrics")
"""Paths answered without a token (probes; they expose no user data)."""
MIN_TOKEN_CHARS = 16
"""Shortest token accepted (e.g. `openssl rand -hex 32` makes 64)."""


def check_token(token: str) -> str:
    """The token, stripped; raises `ServingError` for one too short to be a secret."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ServingError(
            f"the API token must be at least {MIN_TOKEN_CHARS} characters without spaces "
            "(make one with `openssl rand -hex 32`)"
        )
    return token


class BearerAuth:
    """ASGI middleware: refuse requests without `Authorization: Bearer <token>` (401)."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self._expected = b"bearer " + check_token(token).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, rest = given.partition(b" ")
        if hmac.compare_digest(scheme.lower() + b" " + rest.strip(), self._expected):
            await self.app(scope, receive, send)
            return
        await send_json(
            send,
            401,
            b'{"detail":"missing or wrong API token: send Authorization: Bearer <token>"}',
            (b"www-authenticate", b'Bearer realm="streamrec"'),
        )


async def send_json(send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    """Answer an ASGI request with `status` and the JSON `body` (plus `headers`), from middleware
    that stops it before the app."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                *headers,
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
