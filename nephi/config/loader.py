"""Configs are data: YAML defaults shipped in ``nephi/config/defaults``, merged with a user's YAML
and dotted ``key=value`` overrides. Unknown keys and values of the wrong type are input errors
that name the key; :mod:`nephi.config.validate` then checks the values.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources

import yaml

from nephi.errors import NephiInputError


__all__ = ["load_defaults", "read_yaml", "merge", "set_dotted", "parse_override", "get",
           "apply_overrides", "resolve_config"]


def load_defaults(name: str) -> dict:
    """The packaged default config ``nephi/config/defaults/<name>.yaml`` as a dict."""
    text = resources.files("nephi.config").joinpath("defaults", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise NephiInputError(f"config {path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise NephiInputError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise NephiInputError(f"config {path}: not a text (UTF-8) YAML file") from None
    except OSError as exc:
        raise NephiInputError(f"config {path}: cannot be read ({exc.strerror or exc})") from None
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
        hint = (" (YAML reads an unquoted no / yes / off / on as true or false: quote the word)"
                if isinstance(value, bool) else "")
        raise NephiInputError(f"{source}: key {key!r} must be a string, got {value!r}{hint}")
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
    """The value of ``a.b.c`` in ``cfg``."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def apply_overrides(cfg: dict, overrides: list, label: str = "override") -> dict:
    """``cfg`` with every ``key=value`` text of ``overrides`` applied (errors name ``label``)."""
    for text in overrides:
        key, value = parse_override(text)
        cfg = set_dotted(cfg, key, value, source=f"{label} {text}")
    return cfg


def resolve_config(base, config_path: str | None = None, overrides: list = (),
                   label: str = "override") -> dict:
    """``base`` (a defaults name such as ``"train"``, or a dict) <- CONFIG.yaml <- overrides."""
    cfg = load_defaults(base) if isinstance(base, str) else copy.deepcopy(base)
    if config_path:
        cfg = merge(cfg, read_yaml(config_path), source=f"config {config_path}")
    return apply_overrides(cfg, overrides, label)
