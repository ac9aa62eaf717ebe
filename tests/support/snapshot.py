"""What a folder holds, to compare before and after: a failed pull must leave DEST as it found it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under `root` (itself included, {} when absent): its kind, and a file's bytes and
    modification time or a link's target."""
    if not os.path.lexists(root):
        return {}
    found: dict[str, Any] = {".": "dir"}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return found
