"""Redis for the tests: a real server, named by ``GOUACHE_TEST_REDIS_URL``
(e.g. ``redis://127.0.0.1:6390/0``; ``.ci/run`` starts Debian's redis-server and sets it).
Without it the Redis tests are skipped, except under CI (``CI`` set), where they fail:
CI must never pass by not testing the scale-out broker."""

from __future__ import annotations

import os

import pytest

REDIS_URL_ENV = "GOUACHE_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if not url:
        reason = (
            f"Redis tests need {REDIS_URL_ENV}=redis://HOST:PORT/DB (a server the tests may write to); "
            ".ci/run starts Debian's redis-server and sets it"
        )
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {REDIS_URL_ENV} is not: {reason}", pytrace=False)
        pytest.skip(reason)
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as e:
        pytest.fail(f"{REDIS_URL_ENV} is set, but Redis at {url} cannot be reached: {e}", pytrace=False)
    return url
