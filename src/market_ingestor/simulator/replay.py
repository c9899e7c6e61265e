"""Replay: serve recorded sessions (the format of ``capture.read_session``) instead of the random-walk market.

Every WebSocket client of the replayed exchange gets every received frame of the recordings, in order and
regardless of what it subscribes to, either as fast as it reads or at the recorded pace scaled by ``speed``;
afterwards the connection stays open and quiet. REST requests whose path (and query, where the recording has
one) matches a recorded REST response get that body. A line that is not UTF-8 is skipped with a warning naming it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from market_ingestor.errors import ConfigError
from market_ingestor.ingestor.capture import read_session
from market_ingestor.simulator.session import FrameQueue, OutFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    exchange: str
    files: tuple[Path, ...]  # read in order; their received frames are sent one file after the other
    # None: as fast as the client reads; 1.0: the recorded pace; 2.0: twice as fast
    speed: float | None = None  # float-ok: a pace factor

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("replay needs at least one recorded session file")
        if self.speed is not None and self.speed <= 0:
            raise ConfigError(f"replay speed must be positive, got {self.speed}")


@dataclass(frozen=True, slots=True)
class Recording:
    frames: tuple[tuple[float | None, str], ...]  # (recorder clock in seconds or None, frame)
    rest: dict[str, bytes]  # "path?query" and "path" -> body; the first recorded body wins

    @classmethod
    def load(cls, files: Sequence[Path]) -> Recording:
        frames: list[tuple[float | None, str]] = []
        rest: dict[str, bytes] = {}
        for path in files:
            try:
                records = list(read_session(path))
            except OSError as exc:
                raise ConfigError(f"cannot read the recorded session {path}: {exc.strerror}") from exc
            for record in records:
                if record.kind == "received":
                    frames.append((record.ts, record.payload))
                elif record.kind == "unreadable":
                    skipped = {"file": str(path), "line": record.line_no, "reason": record.payload}
                    log.warning("replay skips a line that cannot be read", extra=skipped)
                elif record.kind == "rest" and record.url:
                    url = urlsplit(record.url)
                    body = record.payload.encode()
                    rest.setdefault(f"{url.path}?{url.query}" if url.query else url.path, body)
                    rest.setdefault(url.path, body)
        return cls(frames=tuple(frames), rest=rest)

    def rest_body(self, path: str, query: str) -> bytes | None:
        return self.rest.get(f"{path}?{query}" if query else path) or self.rest.get(path)


async def feed(queue: FrameQueue, recording: Recording, speed: float | None) -> None:  # float-ok: pace
    """Puts the recording's frames in a session's outbox, waiting for room: a replay never loses frames."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    first_ts: float | None = None  # float-ok: recorder clock seconds, for pacing only
    for ts, text in recording.frames:
        if speed is not None and ts is not None:
            if first_ts is None:
                first_ts = ts
            # Pace against the start, not the previous frame, so sleep overshoot does not accumulate.
            delay = started + (ts - first_ts) / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await queue.put(OutFrame(text))
        if queue.closed:
            return
