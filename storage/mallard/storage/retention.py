"""Retention settings: how long each table keeps its data (`--retention`), parsed without loading the
compactor (`mallard.storage.compact` applies them)."""

from __future__ import annotations

from typing import Final

from mallard.storage.schema import ALL_TABLES, TABLES

_DURATION_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` (or plain seconds) as seconds; raises ValueError."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_S else "s"
    number = value[:-1] if value[-1:] in _DURATION_S else value
    try:
        seconds = float(number) * _DURATION_S[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def parse_retention(text: str) -> dict[str, float]:
    """`7d` (every table) or `spans=7d,metrics=30d,logs=3d` as table → maximum age in seconds;
    an empty text keeps everything. Raises ValueError."""
    ages: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        table, sep, age = item.rpartition("=")
        names = [table.strip()] if sep else list(TABLES)
        for name in names:
            if name not in ALL_TABLES:
                known = ", ".join(ALL_TABLES)
                raise ValueError(f"unknown table {name!r} in retention (tables: {known})")
            ages[name] = parse_duration(age)
    return ages
