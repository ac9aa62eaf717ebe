"""client/lockfile.py in process: a lock written from resolved artifacts reads back as exactly
those artifacts and files; a corrupt or hand-edited lock is refused in one line naming the file and
the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neffcache.client.lockfile import (
    LOCK_VERSION,
    LockedArtifact,
    LockedFile,
    dump,
    lock_document,
    print_lock,
    read_lock,
    write_lock,
)
from neffcache.client.pull import Wanted
from neffcache.errors import EXIT_USAGE, UsageError

KEY_A = "a1" * 32
KEY_B = "b2" * 32
NEFF_SHA = "0f" * 32
LOG_SHA = "1e" * 32
HLO = "sha256:" + "2d" * 32
SERVICE = "http://neffcache:8080"


def _artifact(key: str, files: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An artifact as GET /v1/artifacts/{key} answers it (the fields the lock reads)."""
    return {
        "key": key,
        "manifest": {
            "target": "trn2",
            "compiler": {"name": "neuronx-cc", "version": "2.27.5334.0+2d6a2ba2b", "flags": ["--optlevel=2"]},
            "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"},
            "model": {"format": "hlo", "digest": HLO},
        },
        "files": files,
        "annotations": annotations or {},
    }


@pytest.fixture
def wanted() -> list[Wanted]:
    return [
        Wanted(KEY_A, _artifact(KEY_A, [
            {"name": "model.neff", "sha256": NEFF_SHA.upper(), "digest": f"sha256:{NEFF_SHA}", "size": 1234},
            {"name": "compile.log", "sha256": LOG_SHA, "digest": f"sha256:{LOG_SHA}", "size": 56},
        ], {"neuron_cache.module": "MODULE_1+abc", "team": "not kept"}),
            requested_as=["deploy.yaml spec 1 (encoder)"], names=["encoder"]),
        Wanted(KEY_B, _artifact(KEY_B, [{"name": "model.neff", "sha256": LOG_SHA, "size": 0}]),
               requested_as=[KEY_B]),
    ]


def test_a_lock_reads_back_as_what_was_locked(tmp_path: Path, wanted: list[Wanted]) -> None:
    doc = lock_document(SERVICE, wanted)
    path = tmp_path / "deploy" / "deploy.lock.json"  # the folder is made
    write_lock(path, doc)
    assert json.loads(path.read_text()) == doc
    assert path.read_text() == dump(doc) and dump(doc).endswith("}\n")
    assert [p.name for p in path.parent.iterdir()] == ["deploy.lock.json"]  # no temp file left

    assert read_lock(path) == [
        LockedArtifact(
            key=KEY_A,
            files=[LockedFile("model.neff", f"sha256:{NEFF_SHA}", 1234),
                   LockedFile("compile.log", f"sha256:{LOG_SHA}", 56)],
            names=["encoder"], model_digest=HLO, annotations={"neuron_cache.module": "MODULE_1+abc"},
        ),
        LockedArtifact(key=KEY_B, files=[LockedFile("model.neff", f"sha256:{LOG_SHA}", 0)], names=[],
                       model_digest=HLO, annotations={}),
    ]


def test_the_document_records_what_people_read(wanted: list[Wanted]) -> None:
    doc = lock_document(SERVICE, wanted)
    assert doc["lock_version"] == LOCK_VERSION and doc["service"] == SERVICE
    first = doc["artifacts"][0]
    assert first["target"] == "trn2" and first["compiler"]["version"] == "2.27.5334.0+2d6a2ba2b"
    assert first["runtime"] == {"name": "neuron-runtime", "version": "2.34.10.0"}
    assert first["requested_as"] == ["deploy.yaml spec 1 (encoder)"]
    assert first["files"][0] == {"name": "model.neff", "digest": f"sha256:{NEFF_SHA}", "size": 1234,
                                 "path": f"{KEY_A}/model.neff"}  # the announced hex, lowercased


def test_print_lock_writes_the_same_text(capsys: pytest.CaptureFixture[str], wanted: list[Wanted]) -> None:
    doc = lock_document(SERVICE, wanted)
    print_lock(doc)
    assert capsys.readouterr().out == dump(doc)


def test_a_lock_that_cannot_be_written_is_one_line(tmp_path: Path, wanted: list[Wanted]) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError) as caught:
        write_lock(tmp_path / "file" / "deploy.lock.json", lock_document(SERVICE, wanted))
    assert caught.value.detail.startswith(f"cannot write the lock file {tmp_path / 'file' / 'deploy.lock.json'}: ")


def _good() -> dict[str, Any]:
    return {"lock_version": 1, "artifacts": [
        {"key": KEY_A, "files": [{"name": "model.neff", "digest": f"sha256:{NEFF_SHA}", "size": 1}]},
    ]}


def _edited(change) -> str:
    doc = _good()
    change(doc)
    return json.dumps(doc)


