"""Configuration checks shared by every reader of a YAML document or section.

Used by the daemon configuration (edge.config), bundle.yaml (edge.bundle), the sections that
edge.sources, edge.sinks and edge.fallback own, and the model configs in convert/.

A :class:`Checker` checks one value at a time and raises :class:`CheckError` naming the dotted
key. The key (``exc.key``), the file (``exc.file``) and the problem (``exc.problem``) are data: a
caller that hands a section to its owning module and wraps the owner's error prefixes ``exc.key``
with the section it handed over; it never parses the message. ``ConfigError`` (edge.config),
``BundleError`` (edge.bundle) and ``SourceConfigError`` (edge.sources) are CheckErrors.
A :class:`Section` reads one mapping value by value with defaults (the sinks read theirs so).

Ranges: every numeric key should have an upper bound that a real line never needs to exceed, named
in the error: ``Checker.number(v, key, lo, hi, lo_open=...)`` -> ``must be a number in (0, 600], got
1e+10 (float)``; ``Checker.integer(v, key, lo, hi)`` -> ``must be an integer from 1 to 100, got ...``;
``Checker.positive_int(v, key, maximum)`` -> ``must be a positive integer <= 256, got ...``;
``Section.int`` / ``Section.number`` take the same bounds.

Untrusted input stays cheap: :func:`load_yaml` refuses files over :data:`MAX_YAML_BYTES`, documents
nested deeper than :data:`MAX_YAML_DEPTH` or whose aliases expand past :data:`MAX_YAML_NODES` values
or :data:`MAX_YAML_BYTES` characters of text (a "billion laughs" bomb), and numbers written with more
than :data:`MAX_NUMBER_CHARS` characters; every value an error shows goes through
:func:`short_repr`, which walks it with a character budget instead of building the full repr.

Standard library and yaml only.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
import numbers
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["CheckError", "Checker", "MAX_NUMBER_CHARS", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES",
           "Section", "UniqueKeyLoader", "YamlLimitError", "describe", "did_you_mean", "expected_type", "join",
           "load_yaml", "short_repr", "type_ok", "type_problem"]


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


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters ending in '...' when longer.

    Built by a walk that stops once it has ``limit`` characters, so a 1 MB string, a list of a
    million items or a structure nested a thousand deep costs no more than a small value (the full
    repr of a YAML alias bomb would take gigabytes). Values that fit are exactly their repr.
    Containers and scalars that YAML produces are walked; other objects are repr'd whole.
    """
    parts: list[str] = []
    _emit(value, parts, [limit + 1])
    text = "".join(parts)
    return text if len(text) <= limit else text[:max(limit - 3, 0)] + "..."


_BRACKETS = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}
_HUGE_INT_BITS = 1024  # ~300 digits: more than any message shows; str() of a much bigger int is slow or refused


def _emit(value: Any, out: list[str], left: list[int]) -> None:
    """Append repr(value) to ``out`` piece by piece until ``left[0]`` characters are spent."""
    def put(text: str) -> None:
        out.append(text)
        left[0] -= len(text)

    kind = type(value)
    if kind is str or kind is bytes:
        put(repr(value[:left[0] + 1]))  # one character more than fits, so the cut shows
    elif kind is int and value.bit_length() > _HUGE_INT_BITS:
        put(f"<an integer of {value.bit_length()} bits>")
    elif kind is dict:
        put("{")
        for i, (k, v) in enumerate(value.items()):
            if left[0] <= 0:
                return
            put(", " if i else "")
            _emit(k, out, left)
            put(": ")
            _emit(v, out, left)
        put("}")
    elif kind in _BRACKETS:
        if not value and kind in (set, frozenset):
            put(f"{kind.__name__}()")
            return
        opening, closing = _BRACKETS[kind]
        put(opening)
        for i, item in enumerate(value):
            if left[0] <= 0:
                return
            put(", " if i else "")
            _emit(item, out, left)
        put("," + closing if kind is tuple and len(value) == 1 else closing)
    else:
        put(repr(value))


