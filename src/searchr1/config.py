"""Typed configs: dataclasses are the single source of truth.

Every command reads one root dataclass (see `searchr1.settings`). Values come, in order of
precedence, from the dataclass defaults, a YAML preset (a bundled name such as `cpu-demo` or a
path), and dotted command-line overrides (`server.port=8001`). Every key is checked: an unknown
key or a value of the wrong type is a `ConfigError` that names the full dotted key.

This module is generic: it knows nothing about searchr1's settings.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from searchr1.errors import ConfigError

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "configs"


def param(default: Any, help: str) -> Any:
    """A documented config field. `default` may be a dataclass type (its defaults are used)."""
    meta = {"help": help}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def redefault(cls: type, name: str, default: Any) -> Any:
    """The documented field `name` of dataclass `cls` with another default: for a subclass that
    shares `cls`'s fields (help text included) and changes only where they start."""
    return param(default, cls.__dataclass_fields__[name].metadata.get("help", ""))


# ----------------------------------------------------------------------------- building


class _UnknownKey(ConfigError):
    """An unknown key deep in the tree, worded by the outermost `from_dict`, which sees the whole
    tree and can point at where the key lives now."""

    def __init__(self, key: str, name: str, valid: list[str]) -> None:
        super().__init__(f"unknown config key '{key}'")
        self.key, self.name, self.valid = key, name, valid


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build `cls` from a (possibly partial) mapping, checking every key and type."""
    try:
        return _build(cls, data, where)
    except _UnknownKey as e:
        raise ConfigError(_unknown_key_message(e.key, e.name, e.valid, cls, where)) from None


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else str(name)
        if name not in fields:
            raise _UnknownKey(key, str(name), list(fields))
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _unknown_key_message(key: str, name: str, valid: list[str], root: type, where: str = "") -> str:
    msg = f"unknown config key '{key}'"
    guess = _guess_key(key, name, valid, root, where)
    if guess:
        msg += f" (did you mean '{guess}'?)"
    return msg + f"; valid keys here: {', '.join(sorted(valid))}"


def _guess_key(key: str, name: str, valid: list[str], root: type, where: str) -> str | None:
    """The key meant by an unknown `key` (last part `name`; `valid`: its siblings), in the tree of
    `root`, in this order: the same leaf in a section below (a key that moved into a section:
    train.lr -> train.optim.lr); a leaf whose path is the key once dots are underscores
    (train.lora_r -> train.lora.r); a sibling spelt alike (server.prot -> server.port); a leaf
    whose path reads alike that way (eval.agent_template -> agent.template); the same leaf
    elsewhere, in the section nearest to the key (data.template -> agent.template)."""
    parent = key[: len(key) - len(name)]
    leaves = [f"{where}.{leaf}" if where else leaf for leaf, *_ in iter_fields(root)]
    same = [leaf for leaf in leaves if leaf.rsplit(".", 1)[-1] == name]
    below = [leaf for leaf in same if leaf.startswith(parent)]
    if below:
        return min(below, key=len)
    flat = {leaf.replace(".", "_"): leaf for leaf in leaves}
    if key.replace(".", "_") in flat:
        return flat[key.replace(".", "_")]
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return parent + close[0]
    close = difflib.get_close_matches(key.replace(".", "_"), list(flat), n=1, cutoff=0.8)
    if close:
        return flat[close[0]]
    if same:
        return max(same, key=lambda leaf: (len(_shared_prefix(leaf, key)), -len(leaf)))
    return None


def _shared_prefix(a: str, b: str) -> list[str]:
    out = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        out.append(x)
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key}: expected one of {choices}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin in (list, Sequence, tuple):
        if isinstance(value, str):
            # `key=a,b` on the command line is a list of two strings.
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads `1e-6` (no dot) as a string.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a bug in a settings class


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + "/".join(map(str, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- presets + overrides


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn `["a.b=1", "c=x,y"]` into a nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. server.port=8001)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """`cfg` (a config dataclass) with dotted overrides applied, checked as a loaded config is."""
    return from_dict(type(cfg), deep_merge(dataclasses.asdict(cfg), parse_overrides(overrides)))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_preset(name_or_path: str | Path, _seen: tuple = ()) -> dict:
    """Read a preset by bundled name or path, resolving `extends: other-preset` chains."""
    path = Path(name_or_path)
    if not path.exists() and (not path.suffix or (PRESET_DIR / f"{name_or_path}.yaml").is_file()):
        path = PRESET_DIR / f"{name_or_path}.yaml"  # a bundled name (may contain dots: qwen2.5)
    if not path.is_file():
        raise ConfigError(
            f"config {str(name_or_path)!r} not found: give a YAML path or one of the bundled "
            f"presets: {', '.join(preset_names())}"
        )
    if path.resolve() in _seen:
        raise ConfigError(f"config {path} extends itself (cycle through {[str(p) for p in _seen]})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping")
    parent = data.pop("extends", None)
    if parent:
        # A relative path is resolved beside the file that extends it, not the working directory.
        beside = path.parent / str(parent)
        if not Path(str(parent)).is_absolute() and beside.is_file():
            parent = beside
        base = read_preset(parent, _seen + (path.resolve(),))
        data = deep_merge(base, data)
    return data


def load_config(cls: type[T], config: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults <- preset/YAML file <- dotted overrides, validated into `cls`."""
    data = read_preset(config) if config else {}
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


# ----------------------------------------------------------------------------- inspection


def iter_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any, Any, str]]:
    """Yield (dotted key, type, default, help) for every leaf field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        yield key, tp, default, f.metadata.get("help", "")


def describe(cls: type) -> str:
    """Human-readable list of every key, for `--help` and `searchr1 config keys`."""
    lines = []
    for key, tp, default, help_ in iter_fields(cls):
        lines.append(f"  {key} ({_type_name(tp)}, default {default!r})\n      {help_}")
    return "\n".join(lines)


def to_yaml(obj: Any) -> str:
    """The resolved config as YAML, each key preceded by its help text as a comment."""
    out: list[str] = []
    _yaml_lines(obj, 0, out)
    return "\n".join(out) + "\n"


def _yaml_lines(obj: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_ = f.metadata.get("help", "")
        if help_:
            out.append(f"{pad}# {help_}")
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:")
            _yaml_lines(value, indent + 1, out)
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=10_000).strip()
            out.append(pad + dumped.removeprefix("{").removesuffix("}"))
