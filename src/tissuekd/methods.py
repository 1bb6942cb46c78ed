"""What the two studies' method tables (`niche/methods.py`, `survival/methods.py`) share: the
rules a method's name follows, and variants of a table's entries declared in the config
(`niche.methods`, `survival.methods`), so that adding a variant of a method is one config edit.

A variant is `name: {like: <an entry>, label: <display name>, config: <overrides>}`: the entry
it is like, under a new name, with that study's config keys overridden for its jobs only
(`config: {train: {hidden: 32}}` changes `survival.train.hidden` and keeps the rest). Without
`like`, an entry named like an existing method changes that method's label or overrides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from tissuekd.errors import InputError

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a method's name is a path part, a wildcard value and a table row
M = TypeVar("M")


def table(*methods: M) -> dict[str, M]:
    """Name -> entry, in the order given (the order of tables, figures and evaluation)."""
    out = {}
    for method in methods:
        if method.name in out:
            raise ValueError(f"method {method.name!r} is listed twice")
        out[method.name] = method
    return out


def merged(section: Mapping, overrides: Mapping) -> dict:
    """A study's config `section` with a method's `overrides` applied one level deep: a mapping
    (`survival.train`, `niche.student`) is updated key by key, any other value replaced."""
    out = dict(section)
    for key, value in overrides.items():
        both = isinstance(value, Mapping) and isinstance(section.get(key), Mapping)
        out[key] = {**section[key], **value} if both else value
    return out


def with_variants(methods: Mapping[str, M], entries: Mapping | None, reserved: Iterable[str], key: str
                  ) -> dict[str, M]:
    """`methods` and, after them in config order, the variants `entries` (config `key`) declares."""
    out = dict(methods)
    for name, entry in (entries or {}).items():
        where = f"config {key}.{name}"
        entry = dict(entry or {})
        unknown = sorted(set(entry) - {"like", "label", "config"})
        if unknown:
            raise InputError(where, f"unknown key(s) {unknown}; a method takes like, label and config")
        base = entry.get("like", name)
        if base not in out:
            raise InputError(where, f"`like: {base}` names no method (methods: {', '.join(out)})"
                             if "like" in entry else f"a new method needs `like:` one of {', '.join(out)}")
        if name not in out and (not NAME.fullmatch(name) or name in set(reserved)):
            raise InputError(where, "a method's name is letters, digits and _ (starting with a letter), and not "
                                    f"one of the study's steps {sorted(reserved)}")
        if name in out and name != base:
            raise InputError(where, f"{name} is a method already; a variant needs a new name")
        parent = out[base]
        label = entry.get("label", parent.label if name == base else name.replace("_", " "))
        out[name] = replace(parent, name=name, label=label, config=merged(parent.config, entry.get("config") or {}))
    return out