def _file(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["artifacts"][0]["files"][0]


# (what is wrong, the file's text, the field named, words of the reason)
REFUSED = [
    ("not-json", "{not json", "not valid JSON", ""),
    ("not-utf8", b"\xff\xfe{}", "cannot read it", ""),
    ("a-list", "[]", "top level", "lock_version and artifacts"),
    ("no-version", _edited(lambda d: d.pop("lock_version")), "lock_version", "is this a neffcache lock file?"),
    ("version-as-text", _edited(lambda d: d.update(lock_version="1")), "lock_version", "not an integer"),
    ("version-as-bool", _edited(lambda d: d.update(lock_version=True)), "lock_version", "not an integer"),
    ("newer-version", _edited(lambda d: d.update(lock_version=LOCK_VERSION + 1)), "lock_version", "upgrade neffcache"),
    ("no-artifacts", _edited(lambda d: d.pop("artifacts")), "artifacts", "non-empty list"),
    ("empty-artifacts", _edited(lambda d: d.update(artifacts=[])), "artifacts", "non-empty list"),
    ("artifact-not-object", _edited(lambda d: d["artifacts"].append("x")), "artifacts[1]", "must be an object"),
    ("short-key", _edited(lambda d: d["artifacts"][0].update(key=KEY_A[:-1])), "artifacts[0].key",
     "not an artifact key"),
    ("uppercase-key", _edited(lambda d: d["artifacts"][0].update(key=KEY_A.upper())), "artifacts[0].key", ""),
    ("key-with-newline", _edited(lambda d: d["artifacts"][0].update(key=KEY_A + "\n")), "artifacts[0].key", ""),
    ("key-twice", _edited(lambda d: d["artifacts"].append(dict(d["artifacts"][0]))), "artifacts[1].key",
     "listed twice"),
    ("no-files", _edited(lambda d: d["artifacts"][0].update(files=[])), "artifacts[0].files", "non-empty list"),
    ("file-not-object", _edited(lambda d: d["artifacts"][0]["files"].append(3)), "artifacts[0].files[1]",
     "name, digest and size"),
    ("no-name", _edited(lambda d: _file(d).pop("name")), "artifacts[0].files[0].name", "missing"),
    ("name-twice", _edited(lambda d: d["artifacts"][0]["files"].append(dict(_file(d)))),
     "artifacts[0].files[1].name", "listed twice"),
    ("bare-digest", _edited(lambda d: _file(d).update(digest=NEFF_SHA)), "artifacts[0].files[0].digest",
     "is not sha256:<64 lowercase hex>"),
    ("edited-digest", _edited(lambda d: _file(d).update(digest="sha256:" + NEFF_SHA[:-1] + "g")),
     "artifacts[0].files[0].digest", "is not sha256:<64 lowercase hex>"),
    ("digest-with-newline", _edited(lambda d: _file(d).update(digest=f"sha256:{NEFF_SHA}\n")),
     "artifacts[0].files[0].digest", ""),
    ("negative-size", _edited(lambda d: _file(d).update(size=-1)), "artifacts[0].files[0].size", "not a byte count"),
    ("size-as-text", _edited(lambda d: _file(d).update(size="1")), "artifacts[0].files[0].size", "not a byte count"),
    ("size-as-bool", _edited(lambda d: _file(d).update(size=True)), "artifacts[0].files[0].size", "not a byte count"),
]


@pytest.mark.parametrize(("text", "field", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_corrupt_or_edited_lock_is_refused_naming_the_field(tmp_path: Path, text: str | bytes, field: str,
                                                              reason: str) -> None:
    path = tmp_path / "deploy.lock.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(UsageError) as caught:
        read_lock(path)
    message = caught.value.detail
    assert message.startswith(f"lock file {path}: {field}"), message
    assert reason in message and "\n" not in message.strip()
    assert caught.value.exit_code == EXIT_USAGE


def test_the_unedited_lock_of_the_table_reads(tmp_path: Path) -> None:
    """The table above edits this lock; unedited, it is accepted."""
    path = tmp_path / "deploy.lock.json"
    path.write_text(json.dumps(_good()))
    assert read_lock(path) == [LockedArtifact(KEY_A, [LockedFile("model.neff", f"sha256:{NEFF_SHA}", 1)])]


def test_a_missing_lock_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        read_lock(tmp_path / "deploy.lock.json")
    assert caught.value.detail == f"lock file {tmp_path / 'deploy.lock.json'} does not exist"


def test_what_only_people_read_may_be_missing_or_odd(tmp_path: Path) -> None:
    """pull --lock needs only lock_version and each artifact's key and files; the rest is kept
    when well-formed and dropped when not."""
    doc = _good()
    doc["artifacts"][0].update(model="not a mapping", names=["a", 3], annotations={"neuron_cache.x": "y", "n": 1})
    path = tmp_path / "deploy.lock.json"
    path.write_text(json.dumps(doc))
    (locked,) = read_lock(path)
    assert locked.model_digest is None and locked.names == ["a"] and locked.annotations == {"neuron_cache.x": "y"}
