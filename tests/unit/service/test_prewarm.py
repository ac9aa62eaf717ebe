"""POST /v1/prewarm in process (service.prewarm): the service on SQLite migrated by Alembic, the
session's Redis, workers registered as rows (a live one for release B, for a newer torch and for
a newer torch-neuronx; none for release C). Each source is re-keyed for the new toolchain and
decided as a compile request would be: ready, compiling, failed (with the message and log tail),
missing (asked without submitting), unbuildable (no live worker), refused (that entry's error)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from neffcache import tokens
from neffcache.db.models import Artifact, ArtifactFile, Blob, CacheEvent, Job, Worker, utcnow
from neffcache.key import cache_key, key_for_spec
from neffcache.queue import connect_redis, queue_for_manifest, queues_for_toolchain
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from neffcache.spec import CompileSpec
from neffcache.toolchain import NEURON_TARGETS
from tests.support.api import error_body
from tests.support.in_process import service_settings
from tests.support.rq_keys import delete_run_keys, run_leftovers

Spec = dict[str, Any]
# Three SDK releases of neffcache/data/sdk_releases.json (neuronx-cc, its runtime), and one of none.
A, RT_A = "2.25.3371.0", "2.32.31.0"  # SDK 2.30.0
A2, RT_A2 = "2.26.6360.0", "2.33.10.0"  # SDK 2.31.1
B, RT_B = "2.27.5334.0+2d6a2ba2b", "2.34.10.0"  # SDK 2.32.0: a live worker has it
C = "2.24.8799.0"  # SDK 2.29.1: no worker has it
UNRELEASED = "2.99.1.0"  # in no SDK release, and no worker has it
TORCH_OLD, TORCH_NEW = "9.8.0", "9.9.0"  # inductor: a live worker has TORCH_NEW
TNX_OLD = "2.9.0.2.14.27725"  # torch-neuronx of SDK 2.30.0 (with neuronx-cc A)
TNX_NEW = "2.9.0.2.15.32035"  # of SDK 2.31.1 (with neuronx-cc A2): a live worker has it
NAMESPACE = "team-a"


def fresh_digest() -> str:
    return "sha256:" + uuid.uuid4().hex * 2


def neuron(version: str | None, runtime: str | None, digest: str, flags: list[str] | None = None,
           target: str = "trn1", namespace: str = NAMESPACE) -> Spec:
    return {"model": {"format": "hlo", "digest": digest},
            "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}], "target": target,
            "compiler": {"name": "neuronx-cc", "version": version, "flags": ["-O2"] if flags is None else flags},
            "runtime": {"name": "neuron-runtime", "version": runtime}, "namespace": namespace}


def inductor(version: str, digest: str) -> Spec:
    return {"model": {"format": "torch-export", "digest": digest},
            "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}], "target": "cpu",
            "compiler": {"name": "inductor", "version": version, "flags": ["max_autotune=true"]},
            "runtime": {"name": "torch", "version": version}, "namespace": NAMESPACE}


def torch_neuronx(digest: str) -> Spec:
    return {"model": {"format": "torch-export", "digest": digest},
            "inputs": [{"name": "input_ids", "shape": [1, 8], "dtype": "int64"}], "target": "inf2",
            "compiler": {"name": "torch-neuronx", "version": TNX_OLD, "torch_version": "2.9.0",
                         "neuronx_cc_version": A, "flags": ["-O2"], "inline_weights_to_neff": False},
            "runtime": {"name": "neuron-runtime", "version": RT_A}, "namespace": NAMESPACE}


def manifest_of(spec: Spec) -> tuple[dict[str, Any], str]:
    return key_for_spec(CompileSpec.model_validate(spec).model_dump(mode="json"))


@dataclass
class Farm:
    client: TestClient
    ctx: ServiceContext
    tokens: dict[str, str]

    def post(self, body: dict[str, Any], token: str = "write") -> Any:
        return self.client.post("/v1/prewarm", json=body, headers={"Authorization": f"Bearer {self.tokens[token]}"})

    def prewarm(self, **body: Any) -> dict[str, Any]:
        r = self.post(body)
        assert r.status_code == 200, r.text
        return r.json()

    def publish(self, spec: Spec, manifest: dict[str, Any] | None = None) -> str:
        """The artifact of a fully versioned spec (or of `manifest` as it is), its model uploaded."""
        manifest = manifest or manifest_of(spec)[0]
        key = cache_key(manifest)
        with self.ctx.db.session() as session:
            if session.get(Blob, manifest["model"]["digest"]) is None:
                session.add(Blob(digest=manifest["model"]["digest"], size=1))
            session.add(Artifact.from_manifest(
                key, manifest, [ArtifactFile(name="model.neff", digest=fresh_digest(), size=2048, neff=None)],
                compile_seconds=30.0, job_id=None, annotations=None, origin_token="release-bot"))
        return key

    def fail(self, spec: Spec, message: str, log_tail: str) -> str:
        """A remembered compile_error of a spec's key (as a worker records it)."""
        manifest, key = manifest_of(spec)
        with self.ctx.db.session() as session:
            session.add(Job(id=str(uuid.uuid4()), key=key, manifest=manifest, namespace=manifest["namespace"],
                            queue=queue_for_manifest(self.ctx.settings.queue_prefix, manifest), state="failed",
                            failure_class="compile_error", message=message, log_tail=log_tail, attempts=1,
                            max_attempts=2, created_at=utcnow(), finished_at=utcnow()))
        return key

    def jobs_of(self, key: str) -> list[Job]:
        with self.ctx.db.session() as session:
            found = list(session.scalars(select(Job).where(Job.key == key)))
            for job in found:
                session.expunge(job)
            return found


