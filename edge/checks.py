"""Configuration checks shared by every reader of a YAML document or section.

Used by the daemon configuration (edge.config), bundle.yaml (edge.bundle), the sections that
edge.sources, edge.sinks and edge.fallback own, and the model configs in convert/.

A :class:`Checker` checks one value at a time and raises :class:`CheckError` naming the dotted
key. The key (``exc.key``), the file (``exc.file``) and the problem (``exc.problem``) are data: a
caller that hands a section to its owning module and wraps the owner's error prefixes ``exc.key``
with the section it handed over; it never parses the message. ``ConfigError`` (edge.config),
``BundleError`` (edge.bundle) and ``SourceConfigError`` (edge.sources) are CheckErrors.
A :class:`Section` reads one mapping value by value with defaults (the sinks read theirs so).

Standard library and yaml only.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["CheckError", "Checker", "Section", "UniqueKeyLoader", "describe", "did_you_mean", "expected_type",
           "join", "load_yaml", "type_ok", "type_problem"]


class CheckError(ValueError):
    """A configuration value is unusable. The message reads ``WHERE: PREFIX.KEY: PROBLEM``.

    ``key``: the dotted path of the offending key below the raising checker's prefix (None when the
    whole document is at fault); ``file``: the file at fault (a Path or None); ``problem``: the
    message without the file and the key.
    """

    def __init__(self, message: str, *, key: str | None = None, file: str | os.PathLike | None = None,
                 problem: str | None = None):
        super().__init__(message)
        self.key = key
        self.file = Path(file) if file is not None else None
        self.problem = message if problem is None else problem


# --------------------------------------------------------------------------- wording


def describe(value: Any) -> str:
    """A value as error messages show it: ``'x' (str)``, ``nothing (null)``."""
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def join(prefix: str | None, key: Any) -> str:
    """Dotted path: join('engine', 'threads') -> 'engine.threads'; an empty side is left out."""
    if key is None or key == "":
        return prefix or ""
    return f"{prefix}.{key}" if prefix else str(key)


def did_you_mean(word: Any, allowed: Sequence[Any]) -> str | None:
    """The closest allowed word to a misspelt one (difflib), or None."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1, cutoff=0.6)
    return close[0] if close else None


