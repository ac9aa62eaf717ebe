"""The rules for the names of an artifact's files: each becomes a file wherever the artifact is
pulled, so the service checks them at publish and `neffcache pull` again before writing
anything, with these same functions. Pure, standard library only."""

from __future__ import annotations

import re

# A published file's name: it becomes a file, DEST/<key>/<name>, wherever the artifact is pulled,
# so it must mean the same plain file on every file system. 1 to 128 of A-Z a-z 0-9 _ . -
# (no separator, NUL, control character, space or other character a shell or a file system reads
# specially); not starting with "." (".", "..", hidden files) or "-" (read as an option by
# commands given the name); not ending with "." (Windows drops trailing dots: "a." is "a"); and
# not a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, whatever follows a dot).
FILE_NAME_PATTERN = (
    r"^(?![.-])"
    r"(?!(?:[Cc][Oo][Nn]|[Pp][Rr][Nn]|[Aa][Uu][Xx]|[Nn][Uu][Ll]|[Cc][Oo][Mm][0-9]|[Ll][Pp][Tt][0-9])(?:\.|$))"
    r"[A-Za-z0-9_.-]{0,127}[A-Za-z0-9_-]$"
)
FILE_NAME_RULE = ("1 to 128 of A-Z a-z 0-9 _ . -, not starting with '.' or '-', not ending with '.', "
                  "and not a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9)")
_FILE_NAME = re.compile(FILE_NAME_PATTERN)


def check_file_name(name: str) -> str:
    """`name` itself when it is a safe file name (FILE_NAME_PATTERN), else ValueError. The one
    rule: the service checks it at publish, and `neffcache pull` again before writing anything."""
    if _FILE_NAME.fullmatch(name) is None:
        raise ValueError(f"{name[:40]!r} is not a safe file name: {FILE_NAME_RULE}")
    return name


def check_unique_file_names(names: list[str]) -> list[str]:
    """`names` itself when no two of them are one file on a case-insensitive file system (macOS,
    Windows), and no file's path is also another's folder ('weights' and 'weights/tp0.safetensors'),
    else ValueError."""
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(names):
        seen: dict[str, str] = {}
        same = next((seen[low], name) for name, low in zip(names, lowered, strict=True)
                    if seen.setdefault(low, name) is not name)
        raise ValueError(f"file names must be unique (ignoring case), got {same[0]!r} and {same[1]!r}")
    folders = {path.rsplit("/", depth)[0] for path in lowered for depth in range(1, path.count("/") + 1)}
    both = sorted(n for n in names if n.lower() in folders)
    if both:
        raise ValueError(f"{both[0]!r} is both a file and a folder of other files")
    return names


# A published file's relative path, for an artifact that is a folder (`neffcache push --dir`):
# '/'-separated components, each a safe file name (FILE_NAME_PATTERN), so no '..', '.', empty
# component, absolute path or backslash; at most MAX_FILE_PATH characters in all (the database
# column's size). A plain file name is a path of one component, so every name valid before is
# valid as a path.
MAX_FILE_PATH = 255
_PATH_COMPONENT = (
    r"(?![.-])"
    r"(?!(?:[Cc][Oo][Nn]|[Pp][Rr][Nn]|[Aa][Uu][Xx]|[Nn][Uu][Ll]|[Cc][Oo][Mm][0-9]|[Ll][Pp][Tt][0-9])(?:[./]|$))"
    r"[A-Za-z0-9_.-]{0,127}[A-Za-z0-9_-]"
)
FILE_PATH_PATTERN = rf"^(?=.{{1,{MAX_FILE_PATH}}}$){_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$"
FILE_PATH_RULE = (f"a relative path of at most {MAX_FILE_PATH} characters whose '/'-separated components are each "
                  f"a safe file name ({FILE_NAME_RULE})")


def check_file_path(path: str) -> str:
    """`path` itself when it is a safe relative file path (FILE_PATH_PATTERN), else ValueError
    naming the component at fault. The service checks it at publish, `neffcache pull --into` again
    before writing anything."""
    if len(path) > MAX_FILE_PATH:
        raise ValueError(f"{path[:40]!r}... is longer than {MAX_FILE_PATH} characters")
    for component in path.split("/"):
        try:
            check_file_name(component)
        except ValueError:
            raise ValueError(f"{path[:80]!r} is not a safe relative path: component {component[:40]!r} is not "
                             f"a safe file name ({FILE_NAME_RULE}; no empty component, '.' or '..')") from None
    return path
