"""Frozen, typed configs and the one override layer (`model.n_blocks=2`).

Configs are saved inside every artifact and checkpoint; `from_dict` rebuilds them and fails loudly on
a key it does not know, so a model is rebuilt from its file alone or not at all.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from recsys.errors import InvalidArgument

C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build `cls` from a mapping; unknown keys, ill-typed values and values the config's own checks
    refuse raise `InvalidArgument`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {unknown} for {cls.__name__}; fix: use one of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:  # a config's own consistency check (ModelConfig's raise ValueError)
        raise InvalidArgument(f"{where}: {err}") from err


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InvalidArgument(f"{where}: expected a list, got {value!r}; fix: write e.g. [1024, 512]")
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InvalidArgument(f"{where}: {value!r} is not allowed; fix: use one of {list(allowed)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InvalidArgument(f"{where}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise InvalidArgument(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _parse_scalar(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(cfg: C, overrides: Iterable[str], prefix: str) -> C:
    """Apply `prefix.key=value` overrides (values parsed as JSON, else taken as strings)."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidArgument(f"override {item!r}: expected KEY=VALUE; fix: e.g. --set model.n_blocks=2")
        head, _, name = key.partition(".")
        if head != prefix:
            continue
        if name not in data:
            raise InvalidArgument(
                f"override {item!r}: unknown key {name!r} for {type(cfg).__name__}; fix: use one of {sorted(data)}"
            )
        data[name] = _parse_scalar(raw)
    return from_dict(type(cfg), data, where=prefix)


def check_prefixes(overrides: Iterable[str], prefixes: Iterable[str]) -> None:
    allowed = set(prefixes)
    for item in overrides:
        head = item.partition("=")[0].partition(".")[0]
        if head not in allowed:
            raise InvalidArgument(
                f"override {item!r}: unknown section {head!r}; fix: start with one of {sorted(allowed)}"
            )