def _number_range(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is None and hi is None:
        return "a finite number"
    if hi is None:
        if lo == 0:
            return "a positive number" if lo_open else "a non-negative number"
        return f"a number {'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"a number <= {hi:g}"
    return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"


# --------------------------------------------------------------------------- annotations


def type_ok(value: Any, tp: Any) -> bool:
    """Does a YAML value fit a config dataclass annotation (PreprocessParams, the model configs)?
    An int is a float, a bool is neither, floats must be finite; unknown annotations pass."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(type_ok(v, args[0]) for v in value)
        return len(value) == len(args) and all(type_ok(v, a) for v, a in zip(value, args))
    return True


def expected_type(tp: Any, value: Any) -> str:
    """The annotation as an error names it when type_ok rejected value ('a finite float' for nan)."""
    text = (str(tp) if not isinstance(tp, type) else tp.__name__).replace("typing.", "")
    return f"a finite {text}" if isinstance(value, float) and not math.isfinite(value) else text


def type_problem(value: Any, tp: Any) -> str:
    """'expected bool, got 'maybe' (str)': the problem when type_ok(value, tp) is false."""
    return f"expected {expected_type(tp, value)}, got {describe(value)}"


# --------------------------------------------------------------------------- checker

_DEFAULT_FILE = object()


class Checker:
    """Checks values and names the dotted key on failure.

    ``where`` opens every message (the config file, the bundle manifest); ``file`` is the errors'
    ``file`` unless a check names another; ``prefix`` is the dotted path of the section this checker
    was handed (shown in messages, left out of ``exc.key``); ``error`` is the CheckError subclass
    raised.
    """

    def __init__(self, *, where: str | os.PathLike | None = None, file: str | os.PathLike | None = None,
                 prefix: str | None = None, error: type[CheckError] = CheckError):
        self.where = str(where) if where is not None else None
        self.file = file
        self.prefix = prefix
        self.error = error

    def fail(self, key: str | None, problem: str, *, file: Any = _DEFAULT_FILE) -> CheckError:
        message = ": ".join(p for p in (self.where, join(self.prefix, key), problem) if p)
        return self.error(message, key=key, file=self.file if file is _DEFAULT_FILE else file, problem=problem)

    def mapping(self, value: Any, key: str | None, *, allow_none: bool = False, any_keys: bool = False) -> dict:
        """A mapping (None -> {} with allow_none) whose keys are strings (any keys with any_keys)."""
        if value is None and allow_none:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {describe(value)}")
        if not any_keys:
            for k in value:
                if not isinstance(k, str):
                    raise self.fail(join(key, k), f"keys must be strings, got {describe(k)}")
        return value

    def keys(self, d: dict, key: str | None, allowed: Sequence[str], *, required: Sequence[str] = (),
             context: str = "") -> None:
        """Unknown keys (with a did-you-mean) and missing required ones (absent or null)."""
        for k in d:
            if k not in allowed:
                close = did_you_mean(k, allowed)
                hint = f"; did you mean '{close}'?" if close else ""
                raise self.fail(join(key, k), f"unknown key{context}{hint} (allowed under "
                                              f"'{join(self.prefix, key) or 'the top level'}': {', '.join(allowed)})")
        self.required(d, key, required)

    def required(self, d: dict, key: str | None, names: Sequence[str]) -> None:
        """Every one of ``names`` is in ``d`` and not null."""
        for k in names:
            if d.get(k) is None:
                raise self.fail(join(key, k), "missing required key")

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {describe(value)}")
        return value

    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer (never a bool) in [lo, hi]."""
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or (lo is not None and value < lo) or (hi is not None and value > hi)):
            rng = (f" from {lo} to {hi}" if lo is not None and hi is not None else
                   f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
            raise self.fail(key, f"must be an integer{rng}, got {describe(value)}")
        return int(value)

    def positive_int(self, value: Any, key: str, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise self.fail(key, f"must be a positive integer, got {describe(value)}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be at most {maximum}, got {value}")
        return int(value)

    def number(self, value: Any, key: str, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False) -> float:
        """A finite number (an int is one, a bool is not) above lo (or at it unless lo_open), at most hi."""
        ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
              and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi))
        if not ok:
            raise self.fail(key, f"must be {_number_range(lo, hi, lo_open)}, got {describe(value)}")
        return float(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            quote = isinstance(value, (int, float, _dt.date)) and not isinstance(value, bool)
            raise self.fail(key, f"must be a non-empty string, got {describe(value)}"
                                 f"{' (quote it in YAML)' if quote else ''}")
        return value

    def choice(self, value: Any, key: str, allowed: Sequence[Any]) -> Any:
        """One of ``allowed`` (a bool is never taken for 1 or 0)."""
        bool_mismatch = isinstance(value, bool) and not any(a is value for a in allowed)
        if bool_mismatch or value not in allowed:
            close = did_you_mean(value, allowed) if isinstance(value, str) else None
            hint = f"; did you mean '{close}'?" if close else ""
            raise self.fail(key, f"must be one of {', '.join(map(str, allowed))}, got {describe(value)}{hint}")
        return value

    def name_list(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of names, got {describe(value)}")
        return tuple(value)

    def annotated(self, value: Any, key: str, tp: Any) -> Any:
        """A value that fits a dataclass annotation (see type_ok)."""
        if not type_ok(value, tp):
            raise self.fail(key, type_problem(value, tp))
        return value


class Section:
    """One mapping at dotted ``key``, read value by value: an absent or null value gives the default.

    Unknown keys fail at once with a did-you-mean; ``Section(None, ...)`` reads as empty.

    >>> s = Section({"port": 1883}, "sinks.mqtt", allowed=("host", "port"))
    >>> s.int("port", 1, 65535, default=1883)
    1883
    """

    def __init__(self, d: Any, key: str, allowed: Sequence[str], chk: Checker | None = None):
        self.chk = chk if chk is not None else Checker()
        self.d = self.chk.mapping(d, key, allow_none=True, any_keys=True)
        self.key = key
        allowed = tuple(allowed)
        for k in self.d:
            if k not in allowed:
                close = did_you_mean(k, allowed)
                hint = f" (did you mean '{close}'?)" if close else ""
                raise self.fail(k, f"unknown key{hint}; known keys: {', '.join(allowed)}")

    def k(self, name: str) -> str:
        return join(self.key, name)

    def fail(self, name: str, problem: str) -> CheckError:
        return self.chk.fail(self.k(name), problem)

    def has(self, name: str) -> bool:
        return self.d.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        v = self.d.get(name)
        return default if v is None else v

    def _missing(self, name: str, default: Any, required: bool) -> Any:
        if required:
            raise self.fail(name, "required")
        return default

    def str(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        v = self.d.get(name)
        return self._missing(name, default, required) if v is None else self.chk.string(v, self.k(name))

    def bool(self, name: str, default: bool) -> bool:
        v = self.d.get(name)
        return default if v is None else self.chk.boolean(v, self.k(name))

    def int(self, name: str, lo: int, hi: int, default: int | None = None, required: bool = False) -> int | None:
        v = self.d.get(name)
        return self._missing(name, default, required) if v is None else self.chk.integer(v, self.k(name), lo, hi)

    def number(self, name: str, lo: float, hi: float, default: float | None = None,
               lo_open: bool = False) -> float | None:
        v = self.d.get(name)
        return default if v is None else self.chk.number(v, self.k(name), lo, hi, lo_open=lo_open)

    def choice(self, name: str, allowed: Sequence[Any], default: Any) -> Any:
        v = self.d.get(name)
        return default if v is None else self.chk.choice(v, self.k(name), tuple(allowed))


# --------------------------------------------------------------------------- YAML


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one,
    so a second `score:` would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges may legitimately be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable key: the base class reports it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(file: Path, error: type[CheckError] = CheckError) -> Any:
    """Parse a YAML file (duplicate keys are errors). An unreadable file or invalid YAML raises
    ``error`` naming the file (and the line and column)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{file}: cannot read: {exc}", file=file) from exc
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = ": ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p) or str(exc)
        raise error(f"{file}:{where} not valid YAML: {problem}", file=file) from exc
