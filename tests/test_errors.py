"""The error tree drawn in ``errors.py`` is the tree of classes that exist: every subclass of MarketIngestorError
in the package is drawn under its parent, and nothing drawn is missing."""

from __future__ import annotations

import importlib
import pkgutil
import re

import market_ingestor
from market_ingestor import errors
from market_ingestor.errors import MarketIngestorError

_DRAWN = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z][A-Za-z]+)\b")


def drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, from the docstring's drawing (indentation of 4 per level)."""
    doc = errors.__doc__ or ""
    lines = doc.split("\n\n")[1].splitlines()  # the drawing is the docstring's second paragraph
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in lines:
        match = _DRAWN.match(line[4:])  # the drawing is indented by 4
        if match is None or (line[4:].startswith(" ") and "── " not in line):
            continue  # a continuation line of a description
        depth = 0 if "── " not in line else len(match["indent"]) // 4 + 1
        del stack[depth:]
        parents[match["name"]] = stack[-1] if stack else None
        stack.append(match["name"])
    return parents


def existing_tree() -> dict[str, str | None]:
    for module in pkgutil.walk_packages(market_ingestor.__path__, "market_ingestor."):
        importlib.import_module(module.name)
    parents: dict[str, str | None] = {MarketIngestorError.__name__: None}
    todo = [MarketIngestorError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("market_ingestor."):
                parents[sub.__name__] = cls.__name__
                todo.append(sub)
    return parents


def test_the_drawn_error_tree_is_the_tree_of_classes():
    drawn = drawn_tree()
    assert drawn["MarketIngestorError"] is None and drawn["StorageUnavailable"] == "StorageError"
    assert drawn == existing_tree()


def test_ours_in_picks_our_error_out_of_a_task_groups_exceptions() -> None:
    from market_ingestor.errors import BusError, ours_in

    bus_error = BusError("the bus went away")
    assert ours_in(ExceptionGroup("task group", [ValueError("x"), bus_error])) is bus_error
    assert ours_in(ExceptionGroup("task group", [ValueError("x")])) is None
