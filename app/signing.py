"""Short-lived signed links: an HMAC of what the link opens and when it stops working, with
the server's secret, so a link works without a cookie and cannot be forged or extended.

The secret is ``GOUACHE_SECRET_KEY``; when that is empty, a random one is made on first use
and kept in ``<data_dir>/secret_key`` (readable by its owner only), which every process of
an embedded deployment shares.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path

from app.config import Settings

SECRET_FILE = "secret_key"


@lru_cache
def _secret_from_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of two processes making it at once, one writes and both read its secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48) + "\n")
    return path.read_bytes().strip()


def server_secret(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.encode()
    return _secret_from_file(settings.data_dir / SECRET_FILE)


def _mac(settings: Settings, message: str, expires: int) -> str:
    digest = hmac.new(server_secret(settings), f"{message}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(settings: Settings, message: str, ttl_s: int, *, now: float | None = None) -> tuple[int, str]:
    """``(expires, signature)`` for a link to ``message`` that works for ``ttl_s`` seconds."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return expires, _mac(settings, message, expires)


def verify(settings: Settings, message: str, expires: int, signature: str, *, now: float | None = None) -> bool:
    """Whether ``signature`` was made by :func:`sign` for ``message`` and has not expired."""
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_mac(settings, message, expires), signature)
