"""Dataset names, tags and `name@version` references.

Names become directory names and SQL identifiers, so they are restricted to letters, digits, `-`, `_`
and `.`, starting with a letter or digit (no hidden files, no `..`). Tags follow the same rule but must
not be all digits, so `name@3` always means version 3 and never a tag called "3"."""
from __future__ import annotations

import re

from catalog.errors import InvalidName

MAX_NAME_LEN = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TAG = re.compile(r"[A-Za-z0-9._-]+")

Version = int | str | None  # int version, tag, or None for latest


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName(name, "a dataset name must be a non-empty string")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(name, f"longer than {MAX_NAME_LEN} characters")
    if not _NAME.fullmatch(name):
        raise InvalidName(name, "use letters, digits, '-', '_' and '.', starting with a letter or digit")
    return name


def validate_tag(tag: object) -> str:
    if not isinstance(tag, str) or not tag:
        raise InvalidName(tag, "a tag must be a non-empty string")
    if len(tag) > MAX_NAME_LEN:
        raise InvalidName(tag, f"longer than {MAX_NAME_LEN} characters")
    if not _TAG.fullmatch(tag):
        raise InvalidName(tag, "tags use letters, digits, '-', '_' and '.'")
    if tag.isdigit():
        raise InvalidName(tag, "a tag cannot be all digits (it would read as a version number)")
    return tag


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """"name@3" -> ("name", 3); "name@best" -> ("name", "best"); "name" -> ("name", None)."""
    if not isinstance(ref, str) or not ref:
        raise InvalidName(ref, "a reference must be a non-empty string like 'name' or 'name@3'")
    name, sep, version = ref.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    if version.isdigit():
        return name, int(version)
    if not version:
        raise InvalidName(ref, "nothing after '@' (expected a version number or a tag)")
    if "@" in version:
        raise InvalidName(ref, "more than one '@'")
    return name, validate_tag(version)


def format_ref(name: str, version: int | str | None) -> str:
    return name if version is None else f"{name}@{version}"
