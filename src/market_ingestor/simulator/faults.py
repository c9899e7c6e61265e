"""Fault injection: what the simulator does wrong on purpose so tests can prove the connectors cope.

- drop: close connections abruptly (TCP abort, no close frame), every ``drop_every_s`` or on demand;
- stall: stop sending on the open sessions (the socket stays open) for ``stall_s`` seconds, every
  ``stall_every_s`` or on demand; frames due meanwhile are lost, as on a stuck exchange connection;
- malformed: before every ``malformed_every``-th data frame, or the next N on demand, send a broken copy of it:
  alternately truncated (not JSON) and with wrong types (JSON of the same shape whose numbers are not numbers);
- gap: every ``gap_every``-th update of an instrument, or on demand, skip trade ids and book sequence numbers;
- slow sends: sleep ``slow_send_ms`` before each frame. The slowness is ours, so sessions are not closed as slow
  consumers then: the market of that exchange waits for the sessions to catch up instead.

The broken frames are sent *in addition to* the real ones, so what the simulator counts as sent stays exact.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from market_ingestor.errors import ConfigError

MalformedKind = Literal["truncated", "wrong_types"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = ("truncated", "wrong_types")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Faults applied to every simulated exchange from the start; None or 0 turns one off."""

    drop_every_s: float | None = None
    stall_every_s: float | None = None
    stall_s: float = 30.0
    malformed_every: int | None = None  # data frames
    gap_every: int | None = None  # book updates per instrument
    slow_send_ms: float = 0.0  # float-ok: a delay

    def __post_init__(self) -> None:
        for name in ("drop_every_s", "stall_every_s", "malformed_every", "gap_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"faults.{name} must be positive (or unset to turn it off), got {value}")
        if self.stall_s <= 0:
            raise ConfigError(f"faults.stall_s must be positive, got {self.stall_s}")
        if self.slow_send_ms < 0:
            raise ConfigError(f"faults.slow_send_ms must be >= 0, got {self.slow_send_ms}")


class FaultState:
    """One exchange's live fault settings: the configured ones plus what a test asked for at run time."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.slow_send_ms = config.slow_send_ms
        self._malformed_pending: deque[MalformedKind | None] = deque()
        self._data_frames = 0
        self._next_kind = 0

    def request_malformed(self, count: int, kind: MalformedKind | None = None) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._malformed_pending.extend([kind] * count)

    def malformed_before_next(self) -> MalformedKind | None:
        """Called once per data frame about to be sent: whether to send a broken copy of it first, and which."""
        self._data_frames += 1
        if self._malformed_pending:
            kind = self._malformed_pending.popleft()
            return kind or self._alternate()
        every = self.config.malformed_every
        if every and self._data_frames % every == 0:
            return self._alternate()
        return None

    def _alternate(self) -> MalformedKind:
        kind = MALFORMED_KINDS[self._next_kind % len(MALFORMED_KINDS)]
        self._next_kind += 1
        return kind


def corrupt(frame: str, kind: MalformedKind) -> str:
    """A broken copy of ``frame``: ``truncated`` is never valid JSON; ``wrong_types`` keeps the shape (and the
    non-numeric strings that say which message it is, so it reaches the real parser) but turns every number,
    numeric string and boolean into a value of another type."""
    if kind == "wrong_types":
        try:
            document = json.loads(frame)
        except ValueError:
            document = None
        if document is not None:
            broken = _wrong_types(document)
            if broken == document:  # nothing numeric to break: change the top-level type instead
                broken = {"unexpected": broken} if isinstance(broken, list) else [broken]
            return json.dumps(broken, separators=(",", ":"))
    # An unterminated prefix of a JSON object or array is never valid JSON.
    head = frame if frame[:1] in ("{", "[") else "{" + frame
    return head[: max(1, len(head) // 2)]


def _wrong_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _wrong_types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wrong_types(item) for item in value]
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, int | float):
        return "not-a-number"
    if isinstance(value, str) and _is_number(value):
        return {"unexpected": value}
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)  # float-ok: only asks whether the text is a number
    except ValueError:
        return False
    return True
