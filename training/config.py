"""YAML run configs for `minicpm train sft|rl`: read into dataclasses, every key checked.

A misspelt key or a value of the wrong type is an error that names the key and the file, before
any model is loaded; relative paths are taken relative to the config file, so a config works from
any working directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from training.batches import TrainingDataError

T = TypeVar("T")


class ConfigError(TrainingDataError):
    """A training config that cannot be used as written."""


def _check(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, where)
            except ConfigError:
                continue  # not this member of the union; try the next
        raise ConfigError(f"{where}: {value!r} is not a {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)[:1] or (Any,)
        items = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where)
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {kind}")


def from_mapping(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    missing = [name for name, f in fields.items() if name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    values = {name: _check(value, hints[name], f"{where}.{name}" if where else name) for name, value in raw.items()}
    try:
        return cls(**values)
    except ValueError as exc:  # a dataclass's own range checks
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def load_config(cls: type[T], path: Path, overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML file into cls; relative paths (fields named in cls.PATH_FIELDS) become relative to it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (data: ..., out: ...), not a {type(raw).__name__}")
    raw = dict(raw or {})
    raw.update(overrides or {})
    for name in getattr(cls, "PATH_FIELDS", ()):
        value = raw.get(name)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            raw[name] = str((path.parent / value).resolve())
    def maybe_path(value):
        if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            return str((path.parent / value).resolve())
        return value

    for name in getattr(cls, "MAYBE_PATH_FIELDS", ()):  # a model or adapter: a path only if one exists there
        if name in raw:
            value = raw[name]
            raw[name] = [maybe_path(v) for v in value] if isinstance(value, list) else maybe_path(value)
    return from_mapping(cls, raw, path.name)
