"""`--method NAME[:key=value,...]` → a configured method object, with typed, validated settings."""
from __future__ import annotations

import dataclasses
import typing

from vlmedge.errors import InputError, UnknownNameError

_METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator: makes a `Compressor` dataclass available as `--method name`."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type:
    if name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _METHODS[name]


def _coerce(cls, key: str, value):
    hints = typing.get_type_hints(cls)
    kind = hints[key]
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null") and type(None) in typing.get_args(kind):
        return None
    for typ in args:
        try:
            if typ is bool:
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if typ in (int, float, str):
                return typ(value)
        except ValueError:
            continue
    names = "/".join(getattr(a, "__name__", str(a)) for a in args)
    raise InputError(f"setting {key}={value!r} of method {cls.name!r} must be {names}")


def get_method(spec, **overrides):
    """Parses `name` or `name:key=value,key=value` (or passes a method object through) into a method object."""
    if not isinstance(spec, str):
        return dataclasses.replace(spec, **overrides) if overrides else spec
    name, _, rest = spec.strip().partition(":")
    cls = method_class(name.strip())
    opts: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"method setting {item!r} must look like key=value (in {spec!r})")
        opts[key.strip().replace("-", "_")] = value.strip()
    opts.update(overrides)
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in opts:
        if key not in valid:
            raise UnknownNameError(f"method {name!r} has no setting {key!r}; settings: {', '.join(sorted(valid)) or 'none'}")
    return cls(**{k: _coerce(cls, k, v) for k, v in opts.items()})
