"""The suite runs against a real Redis: REDIS_URL (make test-python starts
one with internal/redistest/withredis)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T = TypeVar("T")


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise RuntimeError("REDIS_URL is not set: these tests need a real Redis. Run `make test-python`, or set REDIS_URL=redis://host:port")
    return url


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def raw() -> Any:
    r = redis.Redis.from_url(redis_url(), decode_responses=True)
    yield r
    r.close()


def unique(prefix: str) -> str:
    return prefix + secrets.token_hex(4)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def eventually(what: str, cond: Callable[[], Any], seconds: float = 10.0) -> None:
    """Polls cond until it holds: for outcomes with no signal of their own (a record appearing in Redis)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return
        if loop.time() > end:
            raise AssertionError(f"after {seconds} s: {what}")
        await asyncio.sleep(0.01)
