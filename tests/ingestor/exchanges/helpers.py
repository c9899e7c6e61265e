"""What the exchange tests share: the recorded sessions and the tests' own reading of them, and the hostile-input
checks every parser must pass."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import strategies as st

from market_ingestor.errors import NotNormalized, ParseError
from market_ingestor.ingestor.exchanges.base import ParseContext
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent, Quote, Trade
from market_ingestor.simulator.dialect import SimDialect

SAMPLES = Path(__file__).parents[3].parent / "shared" / "exchange-samples"

Parse = Callable[[str | bytes, ParseContext], list[MarketEvent]]


# --- recorded sessions ------------------------------------------------------------------------------------------


def recording(name: str) -> Path:
    """A recorded session in ../shared/exchange-samples beside the repository; the test is skipped without it."""
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"recorded session {name} not found in {SAMPLES}")
    return path


def received_json(name: str, parse_float: Callable[[str], Any] | None = None) -> Iterator[Any]:
    """The frames the exchange sent in a recording (its ``SECONDS: payload`` lines), read with the stdlib only: the
    test's own view of the file, independent of the capture and parse code under test."""
    for line in recording(name).read_text(encoding="utf-8").splitlines():
        stamp, sep, payload = line.partition(": ")
        if sep and re.fullmatch(r"\d+(\.\d+)?", stamp):
            yield json.loads(payload, parse_float=parse_float)


def events_or_not_normalized(parse: Parse, frame: str | bytes, ctx: ParseContext) -> list[MarketEvent] | NotNormalized:
    """The events a frame parses to, or the :class:`NotNormalized` it raises (for tests over whole recordings,
    which check the frames not turned into events apart)."""
    try:
        return parse(frame, ctx)
    except NotNormalized as exc:
        return exc


def assert_not_normalized(parse: Parse, frame: str | bytes, ctx: ParseContext, channel: str, reason: str) -> None:
    """The frame is reported as not turned into events, naming its channel and why (never ``[]`` in silence)."""
    with pytest.raises(NotNormalized) as caught:
        parse(frame, ctx)
    assert (caught.value.channel, caught.value.reason) == (channel, reason)


# --- hostile input ----------------------------------------------------------------------------------------------


def json_strategy(
    keys: st.SearchStrategy[str],
    *,
    text_size: int | None,
    list_size: int = 4,
    dict_size: int,
    max_leaves: int,
    allow_infinity: bool | None = None,
) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars (strings up to ``text_size`` characters), lists, and objects with keys from ``keys``."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=allow_infinity)
        | st.text(max_size=text_size),
        lambda inner: st.lists(inner, max_size=list_size) | st.dictionaries(keys, inner, max_size=dict_size),
        max_leaves=max_leaves,
    )


def parsed_or_refused(parse: Parse, frame: str | bytes, ctx: ParseContext) -> list[MarketEvent] | None:
    """The events a frame parses to, or None where the parser refuses it with a ParseError (and nothing else)."""
    try:
        events = parse(frame, ctx)
    except ParseError:
        return None
    assert isinstance(events, list)
    return events


def assert_sane_outcome(parse: Parse, frame: str | bytes, ctx: ParseContext) -> None:
    """A frame is refused, or parses to market events with finite numbers: trades positive, quotes not negative,
    book levels at positive prices with sizes not negative."""
    for event in parsed_or_refused(parse, frame, ctx) or ():
        assert isinstance(event, Trade | Quote | BookSnapshot | BookDelta)
        if isinstance(event, Trade):
            assert event.price.is_finite() and event.qty.is_finite() and event.price > 0 and event.qty > 0
        elif isinstance(event, Quote):
            assert all(
                v.is_finite() and v >= 0 for v in (event.bid_price, event.bid_qty, event.ask_price, event.ask_qty)
            )
        else:
            assert all(p.is_finite() and q.is_finite() and p > 0 and q >= 0 for p, q in (*event.bids, *event.asks))


def mutate_field(target: dict[str, Any], data: st.DataObject, leaves: st.SearchStrategy[Any]) -> None:
    """Remove one field of ``target``, or replace its value with one drawn from ``leaves``."""
    key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        target[key] = data.draw(leaves)


def mutate(value: Any, data: st.DataObject, leaves: st.SearchStrategy[Any]) -> Any:
    """Replace, retype or remove one node somewhere inside a decoded frame; a replacement is drawn from ``leaves``."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        mutated = dict(value)
        if data.draw(st.booleans()):
            del mutated[key]
        else:
            mutated[key] = mutate(value[key], data, leaves)
        return mutated
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutate(value[index], data, leaves), *value[index + 1 :]]
    return data.draw(leaves)


def assert_reads_client_frame(dialect: SimDialect, frame: str, actions: Collection[str]) -> None:
    """The simulator reads any client frame as one of ``actions``, answering (if at all) with JSON replies."""
    request = dialect.parse_client_frame(frame)
    assert request.action in actions
    for reply in request.replies:
        msgspec.json.decode(reply)