def add_worker(ctx: ServiceContext, name: str, version: str, runtime_name: str, runtime: str,
               targets: tuple[str, ...], isas: tuple[str, ...] = (), packages: dict[str, str] | None = None) -> None:
    queues = queues_for_toolchain(ctx.settings.queue_prefix, name, version, targets, isas, packages)
    with ctx.db.session() as session:
        session.add(Worker(id=f"{name}-{version}", host="h", pid=1, compiler_name=name, compiler_version=version,
                           runtime_name=runtime_name, runtime_version=runtime,
                           toolchain={"targets": list(targets), "isas": list(isas), "packages": packages or {}},
                           queues=queues, state="idle", started_at=utcnow(), last_heartbeat=utcnow()))


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Farm]:
    prefix = f"neffcache-unit-{uuid.uuid4().hex[:10]}"
    # Workers heard from an hour ago still count as live: rows written once stay live all the module long.
    settings = service_settings(tmp_path_factory.mktemp("prewarm"), auth_required=True, redis_url=redis_url,
                                queue_prefix=prefix, worker_lost_after_s=3600.0)
    app = create_app(settings)
    ctx: ServiceContext = app.state.ctx
    with ctx.db.session() as session:
        made = {"write": tokens.create_token(session, "ci-a", "write", namespaces=[NAMESPACE]),
                "read": tokens.create_token(session, "pods-a", "read", namespaces=[NAMESPACE]),
                "write-b": tokens.create_token(session, "ci-b", "write", namespaces=["team-b"])}
    add_worker(ctx, "neuronx-cc", B, "neuron-runtime", RT_B, NEURON_TARGETS)
    add_worker(ctx, "inductor", TORCH_NEW, "torch", TORCH_NEW, ("cpu",), ("x86-64-v3",))
    add_worker(ctx, "torch-neuronx", TNX_NEW, "neuron-runtime", RT_A2, NEURON_TARGETS,
               packages={"torch": "2.9.0", "neuronx-cc": A2})
    with TestClient(app) as client:
        yield Farm(client, ctx, made)
    redis = connect_redis(redis_url)
    delete_run_keys(redis, prefix)
    assert run_leftovers(redis, prefix) == ([], [])
    redis.close()


# --- each status, one source at a time -----------------------------------------------------------
Prepared = tuple[dict[str, Any], dict[str, Any]]  # (the request, what its one entry must hold)


