import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest

from aloekit.agents.backends import BackendPool, from_dicts
from aloekit.agents.backends.managed import backoff_delay, is_retryable, retry_after_seconds
from aloekit.config import AloeConfig, BackendSettings
from aloekit.errors import BackendError
from aloekit.testing import Reply, StubOpenAIServer

HI = from_dicts([{"role": "user", "content": "hi"}])


def _pool(**backend):
    return BackendPool(AloeConfig.model_validate({"backend": {"backoff_base_s": 0.05, **backend}}))


async def test_retries_429_500_timeout_then_succeeds():
    script = [
        Reply("status", status=429, headers={"Retry-After": "1"}),
        Reply("status", status=500),
        Reply("hang", delay_s=3),
        Reply(text="finally"),
    ]
    with StubOpenAIServer(script) as server:
        pool = _pool(timeout_s=0.5, max_retries=3)
        client = pool.client(server.spec(), role="judge")
        started = time.monotonic()
        result = await client.create(HI, extra_create_args={"max_tokens": 5})
        elapsed = time.monotonic() - started
    assert result.content == "finally"
    assert len(server.requests) == 4
    assert elapsed >= 1.0 + 0.5  # waited the Retry-After second and the timeout
    assert server.requests[0]["max_tokens"] == 5
    usage = pool.ledger.as_dict()["judge"]
    assert (usage["calls"], usage["retries"], usage["failures"]) == (1, 3, 0)


async def test_malformed_json_is_retried():
    with StubOpenAIServer([Reply("malformed"), Reply(text="ok")]) as server:
        result = await _pool().client(server.spec()).create(HI)
    assert result.content == "ok"


async def test_gives_up_after_max_retries_with_one_line_reason():
    with StubOpenAIServer([Reply("status", status=503)] * 5) as server:
        pool = _pool(max_retries=2)
        with pytest.raises(BackendError, match=r"HTTP 503.*\(after 3 attempts\)"):
            await pool.client(server.spec(), role="user").create(HI)
        assert len(server.requests) == 3
    assert pool.ledger.as_dict()["user"]["failures"] == 1


async def test_client_errors_are_not_retried():
    with StubOpenAIServer([Reply("status", status=400)]) as server:
        with pytest.raises(BackendError, match=r"HTTP 400.*not retried"):
            await _pool().client(server.spec()).create(HI)
        assert len(server.requests) == 1


async def test_unreachable_server_is_a_backend_error():
    with pytest.raises(BackendError, match="could not connect to the server"):
        await _pool(max_retries=1).client("openai:http://127.0.0.1:9/v1#m").create(HI)


async def test_concurrency_limit_is_per_endpoint():
    with StubOpenAIServer(latency_s=0.2) as server:
        pool = _pool(max_concurrency=2)
        judge, user = pool.client(server.spec(), role="judge"), pool.client(server.spec(), role="user")
        started = time.monotonic()
        await asyncio.gather(*(c.create(HI) for c in (judge, user, judge, user)))
        # 4 calls, 2 at a time across both roles: two rounds of 0.2 s
        assert time.monotonic() - started >= 0.4


def _error(status=None, headers=None):
    return SimpleNamespace(status_code=status, response=SimpleNamespace(headers=headers or {}))


def test_retry_after_forms():
    assert retry_after_seconds(_error(429, {"retry-after": "2.5"})) == 2.5
    assert retry_after_seconds(_error(429, {"retry-after-ms": "1500"})) == 1.5
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_seconds(_error(429, {"retry-after": date})) <= 30
    assert retry_after_seconds(_error(500)) is None


def test_backoff_is_exponential_with_jitter_and_capped():
    settings = BackendSettings(backoff_base_s=1, backoff_max_s=5)
    rng = random.Random(0)
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (5, 5)]:
        delays = {backoff_delay(attempt, settings, None, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    assert backoff_delay(0, settings, 7.0, rng) == 7.0  # Retry-After wins
    assert backoff_delay(0, BackendSettings(retry_after_max_s=10), 600.0, rng) == 10


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (_error(429), True),
        (_error(502), True),
        (_error(400), False),
        (_error(401), False),
        (ValueError("bad"), False),
    ],
)
def test_retryable_classification(exc, expected):
    assert is_retryable(exc) is expected
