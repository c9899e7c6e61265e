"""One client's bounded queue of frames waiting for its socket: conflation, drop-oldest, lost count, lag clock.

Frames only wait here while the client's socket cannot take more (its write buffer is over the limit); a client
that keeps up never has a queue. Rules, in this order:

- a *conflatable* frame (a quote, an in-progress kline) replaces the pending frame of the same (channel, symbol)
  in place: the client gets the newest value at the older one's position, and the replaced one counts as lost;
- a *revision* (a closed kline, an indicator value: a worker's correction re-publishes them with a higher
  revision) replaces the pending frame of the same kline or value (its ``revision_of`` key) in place. The older
  revision is superseded, not lost: the client ends with the same state as if it had read both, so this is
  counted apart (``superseded``) and no "dropped" notice is owed. A burst of corrections (a worker catching up
  on trades held during a broker outage re-publishes a closed minute hundreds of times) then takes one slot per
  kline instead of filling the queue;
- any other frame (a trade, a new closed kline, an indicator value, a reply) is appended; it also ends
  conflation for its (channel, symbol), so a later in-progress kline never jumps ahead of a closed one;
- when the queue is full, the oldest frame is dropped and counts as lost.

``behind_since`` is when the queue last went from empty to non-empty (None while empty): the gateway closes a
client that stays behind longer than ``push.max_behind_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

M = TypeVar("M")  # a message; the gateway's are encoded once and shared by every client's outbox


class _Item(Generic[M]):
    __slots__ = ("frame", "key")

    def __init__(self, key: Hashable | None, frame: M) -> None:
        self.key = key
        self.frame = frame


class Outbox(Generic[M]):
    __slots__ = ("_items", "_pending", "behind_since", "lost", "size", "superseded")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.size = size
        self._items: deque[_Item[M]] = deque()
        # Items still in the queue that a newer frame replaces: conflatable ones by (channel, symbol), revisions
        # by their ``revision_of`` key (a different shape of key: the two never meet).
        self._pending: dict[Hashable, _Item[M]] = {}
        self.lost = 0  # since the last take_lost()
        self.superseded = 0  # revisions replaced by a newer revision of the same kline or value (not lost)
        self.behind_since: float | None = None  # float-ok: a monotonic clock reading

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(
        self,
        frame: M,
        key: Hashable | None,
        conflate: bool,
        now: float,  # float-ok: clock
        revision_of: Hashable | None = None,
    ) -> int:
        """Queue ``frame``; returns how many frames this cost (0 or 1). ``revision_of``: for a revision (not
        conflatable), what it is a revision of."""
        slot = key if conflate else revision_of  # a newer frame of this slot replaces this one in place
        if slot is not None:
            item = self._pending.get(slot)
            if item is not None:
                item.frame = frame
                if conflate:
                    self.lost += 1
                    return 1
                self.superseded += 1
                return 0
        if key is not None and not conflate:
            self._pending.pop(key, None)
        lost = 0
        if len(self._items) >= self.size:
            oldest = self._items.popleft()
            if oldest.key is not None and self._pending.get(oldest.key) is oldest:
                del self._pending[oldest.key]
            lost = 1
            self.lost += 1
        if not self._items:
            self.behind_since = now
        item = _Item(slot, frame)
        self._items.append(item)
        if slot is not None:
            self._pending[slot] = item
        return lost

    def pop(self) -> M | None:
        """The oldest frame, or None when empty (and then the client is no longer behind)."""
        if not self._items:
            self.behind_since = None
            return None
        item = self._items.popleft()
        if item.key is not None and self._pending.get(item.key) is item:
            del self._pending[item.key]
        if not self._items:
            self.behind_since = None
        return item.frame

    def take_lost(self) -> int:
        lost, self.lost = self.lost, 0
        return lost