def describe(value: Any) -> str:
    """A value as error messages show it: ``'x' (str)``, ``nothing (null)``; at most about 60
    characters of it, however big it is (see short_repr)."""
    if value is None:
        return "nothing (null)"
    return f"{short_repr(value)} ({type(value).__name__})"


_KEY_CHARS = 200  # a key longer than this is shown (and carried in exc.key) cut short


def _key_text(key: Any) -> str:
    text = key if isinstance(key, str) else short_repr(key, _KEY_CHARS) if isinstance(key, int) else str(key)
    return text if len(text) <= _KEY_CHARS else text[:_KEY_CHARS - 3] + "..."


def join(prefix: str | None, key: Any) -> str:
    """Dotted path: join('engine', 'threads') -> 'engine.threads'; an empty side is left out."""
    if key is None or key == "":
        return prefix or ""
    return f"{prefix}.{_key_text(key)}" if prefix else _key_text(key)


def did_you_mean(word: Any, allowed: Sequence[Any]) -> str | None:
    """The closest allowed word to a misspelt one (difflib), or None (always for a long word)."""
    text = _key_text(word)
    if len(text) > 3 * max((len(str(a)) for a in allowed), default=0) + 10:
        return None  # too long to reach difflib's 0.6 ratio with any of them; spares it a huge string
    close = difflib.get_close_matches(text, [str(a) for a in allowed], n=1, cutoff=0.6)
    return close[0] if close else None


