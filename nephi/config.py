"""Configs are data: YAML defaults shipped in ``nephi/defaults``, merged with a user's YAML and
dotted ``key=value`` overrides. Unknown keys and values of the wrong type are input errors that
name the key.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources

import yaml

from .errors import NephiInputError


def load_defaults(name: str) -> dict:
    """The packaged default config ``nephi/defaults/<name>.yaml`` as a dict."""
    text = resources.files("nephi").joinpath("defaults", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise NephiInputError(f"config {path}: file not found")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise NephiInputError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NephiInputError(f"config {path}: top level must be a mapping of keys")
    return data


def merge(base: dict, update: dict, prefix: str = "", source: str = "config") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; keys must exist in ``base``, types match."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            raise NephiInputError(f"{source}: unknown key {dotted!r}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise NephiInputError(f"{source}: key {dotted!r} must be a mapping")
            out[key] = merge(out[key], value, prefix=f"{dotted}.", source=source)
        else:
            out[key] = _coerce(out[key], value, dotted, source)
    return out


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(default, value, key: str, source: str):
    if (default is None or isinstance(default, float)) and isinstance(value, str) \
            and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads '5e-4' (no dot) as text
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise NephiInputError(f"{source}: key {key!r} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise NephiInputError(f"{source}: key {key!r} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise NephiInputError(f"{source}: key {key!r} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise NephiInputError(f"{source}: key {key!r} must be a string, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, list):
            return value
        raise NephiInputError(f"{source}: key {key!r} must be a list, got {value!r}")
    return value


def set_dotted(cfg: dict, dotted: str, value, source: str = "override") -> dict:
    """Return a copy of ``cfg`` with ``a.b.c`` set to ``value`` (checked like :func:`merge`)."""
    update: dict = {}
    node = update
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return merge(cfg, update, source=source)


def parse_override(text: str) -> tuple:
    """``key.sub=value`` -> (key.sub, YAML-parsed value)."""
    if "=" not in text:
        raise NephiInputError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def require_positive(cfg: dict, keys: list, option_names: dict | None = None,
                     allow_null: bool = False) -> None:
    """Raise NephiInputError naming the option (or key) whose value is not > 0 (or null, when
    ``allow_null``: an automatic default)."""
    option_names = option_names or {}
    for key in keys:
        value = get(cfg, key)
        if allow_null and value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            name = option_names.get(key, f"config key {key}")
            raise NephiInputError(f"{name}: must be positive, got {value!r}")
