"""Typed sections of the flat config: each package reads only its own section, built and checked once.

A section is a dataclass whose field names are config keys (one name per setting, no renames); the
flat ``key = value`` file users edit stays as it is, and ``Section.from_config`` cuts a section out of it.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, TypeVar

from utils.config import ConfigError

T = TypeVar("T")


class Section:
    """Mixed into a section's dataclass: ``from_config`` cuts it out of the flat config."""

    @classmethod
    def from_config(cls: type[T], flat: Mapping[str, Any]) -> T:
        """The section built from the flat config's fields of the same names (absent ones keep their
        defaults), and so checked."""
        return cls(**{f.name: flat[f.name] for f in dataclasses.fields(cls) if f.init and f.name in flat})

    @classmethod
    def keys(cls) -> set[str]:
        """The config keys the section reads."""
        return {f.name for f in dataclasses.fields(cls) if f.init}


def at_least(owner: object, minimum: int | float, *names: str, error: type[Exception] = ConfigError) -> None:
    """``error`` naming the first of ``names`` whose value is below ``minimum``."""
    for name in names:
        if getattr(owner, name) < minimum:
            raise error(f"{name}={getattr(owner, name)} must be >= {minimum}")


def one_of(name: str, value: Any, choices: tuple[str, ...], error: type[Exception] = ConfigError) -> None:
    """``error`` naming ``name`` (and the closest choice) when ``value`` is not one of ``choices``."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise error(f"{name}={value!r} is not valid{hint} (choose one of: {', '.join(choices)})")
