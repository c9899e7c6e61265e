"""The little REST the connectors need (instrument listings, book snapshots), on aiohttp."""

from __future__ import annotations

import time

import aiohttp

from market_ingestor.errors import ExchangeError


class RestClient:
    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str) -> tuple[bytes, int]:
        """The body and its receipt time (ns); ExchangeError naming the URL on any failure."""
        if self._session is None:
            raise ExchangeError("REST client used outside 'async with'")
        try:
            async with self._session.get(url) as response:
                body = await response.read()
                if response.status != 200:
                    raise ExchangeError(f"GET {url} answered {response.status}: {body[:200]!r}")
                return body, time.time_ns()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ExchangeError(f"GET {url} failed: {exc!r}") from exc
