"""The Rasa client: asks the Rasa server what a citizen's free text is about.

Rasa answers `POST /model/parse` on loopback (DESIGN.md, step 5). Nothing waits on it
for long and nothing depends on it being there:

- text is NFC-normalised, and text starting with "/" is never sent (Rasa would read it as
  an intent given by hand, e.g. "/greet");
- at most `max_concurrency` requests are in flight; waiting for a slot counts toward the
  short `timeout_seconds`;
- after `breaker_failures` failures in a row the circuit opens: Rasa is not asked for
  `breaker_reset_seconds`, then one request tries it again.

`read()` returns None whenever Rasa cannot answer; the flow then asks the citizen to pick
the field with buttons, and the report is classified later (see `backfill`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from bot.config import NluSettings
from bot.metrics import Metrics
from nlu.reading import Reading, read_ranking
from nlu.text import nfc

log = logging.getLogger(__name__)

# A request that had to queue for more than this share of the timeout and then ran out of
# time is counted as Rasa being busy, not as a failure (the breaker is for a failing Rasa).
BUSY_SHARE = 0.1


class NluClient:
    def __init__(
        self,
        settings: NluSettings,
        metrics: Metrics | None = None,
        token: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.token = settings.token if token is None else token
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0
        self._open_until = 0.0
        self._trial = False
        self._monotonic = monotonic

    # ---- circuit breaker

    @property
    def circuit_open(self) -> bool:
        return self._failures >= self.settings.breaker_failures and (
            self._monotonic() < self._open_until or self._trial
        )

    def _succeeded(self) -> None:
        if self._failures >= self.settings.breaker_failures:
            log.info("Rasa answers again: classifying free text")
        self._failures = 0
        self._trial = False

    def _failed(self, why: str, trial: bool) -> None:
        self._failures += 1
        self._trial = False
        # Opens when the failures reach the limit, or again when its trial request fails;
        # requests that were in flight when it opened do not keep pushing it further.
        if self._failures == self.settings.breaker_failures or (
            trial and self._failures > self.settings.breaker_failures
        ):
            self._open_until = self._monotonic() + self.settings.breaker_reset_seconds
            log.warning(
                "Rasa failed %s times in a row (%s): not asking it for %.0f s; citizens pick "
                "the field with buttons meanwhile",
                self._failures,
                why,
                self.settings.breaker_reset_seconds,
            )

    # ---- requests

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(self, text: str) -> Reading | None:
        """Rasa's reading of `text`, or None when it cannot be asked or does not answer."""
        text = nfc(text).strip()
        if not text or text.startswith("/"):
            self.metrics.nlu.labels("refused").inc()
            return None
        if self.circuit_open:
            self.metrics.nlu.labels("open").inc()
            return None
        trial = self._failures >= self.settings.breaker_failures
        if trial:
            self._trial = True  # half-open: this request decides
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        timeout = self.settings.timeout_seconds
        deadline = loop.time() + timeout
        try:
            # The citizen waits at most timeout_seconds, a free slot included; a wait
            # that runs out before Rasa was asked says Rasa is busy, not that it failed.
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            self.metrics.nlu.labels("busy").inc()
            self._trial = False
            return None
        waited = loop.time() - (deadline - timeout)
        try:
            async with asyncio.timeout_at(deadline):
                reading = await self._parse(text)
        except TimeoutError:
            if waited > BUSY_SHARE * timeout:
                # Cut short by the time it queued: Rasa was busy, not failing.
                self.metrics.nlu.labels("busy").inc()
                self._trial = False
                return None
            self.metrics.nlu.labels("timeout").inc()
            self._failed(f"no answer within {timeout} s", trial)
            return None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.metrics.nlu.labels("error").inc()
            self._failed(f"{type(exc).__name__}: {exc}", trial)
            return None
        finally:
            self._slots.release()
        self.metrics.nlu.labels("ok").inc()
        self.metrics.nlu_seconds.observe(time.perf_counter() - started)
        self._succeeded()
        return reading

    async def _parse(self, text: str) -> Reading:
        params = {"token": self.token} if self.token else None
        async with self._http().post(
            f"{self.settings.url}/model/parse", json={"text": text}, params=params
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status} from /model/parse")
            data = await resp.json(content_type=None)
        ranking = data.get("intent_ranking") if isinstance(data, dict) else None
        if not ranking and isinstance(data, dict) and isinstance(data.get("intent"), dict):
            ranking = [data["intent"]]
        if not isinstance(ranking, list) or not ranking:
            raise ValueError("answer without intent_ranking (is a model loaded?)")
        return read_ranking(ranking)
