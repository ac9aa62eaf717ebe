"""Compiled-artifact folders: `neffcache push --dir DIR` publishes a whole tree (NxD Inference's
compiled_model_path: model.pt, neuron_config.json, weights/tp<rank>_sharded_checkpoint.safetensors,
...) as one artifact; `neffcache pull --into DIR` restores it.

A folder artifact's file names are relative paths ('weights/tp0_sharded_checkpoint.safetensors'),
each checked here with the service's own rule (neffcache.file_names.check_file_path): at push, so that a
folder the service would refuse is refused before anything is uploaded; at pull, again, so that no
name can reach outside DIR even from a service that was compromised.

Pull, all or nothing:
  1. DIR already holds exactly the artifact's files, each with its size and sha256: nothing is
     downloaded or written.
  2. Otherwise the tree is assembled in a new folder beside DIR (DIR's parent/.<name>.neffcache-*,
     the same file system): files DIR already holds with the right digest are linked (or copied)
     in, the others downloaded, each hashed while streaming (client/download.py).
  3. Only once every file arrived verified and the tree holds nothing else is it renamed to DIR;
     an old DIR is first renamed aside, and removed only once the new one is in place.
  A failure at any step (a corrupt or cut transfer, a full disk, Ctrl-C) removes what the pull
  made and leaves DIR as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from neffcache.client.api import NeffcacheClient
from neffcache.client.download import download_all
from neffcache.client.pull import FileResult, Wanted, safe_file_name
from neffcache.digests import digest_of, is_bare_hex
from neffcache.errors import IntegrityFailure, InvalidNeff, UsageError
from neffcache.file_names import check_file_path, check_unique_file_names
from neffcache.spec import MAX_PUBLISHED_FILES

ASSEMBLY_MARK = ".neffcache-"  # DIR's parent/.<DIR name>.neffcache-<random>: one pull's tree, until verified


@dataclass(frozen=True)
class TreeFile:
    """One file of a folder: its path in the tree ('weights/tp0.safetensors') and on this host."""

    path: str
    local: Path
    size: int


def scan_folder(root: Path) -> list[TreeFile]:
    """Every file under `root`, sorted by path; refused (UsageError, nothing sent) when the tree
    holds something that cannot be published as it is: a symbolic link, a device or pipe, a name
    the service refuses, two names one case-insensitive file system would make one, no file, or
    more files than one artifact holds."""
    if not root.is_dir():
        raise UsageError(f"--dir {root}: not a folder")
    found: list[TreeFile] = []
    for folder, subfolders, names in os.walk(root, onerror=_unreadable):
        here = Path(folder)
        for name in sorted(subfolders + names):
            local = here / name
            relative = local.relative_to(root).as_posix()
            mode = local.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UsageError(f"--dir {root}: {relative} is a symbolic link; publish the files it stands for")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise UsageError(f"--dir {root}: {relative} is not a regular file")
            found.append(TreeFile(_checked_path(relative, str(root)), local, local.stat().st_size))
    if not found:
        raise UsageError(f"--dir {root}: holds no file")
    if len(found) > MAX_PUBLISHED_FILES:
        raise UsageError(f"--dir {root}: {len(found)} files, more than the {MAX_PUBLISHED_FILES} one artifact holds")
    try:
        check_unique_file_names([f.path for f in found])
    except ValueError as exc:
        raise UsageError(f"--dir {root}: {exc}") from None
    return sorted(found, key=lambda f: f.path)


def _unreadable(exc: OSError) -> None:
    raise UsageError(f"cannot read {exc.filename}: {exc.strerror or exc}")


def _checked_path(relative: str, where: str) -> str:
    try:
        return check_file_path(relative)
    except ValueError as exc:
        raise UsageError(f"--dir {where}: {exc}; rename it") from None


def tree_files(item: Wanted, dest: Path, outcome: str = "nothing was pulled") -> list[FileResult]:
    """The artifact's files as they land under `dest`, each path checked with the service's rule
    before anything is written (IntegrityFailure otherwise: what the service sent would be unsafe
    on disk), so that no name reaches outside `dest`."""
    if not is_bare_hex(item.key):
        raise IntegrityFailure(f"the service named an artifact key {item.key!r} that is not 64 hex characters")
    files = []
    for f in item.artifact["files"]:
        name = safe_file_name(f.get("name"), item.key, outcome, check_file_path)
        sha = str(f.get("sha256", "")).lower()
        if not is_bare_hex(sha):
            raise IntegrityFailure(f"artifact {item.key} file {name}: sha256 {sha!r} is not a digest")
        files.append(FileResult(item.key, name, dest / name, sha, int(f["size"])))
    try:
        check_unique_file_names([f["name"] for f in item.artifact["files"]])
    except ValueError as exc:
        raise IntegrityFailure(f"artifact {item.key}: {exc}; {outcome}", key=item.key) from None
    return files


def _relative(result: FileResult, root: Path) -> str:
    return result.path.relative_to(root).as_posix()


def holds_exactly(dest: Path, files: list[FileResult]) -> bool:
    """`dest` is a folder (not a link) holding exactly these files (nothing else, no link), each
    with its size and sha256."""
    from neffcache.client.specs import sha256_file  # imported when needed: specs.py imports yaml

    if dest.is_symlink() or not dest.is_dir():
        return False
    wanted = {_relative(f, dest): f for f in files}
    present: set[str] = set()
    for folder, subfolders, names in os.walk(dest):
        for name in subfolders + names:
            path = Path(folder) / name
            if path.is_symlink():
                return False
            if not path.is_dir():
                present.add(path.relative_to(dest).as_posix())
    if present != set(wanted):
        return False
    try:
        return all(f.path.stat().st_size == f.size and sha256_file(f.path) == digest_of(f.sha256)
                   for f in wanted.values())
    except OSError:
        return False


def pull_into(client: NeffcacheClient, item: Wanted, dest: Path, parallel: int,
              advance: Callable[[int], None]) -> list[FileResult]:
    """Restore the folder artifact `item` as `dest`, all or nothing (see the module docstring).
    Returns its files, each "present" (already right in `dest`) or "downloaded"."""
    files = tree_files(item, dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--into {dest} exists and is not a folder")
    if holds_exactly(dest, files):
        for f in files:
            f.status = "present"
        advance(sum(f.size for f in files))
        return files
    created = _make_parents(dest.parent)
    assembly: Path | None = None
    done = False
    try:
        assembly = Path(tempfile.mkdtemp(prefix=f".{dest.name}{ASSEMBLY_MARK}", dir=dest.parent))
        # mkdtemp makes it 0700; it becomes DIR, which the serving container (often another user)
        # reads: give it the mode mkdir would have.
        os.chmod(assembly, 0o777 & ~_umask())
        staged = _assemble(client, files, dest, assembly, parallel, advance)
        if not holds_exactly(assembly, staged):  # each file is verified already: this checks the tree's shape
            raise IntegrityFailure(f"the folder assembled for artifact {item.key} is not its tree; nothing was pulled")
        _swap_in(assembly, dest)
        done = True
    except OSError as exc:
        raise UsageError(f"cannot write beside {dest}: {exc.strerror or exc}") from None
    finally:
        if not done:
            if assembly is not None:
                shutil.rmtree(assembly, ignore_errors=True)
            for folder in reversed(created):  # innermost first
                try:
                    folder.rmdir()
                except OSError:
                    pass  # something else was put there meanwhile
    for old, new in zip(files, staged, strict=True):
        old.status = new.status
    return files


def _assemble(client: NeffcacheClient, files: list[FileResult], dest: Path, assembly: Path, parallel: int,
              advance: Callable[[int], None]) -> list[FileResult]:
    """The tree under `assembly`: each file `dest` holds right already linked in, the others
    downloaded (verified as they stream)."""
    staged = [FileResult(f.key, f.name, assembly / _relative(f, dest), f.sha256, f.size, blob=f.blob)
              for f in files]
    for old, new in zip(files, staged, strict=True):
        new.path.parent.mkdir(parents=True, exist_ok=True)
        if _reuse(old, new):
            advance(new.size)
    download_all(client, [f for f in staged if f.status != "present"], parallel, advance)
    return staged


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_parents(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, outermost first (removed again if the
    pull fails)."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot create {made}: {exc.strerror or exc}") from None
    return list(reversed(missing))


def _reuse(old: FileResult, new: FileResult) -> bool:
    """Link (or copy) a file the old DIR already holds with the right digest into the new tree."""
    from neffcache.client.download import holds

    if not holds(old):
        return False
    try:
        os.link(old.path, new.path)
    except OSError:
        shutil.copy2(old.path, new.path)
    new.status = "present"
    return True


def _swap_in(assembly: Path, dest: Path) -> None:
    """Rename the verified tree to `dest`; an old `dest` is renamed aside first, put back if the
    rename fails, and removed once the new one is in place."""
    aside: Path | None = None
    if os.path.lexists(dest):
        aside = dest.parent / f".{dest.name}{ASSEMBLY_MARK}old-{secrets.token_hex(4)}"
        os.rename(dest, aside)
    try:
        os.rename(assembly, dest)
    except BaseException:
        if aside is not None:
            os.rename(aside, dest)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def check_neffs(files: list[TreeFile]) -> None:
    """Every .neff of the folder parsed as the service will (neffcache.neff.validate), so that a
    folder it would refuse is refused before anything is uploaded (InvalidNeff, exit 5)."""
    from neffcache import neff

    for f in files:
        if not f.path.endswith(".neff"):
            continue
        try:
            with open(f.local, "rb") as opened:
                neff.validate(opened, f.size)
        except InvalidNeff as exc:
            raise InvalidNeff(f"{f.path} is not a valid NEFF: {exc.detail}; nothing was published", file=f.path) \
                from None
        except OSError as exc:
            raise UsageError(f"cannot read {f.local}: {exc.strerror or exc}") from None


def digest_files(files: list[TreeFile]) -> list[tuple[TreeFile, str]]:
    """Each file with its sha256 digest (read once)."""
    from neffcache.client.specs import sha256_file

    hashed = []
    for f in files:
        try:
            hashed.append((f, sha256_file(f.local)))
        except OSError as exc:
            raise UsageError(f"cannot read {f.local}: {exc.strerror or exc}") from None
    return hashed


def published_names(files: list[tuple[TreeFile, str]]) -> list[dict[str, str]]:
    """The `files` of POST /v1/artifacts for a folder: each path and its digest."""
    return [{"name": f.path, "digest": digest} for f, digest in files]


def is_folder_artifact(artifact: dict[str, object]) -> bool:
    """Whether an artifact's file names are safe paths, some of more than one component (it was
    published with push --dir, and is pulled with --into)."""
    names = [f.get("name") for f in artifact.get("files") or [] if isinstance(f, dict)]  # type: ignore[attr-defined]
    try:
        return all(isinstance(n, str) and check_file_path(n) for n in names) and any("/" in str(n) for n in names)
    except ValueError:
        return False