def ready(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    rebuilt = farm.publish(neuron(B, RT_B, digest))
    return {"compiler_version": B, "keys": [source]}, {"source_key": source, "key": rebuilt, "status": "ready"}


def its_own_toolchain(farm: Farm) -> Prepared:
    # Re-keyed for the toolchain it was built with, an artifact is its own key: ready, with no worker for A.
    source = farm.publish(neuron(A, RT_A, fresh_digest(), flags=["-O3", "--auto-cast=none", "--enable-foo"]))
    return {"compiler_version": A, "keys": [source]}, {"key": source, "status": "ready"}


def compiling(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    new_key = manifest_of(neuron(B, RT_B, digest))[1]
    return ({"compiler_version": B, "keys": [source]},
            {"key": new_key, "status": "compiling", "runtime": {"name": "neuron-runtime", "version": RT_B}})


def failed(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest, flags=["--enable-experimental-spill"]))
    message = "compile_error: neuronx-cc exited 70: ERROR: unknown option --enable-experimental-spill"
    tail = "[ERROR] [NCC_EARG001] unrecognized arguments: --enable-experimental-spill\nCompiler status ERROR\n"
    new_key = farm.fail(neuron(B, RT_B, digest, flags=["--enable-experimental-spill"]), message, tail)
    return {"compiler_version": B, "keys": [source]}, {
        "key": new_key, "status": "failed", "failure_class": "compile_error", "message": message, "log_tail": tail}


def no_worker_for_the_release(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    # Its key is known (the SDK table pairs C with its runtime); nothing is submitted.
    return {"compiler_version": C, "keys": [source]}, {
        "key": manifest_of(neuron(C, "2.31.24.0", digest))[1], "status": "unbuildable",
        "error": "toolchain_unavailable",
        "reason": f"no live worker offers neuronx-cc=={C} for target trn1 (neuron-runtime 2.31.24.0)"}


def a_release_nobody_knows(farm: Farm) -> Prepared:
    source = farm.publish(neuron(A, RT_A, fresh_digest()))
    return {"compiler_version": UNRELEASED, "keys": [source]}, {
        "status": "unbuildable", "error": "toolchain_unavailable",
        "reason": f"neuronx-cc {UNRELEASED} is in no SDK release this service knows"}


def a_stored_flag_the_rules_refuse(farm: Farm) -> Prepared:
    # Stored under older rules: -lnc is refused for trn1 now. That entry is refused, naming the flag.
    manifest = manifest_of(neuron(A, RT_A, fresh_digest()))[0]
    manifest["compiler"]["flags"] = ["--logical-nc-config=2", "--optlevel=2"]
    source = farm.publish({}, manifest)
    return {"compiler_version": B, "keys": [source]}, {
        "source_key": source, "key": None, "status": "refused", "error": "invalid_flags",
        "reason": "--logical-nc-config"}


def a_spec_flag_the_rules_refuse(farm: Farm) -> Prepared:
    spec = neuron(None, None, fresh_digest(), flags=["-lnc", "2"])
    return {"compiler_version": B, "specs": [{"name": "encoder-b1", "spec": spec}]}, {
        "spec": "encoder-b1", "source_key": None, "status": "refused", "error": "invalid_flags",
        "reason": "-lnc 2: only for targets trn2, trn3, not target trn1"}


def a_runtime_of_another_release(farm: Farm) -> Prepared:
    source = farm.publish(neuron(A, RT_A, fresh_digest()))
    return {"compiler_version": B, "runtime_version": RT_A, "keys": [source]}, {
        "status": "refused", "error": "toolchain_mismatch",
        "reason": f"neuronx-cc {B} ships in SDK 2.32.0 and runtime {RT_A} in SDK 2.30.0"}


def inductor_runtime_is_the_compiler(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(inductor(TORCH_OLD, digest))
    return {"compiler_version": TORCH_NEW, "keys": [source]}, {
        "key": manifest_of(inductor(TORCH_NEW, digest))[1], "status": "compiling",
        "runtime": {"name": "torch", "version": TORCH_NEW}}


def torch_neuronx_resolves_its_toolchain(farm: Farm) -> Prepared:
    # --to names torch-neuronx; its torch, neuronx-cc and runtime come with it (worker, SDK table).
    source = farm.publish(torch_neuronx(fresh_digest()))
    return {"compiler_version": TNX_NEW, "keys": [source]}, {
        "status": "compiling", "runtime": {"name": "neuron-runtime", "version": RT_A2},
        "compiler": {"name": "torch-neuronx", "version": TNX_NEW, "flags": ["--optlevel=2"], "torch_version": "2.9.0",
                     "neuronx_cc_version": A2, "inline_weights_to_neff": False}}


def torch_neuronx_with_another_releases_runtime(farm: Farm) -> Prepared:
    source = farm.publish(torch_neuronx(fresh_digest()))
    return {"compiler_version": TNX_NEW, "runtime_version": RT_B, "keys": [source]}, {
        "status": "refused", "error": "toolchain_mismatch",
        "reason": f"torch-neuronx {TNX_NEW} ships in SDK 2.31.1, 2.31.0 and runtime {RT_B} in SDK 2.32.0"}


def not_built_when_not_submitting(farm: Farm) -> Prepared:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    return {"compiler_version": B, "keys": [source], "submit": False}, {
        "key": manifest_of(neuron(B, RT_B, digest))[1], "status": "missing"}


def a_key_no_longer_published(farm: Farm) -> Prepared:
    gone = "e" * 64
    return {"compiler_version": B, "keys": [gone]}, {
        "source_key": gone, "status": "refused", "error": "not_found", "reason": f"no artifact for key {gone}"}


def a_folder_the_farm_does_not_build(farm: Farm) -> Prepared:
    spec = {"model": {"format": "hf-checkpoint", "digest": fresh_digest()}, "target": "trn2", "namespace": NAMESPACE,
            "compiler": {"name": "torch-neuronx", "nxd_inference_version": "0.7.15063"},
            "neuron_config": {"tp_degree": 32}}
    return {"compiler_version": TNX_NEW, "specs": [{"name": "llama", "spec": spec}]}, {
        "status": "refused", "error": "invalid_spec", "reason": "neffcache push --dir"}


CASES: list[Callable[[Farm], Prepared]] = [
    ready, its_own_toolchain, compiling, failed, no_worker_for_the_release, a_release_nobody_knows,
    a_stored_flag_the_rules_refuse, a_spec_flag_the_rules_refuse, a_runtime_of_another_release,
    inductor_runtime_is_the_compiler, torch_neuronx_resolves_its_toolchain, torch_neuronx_with_another_releases_runtime,
    not_built_when_not_submitting, a_key_no_longer_published, a_folder_the_farm_does_not_build,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_each_entry_is_decided_as_a_compile_request_would_be(farm: Farm, case: Callable[[Farm], Prepared]) -> None:
    body, expected = case(farm)
    answer = farm.prewarm(**body)
    [entry] = answer["entries"]
    for field, value in expected.items():
        if field == "reason":
            assert value in entry["reason"], entry
        else:
            assert entry[field] == value, (field, entry)
    assert answer["totals"][entry["status"]] == 1 and sum(answer["totals"].values()) == 1
    assert answer["submitted"] is body.get("submit", True)
    if entry["status"] == "compiling":
        [job] = farm.jobs_of(entry["key"])
        assert (job.id, job.state, job.requested_by) == (entry["job_id"], "queued", "ci-a")
    elif entry["key"] is not None and entry["status"] != "failed":
        assert farm.jobs_of(entry["key"]) == []  # nothing submitted


def test_two_sources_that_rekey_to_one_key_make_one_job(farm: Farm) -> None:
    digest = fresh_digest()  # one model built by two old releases: one build for the new one
    sources = [farm.publish(neuron(A, RT_A, digest)), farm.publish(neuron(A2, RT_A2, digest))]
    answer = farm.prewarm(compiler_version=B, keys=sources)
    first, second = answer["entries"]
    assert [first["source_key"], second["source_key"]] == sources
    assert first["key"] == second["key"] and first["job_id"] == second["job_id"]
    assert "deduplicated" not in first and second["deduplicated"] is True
    assert answer["totals"]["compiling"] == 2 and answer["keys"] == 1
    assert [j.id for j in farm.jobs_of(first["key"])] == [first["job_id"]]
    # Asked again, it joins that job: never a second one, never forced.
    again = farm.prewarm(compiler_version=B, keys=sources)
    assert {e["job_id"] for e in again["entries"]} == {first["job_id"]}
    assert len(farm.jobs_of(first["key"])) == 1


def test_readiness_without_submitting_sees_the_job_and_counts_nothing(farm: Farm) -> None:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    submitted = farm.prewarm(compiler_version=B, keys=[source])["entries"][0]

    def events() -> int:
        farm.ctx.events.flush()
        with farm.ctx.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(CacheEvent)
                                      .where(CacheEvent.key == submitted["key"])) or 0)

    counted = events()
    asked = farm.prewarm(compiler_version=B, keys=[source], submit=False)["entries"][0]
    assert (asked["status"], asked["job_id"], asked["key"]) == ("compiling", submitted["job_id"], submitted["key"])
    assert events() == counted


def test_top_n_keeps_to_the_tokens_namespaces_and_the_window(farm: Farm) -> None:
    def used(namespace: str, hits: int, days_ago: float = 0.0) -> str:
        spec = neuron(A, RT_A, fresh_digest(), namespace=namespace)
        key = farm.publish(spec)
        with farm.ctx.db.session() as session:
            for _ in range(hits):
                session.add(CacheEvent(at=utcnow() - timedelta(days=days_ago), kind="lookup", outcome="hit", key=key,
                                       namespace=namespace, target="trn1", compiler_name="neuronx-cc",
                                       compiler_version=A, caller="pods", saved_seconds=1.0))
            session.add(CacheEvent(at=utcnow(), kind="download", outcome="hit", key=key, namespace=namespace,
                                   target="trn1", compiler_name="neuronx-cc", compiler_version=A, caller="pods"))
        return key

    # Far more hits than anything else in the module: these are the most used of team-a.
    most, second, third = used(NAMESPACE, 60), used(NAMESPACE, 50), used(NAMESPACE, 40)
    used("team-b", 90)  # another team's: never seen with team-a's token
    used(NAMESPACE, 99, days_ago=3)  # outside the window
    answer = farm.prewarm(compiler_version=C, top={"n": 2, "since_days": 1}, submit=False)
    assert [(e["source_key"], e["lookup_hits"]) for e in answer["entries"]] == [(most, 60), (second, 50)]
    assert {e["status"] for e in answer["entries"]} == {"unbuildable"}
    wider = farm.prewarm(compiler_version=C, top={"n": 4, "since_days": 7}, submit=False)
    assert [e["lookup_hits"] for e in wider["entries"]] == [99, 60, 50, 40]
    assert third in {e["source_key"] for e in wider["entries"]}


def test_a_read_token_is_refused(farm: Farm) -> None:
    digest = fresh_digest()
    source = farm.publish(neuron(A, RT_A, digest))
    for submit in (True, False):
        r = farm.post({"compiler_version": B, "keys": [source], "submit": submit}, token="read")
        error_body(r, 403, "forbidden", "has scope 'read'; this needs 'write'")
    assert farm.jobs_of(manifest_of(neuron(B, RT_B, digest))[1]) == []


def an_artifact_source(farm: Farm) -> dict[str, Any]:
    return {"keys": [farm.publish(neuron(A, RT_A, fresh_digest()))]}


def a_spec_source(farm: Farm) -> dict[str, Any]:
    return {"specs": [{"name": "encoder", "spec": neuron(None, None, fresh_digest())}]}


@pytest.mark.parametrize("source", [an_artifact_source, a_spec_source])
def test_a_source_in_another_namespace_is_forbidden(farm: Farm, source: Callable[[Farm], dict[str, Any]]) -> None:
    r = farm.post({"compiler_version": B, **source(farm)}, token="write-b")
    error_body(r, 403, "forbidden", "namespace 'team-a': token 'ci-b' may act only in 'team-b'")


@pytest.mark.parametrize("body, field", [
    ({"compiler_version": B}, "give exactly one source of keys, specs or top, got none"),
    ({"compiler_version": B, "keys": ["a" * 64], "top": {"n": 3}}, "got keys and top"),
    ({"compiler_version": B, "keys": ["abc"]}, "keys[0]"),
    ({"compiler_version": "2.27 beta", "keys": ["a" * 64]}, "compiler_version"),
    ({"compiler_version": B, "top": {"n": 0}}, "top.n"),
    ({"compiler_version": B, "top": {"n": 5, "since_days": 400}}, "top.since_days"),
], ids=["no-source", "two-sources", "not-a-key", "bad-version", "top-zero", "top-too-long"])
def test_a_bad_request_is_refused_naming_the_field(farm: Farm, body: dict[str, Any], field: str) -> None:
    r = farm.post(body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"], r.json()
