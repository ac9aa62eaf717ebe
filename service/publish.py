"""Publishing an artifact compiled elsewhere (`neffcache push --from-neuron-cache`).

The files were uploaded as blobs (digest-verified on the way in); every NEFF among them is
checked the way a worker checks its own output, and the artifact row is written last.
Artifacts are immutable: publishing a key again with the same files is a no-op, with other
files a conflict.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from neffcache import neff
from neffcache.db.models import Artifact, ArtifactFile, Blob
from neffcache.digests import bare_hex
from neffcache.errors import ArtifactExists, BlobMissing, CorruptObject, InvalidNeff
from neffcache.service.cache import Outcome, artifact_hits, resolve_key
from neffcache.service.context import ServiceContext
from neffcache.service.views import artifact_view
from neffcache.spec import PublishRequest


def _same_files(artifact: Artifact, wanted: dict[str, str]) -> bool:
    return {f.name: f.digest for f in artifact.files} == wanted


def _neff_summary(ctx: ServiceContext, name: str, digest: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="neffcache-publish-") as tmp:
        local = Path(tmp) / "file.neff"
        if not ctx.store.fetch_to_path(bare_hex(digest), local):
            raise CorruptObject(f"files: {name} ({digest}) is missing from the object store")
        try:
            with open(local, "rb") as f:
                return neff.validate(f, local.stat().st_size).summary()
        except InvalidNeff as exc:
            raise InvalidNeff(f"files: {name} is not a valid NEFF: {exc.detail}", file=name) from None


def publish(ctx: ServiceContext, request: PublishRequest, caller: str | None) -> Outcome:
    wanted = {f.name: f.digest for f in request.files}
    with ctx.db.session() as session:
        resolved, spec_out, manifest, key = resolve_key(ctx, request.spec)
        for label, digest in [("spec.model.digest", resolved.model.digest), *wanted.items()]:
            if session.get(Blob, digest) is None:
                raise BlobMissing(f"{label}: blob {digest} has not been uploaded (PUT /v1/blobs/{digest} first)")
        sizes = {name: session.get(Blob, digest).size for name, digest in wanted.items()}  # type: ignore[union-attr]
        existing = session.get(Artifact, key)
    if existing is not None:
        return _existing(ctx, existing, wanted, key)
    headers = {name: _neff_summary(ctx, name, digest) for name, digest in wanted.items() if name.endswith(".neff")}
    with ctx.db.session() as session:
        artifact = Artifact.from_manifest(
            key, manifest,
            [ArtifactFile(name=n, digest=d, size=sizes[n], neff=headers.get(n)) for n, d in wanted.items()],
            compile_seconds=request.compile_seconds, job_id=None,
            annotations=request.annotations, origin_token=caller or "anonymous",
        )
        try:
            with session.begin_nested():
                session.add(artifact)
            winner = None
        except IntegrityError:  # published concurrently: judge against the winner
            winner = session.get(Artifact, key)
    if winner is not None:
        return _existing(ctx, winner, wanted, key)
    return Outcome(201, {"status": "published", "key": key, "spec": spec_out,
                         "artifact": artifact_view(artifact, {"lookup_hits": 0, "downloads": 0})})


def _existing(ctx: ServiceContext, artifact: Artifact, wanted: dict[str, str], key: str) -> Outcome:
    """The answer for a key published already (called with no session open: artifact_hits)."""
    if not _same_files(artifact, wanted):
        raise ArtifactExists(
            f"artifact {key} is published already with other files; artifacts are immutable",
            key=key, published={f.name: f.digest for f in artifact.files},
        )
    return Outcome(
        200, {"status": "exists", "key": key, "artifact": artifact_view(artifact, artifact_hits(ctx, key))}
    )