def _finite_real(value: Any) -> bool:
    """A real number (never a bool) that is finite as a float (an int too big for one is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
        return isinstance(value, (int, float)) and _finite_real(value)
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
        """An integer (never a bool) from 1 to ``maximum``; the error names the maximum."""
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0
                or (maximum is not None and value > maximum)):
            most = f" <= {maximum}" if maximum is not None else ""
            raise self.fail(key, f"must be a positive integer{most}, got {describe(value)}")
        return int(value)

    def number(self, value: Any, key: str, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False) -> float:
        """A finite number (an int is one, a bool is not) above lo (or at it unless lo_open), at most hi."""
        ok = (_finite_real(value)
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


# Our YAML files (the daemon config, bundle.yaml, preprocess.yaml, dataset.yaml, run.yaml) are a
# few kB: a bundle.yaml with three modes is ~10 kB, ~700 values, 8 levels deep (it does use anchors:
# yaml.safe_dump writes one for a list shared by two keys, so aliases stay allowed, within a budget).
# The limits below are far beyond that and keep the pure-Python loader within ~20 MB and a second
# or two for any input, including one crafted to blow up.
MAX_YAML_BYTES = 1 << 20    # a bigger file is refused before it is parsed
MAX_YAML_NODES = 20_000     # values (scalars, lists, mappings) in the document, every alias expanded
MAX_YAML_DEPTH = 32         # nesting, aliases expanded (the composer recurses: ~3 frames a level)
MAX_NUMBER_CHARS = 100      # PyYAML's base-60 ints take quadratic time, 4301+ digit ints fail in int()
# The longest start of a plain scalar that PyYAML's int and float resolvers match with a repeated
# group (base 60: 1:59:59...); `re` keeps ~40 bytes per repetition, 40 MB for a 1 MB scalar.
_NUMBER_START = re.compile(r"[-+]?[0-9][0-9_:]*")


class YamlLimitError(yaml.error.MarkedYAMLError):
    """A YAML document exceeds one of the limits above (an alias bomb, a nesting bomb, ...)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one,
    so a second `score:` would quietly replace the first) and documents beyond the limits above.

    The budget counts what a reader of the loaded data would walk: every alias counts the values
    and scalar text of the node it repeats, so "billion laughs" (nine aliases of nine aliases ...)
    is refused while composing, after a few hundred nodes, before anything is constructed. An alias
    to a node that contains it (a recursive structure) is refused too.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0     # values composed so far, aliases expanded
        self._text = 0      # scalar characters composed so far, aliases expanded
        self._depth = 0     # nesting of the node being composed
        self._deepest = 0   # deepest level reached below the node being composed, aliases expanded
        self._anchored: dict[int, tuple[int, int, int]] = {}  # id(anchored node) -> (nodes, text, height)
        self._aliased = False  # any alias yet (only then is "alias bomb" the likely cause)

    def compose_document(self):
        self._anchored = {}  # ids of the previous document's nodes may be reused
        return super().compose_document()

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._anchored.get(id(node))
            if size is None:
                raise YamlLimitError(None, None, f"alias *{event.anchor[:40]} is inside the node "
                                                 f"it refers to (a recursive structure)", event.start_mark)
            self._aliased = True
            self._grow(size[0], size[1], event.start_mark)
            self._reach(self._depth + size[2], event.start_mark)
            return node
        self._depth += 1
        self._reach(self._depth, event.start_mark)
        if isinstance(event, yaml.ScalarEvent) and event.implicit[0] and len(event.value) > MAX_NUMBER_CHARS:
            start = _NUMBER_START.match(event.value)
            if start is not None and start.end() > MAX_NUMBER_CHARS:
                raise YamlLimitError(None, None, f"a number (or an unquoted value starting like one) of more than "
                                                 f"{MAX_NUMBER_CHARS} characters", event.start_mark)
        nodes, text, outer_deepest = self._nodes, self._text, self._deepest
        self._deepest = self._depth
        node = super().compose_node(parent, index)
        self._grow(1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0, event.start_mark)
        if event.anchor is not None:
            self._anchored[id(node)] = (self._nodes - nodes, self._text - text, self._deepest - self._depth + 1)
        self._deepest = max(outer_deepest, self._deepest)
        self._depth -= 1
        return node

    def _grow(self, nodes: int, text: int, mark) -> None:
        self._nodes += nodes
        self._text += text
        why = " with aliases expanded (an alias bomb?)" if self._aliased else ""
        if self._nodes > MAX_YAML_NODES:
            raise YamlLimitError(None, None, f"more than {MAX_YAML_NODES} values{why}", mark)
        if self._text > MAX_YAML_BYTES:
            raise YamlLimitError(None, None, f"more than {MAX_YAML_BYTES} characters of text{why}", mark)

    def _reach(self, depth: int, mark) -> None:
        self._deepest = max(self._deepest, depth)
        if depth > MAX_YAML_DEPTH:
            raise YamlLimitError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)

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
                        f"duplicate key {short_repr(key)} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_short_number(self, node):
        """ints and floats, but never from a scalar longer than MAX_NUMBER_CHARS."""
        if len(node.value) > MAX_NUMBER_CHARS:
            raise YamlLimitError(None, None, f"a number written with more than {MAX_NUMBER_CHARS} characters",
                                 node.start_mark)
        if node.tag.endswith(":int"):
            return self.construct_yaml_int(node)
        return self.construct_yaml_float(node)


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_short_number)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", UniqueKeyLoader.construct_short_number)


def _read_capped(file: Path) -> str:
    """The file's text; a file over MAX_YAML_BYTES is refused without reading more than that."""
    with open(file, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise ValueError(f"larger than {MAX_YAML_BYTES} bytes (1 MiB), far more than any configuration needs")
    return data.decode("utf-8")


def load_yaml(file: Path, error: type[CheckError] = CheckError) -> Any:
    """Parse a YAML file (duplicate keys are errors) within the limits above. An unreadable, too big
    or invalid file raises ``error`` naming the file (and the line and column)."""
    file = Path(file)
    try:
        text = _read_capped(file)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"{file}: cannot read: {exc}", file=file) from exc
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        # ValueError etc.: PyYAML's constructors raise them for values its own checks let through
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        verdict = "refused" if isinstance(exc, YamlLimitError) else "not valid YAML"
        problem = (": ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
                   or str(exc)[:200])
        raise error(f"{file}:{where} {verdict}: {problem}", file=file) from exc
