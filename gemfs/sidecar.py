"""Render a File as the bytes of its read-only `NAME.meta.json` sidecar."""

from __future__ import annotations

import json

from gemfs.model import FileRecord

SUFFIX = ".meta.json"


def render(record: FileRecord) -> bytes:
    """The File resource as the API writes it (camelCase), pretty-printed, UTF-8, newline-ended."""
    return (json.dumps(record.api, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def split(name: str) -> str | None:
    """The file name a sidecar name belongs to, or None when `name` is not a sidecar name."""
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        return name[: -len(SUFFIX)]
    return None
