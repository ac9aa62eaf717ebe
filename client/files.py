"""The client's own files (spec files, lock files, restored cache entries): read with one readable
error, and written so that a reader never sees half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from neffcache.errors import UsageError


def read_text(path: Path, what: str) -> str:
    """The file's text; a missing or unreadable file is a UsageError naming `what` and the path."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc})") from None


def write_atomically(path: Path, data: bytes, what: str = "") -> None:
    """Write via a temp file in the same folder, fsynced, then renamed over `path` (its folder is
    made if missing). Any failure is a UsageError naming `what` and the path."""
    temp = path.parent / f".{path.name}.part-{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        named = f"{what} {path}" if what else str(path)
        raise UsageError(f"cannot write {named}: {exc.strerror or exc}") from None
    finally:
        try:
            temp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder is a file: nothing was written there
            pass


def sync_folder(path: Path) -> None:
    """Make renames in a folder durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
