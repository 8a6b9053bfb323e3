"""Settings from the command line: ``--set KEY=VALUE`` (docs/config.md, "Settings from the
command line").

KEY is a dotted path into the config's YAML (``training.lr``, ``tree.tiers.2.count``: an
integer part indexes a list); VALUE is read as YAML (``0.01`` a float, ``true`` a bool,
``[1, 2]`` a list, ``null`` None). Each setting replaces one value of the raw mapping read
from the file, before it is validated, so a bad key or value gets the schema's own
message; a later setting of the same key wins. Pure: no click, no I/O.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import yaml

from rayagg.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.lr=0.01"`` -> (``["training", "lr"]``, ``0.01``); ConfigError naming
    the setting for a missing ``=``, an empty key or key part, an empty value or a value
    that is not YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. training.lr=0.01")
    if not key:
        raise ConfigError(f"--set {text}: empty key (expected KEY=VALUE, e.g. training.lr=0.01)")
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text}: the key {key!r} has an empty part (a dotted path such as "
                          "tree.tiers.2.count)")
    if not value.strip():
        raise ConfigError(f"--set {text}: empty value (give null for none, '' for an empty string)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"--set {text}: the value is not valid YAML: {problem}") from None
    return parts, parsed


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """A copy of ``raw`` (the mapping read from a config file) with each ``KEY=VALUE`` of
    ``overrides`` set in turn; ``raw`` is unchanged. A missing (or null) mapping on the way
    is created; a list index out of range, a non-integer index into a list or a key into a
    scalar is a ConfigError naming the setting. A top level that is not a mapping is
    returned as it is: validating it says what is wrong."""
    if not overrides or not isinstance(raw, dict):
        return raw
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        _set(result, parts, value, text)
    return result


def _set(root: dict, parts: list[str], value: Any, text: str) -> None:
    node: Any = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, dict):
            key = _mapping_key(node, part)
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        elif isinstance(node, list):
            index = _list_index(node, part, where, text)
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = {}
                node = node[index]
        else:
            raise ConfigError(f"--set {text}: {where} is {node!r}, not a mapping or a list: it has no "
                              f"{part!r}")


def _mapping_key(node: dict, part: str) -> Any:
    """The key ``part`` names in ``node``: itself, or the integer a YAML mapping keyed by
    numbers holds."""
    if part not in node and _is_index(part) and int(part) in node:
        return int(part)
    return part


def _list_index(node: list, part: str, where: str, text: str) -> int:
    if not _is_index(part):
        raise ConfigError(f"--set {text}: {where} is a list: {part!r} is not an index (0, 1, ...)")
    index = int(part)
    if index >= len(node):
        entries = "no entries" if not node else \
            f"{len(node)} entr{'y' if len(node) == 1 else 'ies'} (0 to {len(node) - 1})"
        raise ConfigError(f"--set {text}: {where} has {entries}")
    return index


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()
