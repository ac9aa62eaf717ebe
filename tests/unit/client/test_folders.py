"""Compiled-artifact folders (client/folders.py): what `push --dir` takes from a folder, which
paths `pull --into` accepts from a service, and the tree assembled beside DIR and renamed into
place only when whole (a failed pull leaves DIR as it found it).

The same through the command against the running stack is in tests/stack/test_cli_folders.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from neffcache.client.folders import holds_exactly, is_folder_artifact, pull_into, scan_folder, tree_files
from neffcache.client.pull import Wanted
from neffcache.errors import IntegrityFailure, UsageError
from neffcache.file_names import MAX_FILE_PATH, check_file_name, check_file_path
from tests.support.snapshot import snapshot

KEY = hashlib.sha256(b"folder artifact").hexdigest()
# As NxD Inference writes a compiled_model_path (application_base.compile: model.pt, the config,
# weights/tp<rank>_sharded_checkpoint.safetensors) with the NEFFs its ModelBuilder compiled per
# submodel and bucket (<tag>/_tp0_bk<n>/graph.neff).
NXDI_TREE = {
    "model.pt": b"torchscript nxd model" * 100,
    "neuron_config.json": b'{"neuron_config": {"tp_degree": 2}}',
    "weights/tp0_sharded_checkpoint.safetensors": os.urandom(4096),
    "weights/tp1_sharded_checkpoint.safetensors": os.urandom(4096),
    "context_encoding_model/_tp0_bk0/graph.neff": b"NEFF cte",
    "token_generation_model/_tp0_bk0/graph.neff": b"NEFF tkg 0",
    "token_generation_model/_tp0_bk1/graph.neff": b"NEFF tkg 1",
}


def write_tree(root: Path, tree: dict[str, bytes]) -> Path:
    for name, data in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# --- the path rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [*NXDI_TREE, "a", "a/b", "x" * 128 + "/" + "y" * 126])
def test_relative_paths_of_safe_names_are_safe(path: str) -> None:
    assert check_file_path(path) == path


@pytest.mark.parametrize("path", ["", "/", "/etc/passwd", "../x", "a/../b", "a/..", "./a", "a/./b", "a//b", "a/",
                                  "a\\b", "C:/x", "a/.hidden", "a/-rf", "CON/x", "a/nul.txt", "a/b.", "a/b c",
                                  "a/" + "x" * 129, "/".join(["abcd"] * 52)])
def test_anything_else_is_refused_naming_the_component(path: str) -> None:
    with pytest.raises(ValueError, match="safe relative path|longer than"):
        check_file_path(path)


def test_a_plain_name_stays_one_component() -> None:
    assert len("/".join(["abcd"] * 52)) > MAX_FILE_PATH
    with pytest.raises(ValueError):
        check_file_name("a/b")  # what --dest pulls into DEST/<key>/<name>: no separator there


# --- push: what a folder may hold --------------------------------------------------------------------
def test_a_folder_as_nxd_inference_writes_it_is_scanned_whole(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "compiled", NXDI_TREE)
    (root / "empty_folder").mkdir()  # a folder holding nothing is not a file: not published
    found = scan_folder(root)
    assert [f.path for f in found] == sorted(NXDI_TREE)
    assert {f.path: f.size for f in found} == {n: len(d) for n, d in NXDI_TREE.items()}


@pytest.mark.parametrize(("make", "why"), [
    (lambda root: (root / "link.neff").symlink_to(root / "model.pt"), "symbolic link"),
    (lambda root: (root / "weights" / ".hidden").write_bytes(b"x"), "not a safe relative path"),
    (lambda root: (root / "Model.PT").write_bytes(b"x"), r"\(ignoring case\), got 'Model.PT' and 'model.pt'"),
    (lambda root: os.mkfifo(root / "pipe"), "not a regular file"),
])
def test_a_folder_that_cannot_be_published_as_it_is_is_refused(tmp_path: Path, make: Any, why: str) -> None:
    root = write_tree(tmp_path / "compiled", NXDI_TREE)
    make(root)
    with pytest.raises(UsageError, match=why):
        scan_folder(root)


def test_an_empty_folder_or_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no file"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a folder"):
        scan_folder(tmp_path / "file")


# --- pull: what a service may send ------------------------------------------------------------------
def _artifact(tree: dict[str, bytes]) -> dict[str, Any]:
    return {"key": KEY, "manifest": {"runtime": {"name": "neuron-runtime", "version": "2.33.10.0"}},
            "files": [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in tree.items()]}


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "weights/../../escape", "a//b", "weights/",
                                  "weights\\..\\x", "weights/.ssh"])
def test_a_path_that_would_leave_dir_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    service = FakeService({**NXDI_TREE, name: b"payload"})
    dest = tmp_path / "pulled"
    with pytest.raises(IntegrityFailure, match="unsafe on disk, nothing was pulled"):
        pull_into(service, Wanted(KEY, service.artifact), dest, 4, lambda n: None)  # type: ignore[arg-type]
    assert service.opened == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("names", [["weights", "weights/tp0.safetensors"], ["model.pt", "MODEL.pt"],
                                   ["Weights/a", "weights/a"]])
def test_paths_that_collide_on_some_disk_are_refused(names: list[str]) -> None:
    with pytest.raises(IntegrityFailure, match="nothing was pulled"):
        tree_files(Wanted(KEY, _artifact(dict.fromkeys(names, b"x"))), Path("/nowhere"))


def test_only_safe_paths_of_several_components_make_a_folder_artifact() -> None:
    assert is_folder_artifact(_artifact(NXDI_TREE))
    assert not is_folder_artifact(_artifact({"model.neff": b"x", "compile.log": b"y"}))
    assert not is_folder_artifact(_artifact({"model.neff": b"x", "/etc/passwd": b"y"}))


# --- pull: the tree, all or nothing -------------------------------------------------------------------
class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers: dict[str, str] = {}

    def iter_raw(self) -> Iterator[bytes]:
        yield self.data[: len(self.data) // 2]
        yield self.data[len(self.data) // 2:]


class FakeService:
    """What pull_into asks of NeffcacheClient: open_file, an artifact's file by its path.
    `served` replaces the bytes of one digest, as a corrupted object store would; `opened`
    lists the digests of the files opened."""

    def __init__(self, tree: dict[str, bytes]) -> None:
        self.artifact = _artifact(tree)
        self.digests = {name: "sha256:" + hashlib.sha256(d).hexdigest() for name, d in tree.items()}
        self.blobs = {self.digests[name]: d for name, d in tree.items()}
        self.served: dict[str, bytes] = {}
        self.opened: list[str] = []

    @contextmanager
    def open_file(self, key: str, name: str) -> Iterator[tuple[_Response, str | None]]:
        assert key == KEY
        digest = self.digests[name]
        self.opened.append(digest)
        yield _Response(self.served.get(digest, self.blobs[digest])), None


def pull(service: FakeService, dest: Path) -> list[Any]:
    return pull_into(service, Wanted(KEY, service.artifact), dest, 4, lambda n: None)  # type: ignore[arg-type]


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_tree_lands_whole_and_a_second_pull_downloads_nothing(tmp_path: Path) -> None:
    service = FakeService(NXDI_TREE)
    dest = tmp_path / "models" / "llama"  # its parent is made too
    assert {f.status for f in pull(service, dest)} == {"downloaded"}
    assert tree_of(dest) == NXDI_TREE and sorted(os.listdir(tmp_path / "models")) == ["llama"]
    (tmp_path / "made").mkdir()  # DIR reads like any folder (the serving container is often another user)
    assert dest.stat().st_mode == (tmp_path / "made").stat().st_mode
    before, service.opened = snapshot(dest), []
    assert {f.status for f in pull(service, dest)} == {"present"}
    assert service.opened == [] and snapshot(dest) == before  # left alone: not even rewritten


def test_a_corrupt_object_leaves_a_new_dir_absent(tmp_path: Path) -> None:
    service = FakeService(NXDI_TREE)
    service.served["sha256:" + hashlib.sha256(NXDI_TREE["weights/tp1_sharded_checkpoint.safetensors"]).hexdigest()] \
        = os.urandom(4096)
    with pytest.raises(IntegrityFailure, match="tp1_sharded_checkpoint.safetensors"):
        pull(service, tmp_path / "models" / "llama")
    assert list(tmp_path.iterdir()) == []  # neither DIR, nor its parent, nor a half-assembled tree


def test_a_corrupt_object_leaves_an_old_dir_exactly_as_it_was(tmp_path: Path) -> None:
    dest = write_tree(tmp_path / "llama", {**NXDI_TREE, "model.pt": b"an older build", "stale.txt": b"old"})
    before = snapshot(dest)
    service = FakeService(NXDI_TREE)
    service.served["sha256:" + hashlib.sha256(NXDI_TREE["model.pt"]).hexdigest()] = b"x" * len(NXDI_TREE["model.pt"])
    with pytest.raises(IntegrityFailure):
        pull(service, dest)
    assert snapshot(dest) == before and sorted(os.listdir(tmp_path)) == ["llama"]


def test_a_dir_that_differs_is_replaced_whole_reusing_the_right_files(tmp_path: Path) -> None:
    dest = write_tree(tmp_path / "llama", {**NXDI_TREE, "model.pt": b"an older build", "stale.txt": b"old"})
    service = FakeService(NXDI_TREE)
    results = {f.path.relative_to(dest).as_posix(): f.status for f in pull(service, dest)}
    assert results["model.pt"] == "downloaded"
    assert {s for n, s in results.items() if n != "model.pt"} == {"present"}  # linked in, not fetched
    assert service.opened == ["sha256:" + hashlib.sha256(NXDI_TREE["model.pt"]).hexdigest()]
    assert tree_of(dest) == NXDI_TREE  # the file the artifact does not have is gone with the old tree
    assert sorted(os.listdir(tmp_path)) == ["llama"]


def test_holds_exactly_wants_nothing_more_and_nothing_less(tmp_path: Path) -> None:
    dest = write_tree(tmp_path / "llama", NXDI_TREE)
    files = tree_files(Wanted(KEY, _artifact(NXDI_TREE)), dest)
    assert holds_exactly(dest, files)
    (dest / "weights" / "extra").write_bytes(b"x")
    assert not holds_exactly(dest, files)
    (dest / "weights" / "extra").unlink()
    (dest / "model.pt").write_bytes(b"same size?")
    assert not holds_exactly(dest, files)
