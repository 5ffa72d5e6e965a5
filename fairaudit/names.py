"""Names that become file and folder names (store partitions, report files, pruned models)."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 96) -> str:
    """A file-system-safe partition value: no separators, no leading dots, bounded length."""
    cleaned = _UNSAFE.sub("-", text.replace("/", "--")).strip(".-") or "unnamed"
    return cleaned[:limit]
