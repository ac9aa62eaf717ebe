"""bench/faults.py's request scenarios, each a function of the run: `fuzz` (hypothesis over every
route of the OpenAPI document, over HTTP) and `tamper` (stored objects overwritten behind each
store's back, then downloaded every way). See bench/faults.py's docstring."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from fault_support import (
    ADMIN_TOKEN,
    IDLE_COMPILER,
    IDLE_RUNTIME,
    REPO,
    MiB,
    bare,
    flip,
    last_line,
    read_object,
    route_of,
    say,
    service_download,
)

from neffcache.settings import Settings
from neffcache.storage import open_store
from tests.support.api import NEURON_COMPILER, NEURON_RUNTIME, digest_of, hlo_model, neuron_spec
from tests.support.stack import Stack
from tests.support.tamper import overwrite_stored_bytes

if TYPE_CHECKING:
    from faults import Run


def scenario_fuzz(run: Run) -> dict[str, Any]:
    assert run.stack is not None and run.api is not None
    import warnings

    from hypothesis import strategies as st

    with warnings.catch_warnings():  # what the test module's imports say about their own deprecations
        warnings.simplefilter("ignore")
        from tests.unit.service import test_fuzz_api as fuzz

    api, stack = run.api, run.stack
    say(f"[fuzz] hypothesis, {run.args.examples} examples per route, against the running service {stack.url}")
    seeded = seed_fuzz(run, fuzz)
    document = api.get("/openapi.json").json()
    operations = sorted((m, p) for p, item in document["paths"].items() for m in item)
    values = fuzz.parameter_values(seeded)
    auth = st.sampled_from([None, "Bearer nfc_not-a-token", "Basic Zm9vOmJhcg==",
                            *[f"Bearer {seeded.tokens[s]}" for s in ("read", "write", "admin", "admin")]])
    counts = {"requests": 0, "5xx": 0, "no_answer": 0, "not_sent": 0, "undocumented": 0}
    server_errors: list[str] = []
    undocumented: list[str] = []
    client = httpx.Client(base_url=stack.url, timeout=60)
    try:
        for method, path in operations:
            check = fuzz_operation(run, fuzz, client, document, seeded, values, auth, method, path, counts,
                                        server_errors, undocumented)
            check()
    finally:
        client.close()
    run.figures.fuzz_requests += counts["requests"]
    run.figures.fuzz_5xx += counts["5xx"] + counts["no_answer"]
    say(f"  {counts['requests']} requests over {len(operations)} operations: {counts['5xx']} answered 5xx, "
        f"{counts['no_answer']} not answered, {counts['not_sent']} not sent (httpx refused); "
        f"{counts['undocumented']} answers the OpenAPI document does not describe (not a goal here)")
    for line in server_errors[:10]:
        say(f"    {line}")
    for line in undocumented[:5]:
        say(f"    undocumented: {line}")
    return {**counts, "operations": len(operations), "server_errors": server_errors[:50],
            "undocumented": undocumented[:50],
            "server_alive": all(p.alive() for p in stack.processes if p.name == "server")}

def fuzz_operation(run: Run, fuzz: Any, client: httpx.Client, document: dict[str, Any], seeded: Any,
                   values: dict[str, Any], auth: Any, method: str, path: str, counts: dict[str, int],
                   server_errors: list[str], undocumented: list[str]) -> Callable[[], None]:
    """A hypothesis test of one operation that counts (never asserts) what the server answers."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    operation = document["paths"][path][method]
    body_strategy = fuzz.bodies(seeded, method, path)

    @given(data=st.data())
    @settings(max_examples=run.args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(data: Any) -> None:
        url = path
        query: list[tuple[str, str]] = []
        for parameter in operation.get("parameters", []):
            name = parameter["name"]
            strategy = values.get(name, fuzz.URL_TEXT)
            if parameter["in"] == "path":
                url = url.replace("{" + name + "}", fuzz._encoded(data.draw(strategy)))
            elif data.draw(st.booleans()):
                query.append((name, data.draw(strategy)))
        headers = {}
        token = data.draw(auth)
        if token is not None:
            headers["Authorization"] = token
        content = None
        if body_strategy is not None:
            content, extra = data.draw(body_strategy)
            headers.update(extra)
            if method == "put" and data.draw(st.booleans()):
                url = "/v1/blobs/" + digest_of(content)
        if query:
            url += "?" + "&".join(f"{fuzz._encoded(k)}={fuzz._encoded(v)}" for k, v in query)
        counts["requests"] += 1
        try:
            r = client.request(method, url, content=content, headers=headers)
        except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            counts["not_sent"] += 1  # httpx refused to send it: nothing the server did
            server_errors.append(f"{method.upper()} {url}: not sent ({type(exc).__name__}: {exc})")
            return
        except httpx.TransportError as exc:
            counts["no_answer"] += 1
            server_errors.append(f"{method.upper()} {url}: no answer ({type(exc).__name__}: {exc})")
            return
        if r.status_code >= 500:
            counts["5xx"] += 1
            server_errors.append(f"{method.upper()} {url} -> {r.status_code}: {r.text[:200]}")
        try:
            fuzz.check_answer(document, method, path, r)
        except (AssertionError, ValueError, KeyError) as exc:  # ValueError: a body that is not JSON
            counts["undocumented"] += 1
            undocumented.append(f"{method.upper()} {url}: {str(exc).splitlines()[0][:300]}")

    return check

def seed_fuzz(run: Run, fuzz: Any) -> Any:
    """What the fuzzed requests look for, made through the API and `neffcache-admin`: tokens of
    each scope, blobs, a published artifact, jobs (queued, succeeded) and artifacts of this run."""
    assert run.stack is not None and run.api is not None
    prefix = run.run_id
    made = {}
    for scope in ("read", "write", "publish", "admin"):
        argv = [sys.executable, "-m", "neffcache.service.admin", "token", "create", "--name",
                f"fuzz-{scope}-{prefix}", "--scope", scope, "--json", "--all-namespaces"]
        out = subprocess.run(argv, env=run.stack.env(), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"neffcache-admin token create failed: {out.stderr.strip()}")
        made[scope] = json.loads(out.stdout)["token"]
    blobs = []
    for data in (b"fuzz model " + prefix.encode(), b"fuzz package " + prefix.encode()):
        blobs.append(digest_of(data))
        run.api.put(f"/v1/blobs/{blobs[-1]}", content=data).raise_for_status()
    model, package = blobs
    published = run.api.post("/v1/artifacts", json={
        "spec": fuzz._inductor_spec(model), "files": [{"name": "model.pt2", "digest": package}]})
    published.raise_for_status()
    idle_model = hlo_model()
    idle_digest = digest_of(idle_model)
    run.api.put(f"/v1/blobs/{idle_digest}", content=idle_model).raise_for_status()
    idle = run.api.post("/v1/compile", json={"spec": neuron_spec(
        idle_digest, compiler={"name": "neuronx-cc", "version": IDLE_COMPILER, "flags": []},
        runtime={"name": "neuron-runtime", "version": IDLE_RUNTIME})})
    idle.raise_for_status()
    keys = [j["key"] for j in run.succeeded[:3]]
    job_ids = [idle.json()["job"]["id"], *[j["id"] for j in run.succeeded[:2]]]
    return fuzz.Seeded(prefix, made, model, package, published.json()["key"], keys or [published.json()["key"]],
                       job_ids, blobs)

# --- scenario: tampered stored objects ------------------------------------------------------------
def scenario_tamper(run: Run) -> dict[str, Any]:
    assert run.stack is not None and run.api is not None
    say("[tamper] stored objects overwritten behind the store's back, then downloaded every way")
    results = {"s3": tamper_store(run, "s3", run.stack, run.api, run.settings)}
    settings = run.stack_settings("fs", {"storage_url": f"file://{run.work / 'objects'}"})
    stack, api = run.start_stack("fs", settings)
    try:
        results["filesystem"] = tamper_store(run, "filesystem", stack, api, settings)
    finally:
        api.close()
    return results

def tamper_store(run: Run, label: str, stack: Stack, api: httpx.Client, settings: dict[str, Any]) -> dict[str, Any]:
    from tests.doubles.neuronx_cc_double import build_neff

    store = open_store(Settings(**settings))
    workers = run.start_workers(stack, f"tamper-worker-{label}", 1)

    def annotations(i: int) -> dict[str, str]:
        return {"neuron_cache.module": f"MODULE_{run.run_id}{i}+{label}",
                "neuron_cache.compiler_dir": f"neuronxcc-{NEURON_COMPILER}",
                "neuron_cache.compile_flags": '["-O2"]'}

    jobs = run.submit(api, 6, annotations=annotations)
    final = run.wait_jobs(api, jobs, run.args.deadline_s)
    for w in workers:
        w.stop()
    if any(final.get(j["id"], {}).get("state") != "succeeded" for j in jobs):
        raise RuntimeError(f"{label}: the tamper scenario's compiles did not all succeed: {final}")
    arts = []
    for job in jobs:
        artifact = api.get(f"/v1/artifacts/{final[job['id']]['key']}").json()
        files = {f["name"]: f for f in artifact["files"]}
        originals = {name: read_object(store, f["sha256"]) for name, f in files.items()}
        arts.append({"key": artifact["key"], "job": job["id"], "model": job["model"],
                     "model_hex": job["model_digest"].split(":")[1], "files": files, "originals": originals})
    # Objects of several MiB: streamed in several chunks.
    big_blobs = [os.urandom(3 * MiB + 123) for _ in range(2)]
    for data in big_blobs:
        api.put(f"/v1/blobs/{digest_of(data)}", content=data).raise_for_status()
    big_neff = build_neff({"sg00/program.bin": os.urandom(3 * MiB)}, neff_build_version=NEURON_COMPILER)
    big_model = hlo_model()
    for data in (big_neff, big_model):
        api.put(f"/v1/blobs/{digest_of(data)}", content=data).raise_for_status()
    spec = neuron_spec(digest_of(big_model), compiler={"name": "neuronx-cc", "version": NEURON_COMPILER,
                                                        "flags": ["-O2"]})
    r = api.post("/v1/artifacts", json={
        "spec": spec, "files": [{"name": "model.neff", "digest": digest_of(big_neff)}],
        "annotations": annotations(9)})
    if r.status_code not in (200, 201):
        raise RuntimeError(f"{label}: publishing the large NEFF was refused: {r.status_code} {r.text}")
    big_key = r.json()["key"]
    big_file = {f["name"]: f for f in api.get(f"/v1/artifacts/{big_key}").json()["files"]}["model.neff"]

    a = arts
    neff_of = [x["originals"]["model.neff"] for x in a]
    log_of = [x["originals"]["compile.log"] for x in a]
    # (what, digest hex, original bytes, tampered bytes)
    tampers = [
        ("a0 model.neff, last byte flipped", a[0]["files"]["model.neff"]["sha256"], neff_of[0],
         flip(neff_of[0], -1)),
        ("a1 compile.log (its job's log), truncated", a[1]["files"]["compile.log"]["sha256"], log_of[1],
         log_of[1][: len(log_of[1]) // 2]),
        ("a2 model.neff, another NEFF's bytes", a[2]["files"]["model.neff"]["sha256"], neff_of[2], neff_of[3]),
        ("a3 model blob, bytes appended", a[3]["model_hex"], a[3]["model"], a[3]["model"] + b"\ntampered"),
        ("a4 model.neff, emptied", a[4]["files"]["model.neff"]["sha256"], neff_of[4], b""),
        ("large model.neff (3 MiB), a middle byte flipped", big_file["sha256"], big_neff,
         flip(big_neff, len(big_neff) // 2)),
        ("large blob 0 (3 MiB), first byte flipped", digest_of(big_blobs[0]).split(":")[1], big_blobs[0],
         flip(big_blobs[0], 0)),
        ("large blob 1 (3 MiB), truncated to 1.5 MiB", digest_of(big_blobs[1]).split(":")[1], big_blobs[1],
         big_blobs[1][: 3 * MiB // 2]),
    ]
    for _, hex_digest, _, data in tampers:
        overwrite_stored_bytes(store, bare(hex_digest), data)

    checks: list[dict[str, Any]] = []

    def record(kind: str, what: str, tampered: bool, outcome: str, served: bool, failed: bool = False) -> None:
        checks.append({"download": kind, "object": what, "tampered": tampered, "outcome": outcome,
                       "served": served, "control_failed": failed})

    # Through the service.
    def get(path: str, expected: bytes, what: str, tampered: bool) -> None:
        outcome, wrong_ok = service_download(api, path, expected)
        right = outcome == "right bytes"
        record(route_of(path), what, tampered, outcome, served=tampered and wrong_ok,
               failed=not tampered and not right)

    for what, hex_digest, original, _ in tampers:
        is_blob = what.startswith(("a3 model blob", "large blob"))
        if is_blob:
            get(f"/v1/blobs/sha256:{bare(hex_digest)}", original, what, True)
    get(f"/v1/artifacts/{a[0]['key']}/files/model.neff", neff_of[0], tampers[0][0], True)
    get(f"/v1/artifacts/{a[1]['key']}/files/compile.log", log_of[1], tampers[1][0], True)
    get(f"/v1/jobs/{a[1]['job']}/log", log_of[1], tampers[1][0], True)
    get(f"/v1/jobs/{a[1]['job']}/log?offset=7", log_of[1][7:], tampers[1][0], True)
    get(f"/v1/artifacts/{a[2]['key']}/files/model.neff", neff_of[2], tampers[2][0], True)
    get(f"/v1/artifacts/{a[4]['key']}/files/model.neff", neff_of[4], tampers[4][0], True)
    get(f"/v1/artifacts/{big_key}/files/model.neff", big_neff, tampers[5][0], True)
    # Controls: untouched objects, the same ways.
    get(f"/v1/artifacts/{a[5]['key']}/files/model.neff", neff_of[5], "a5 model.neff (untouched)", False)
    get(f"/v1/artifacts/{a[0]['key']}/files/compile.log", log_of[0], "a0 compile.log (untouched)", False)
    get(f"/v1/jobs/{a[5]['job']}/log", log_of[5], "a5's job log (untouched)", False)
    get(f"/v1/blobs/{digest_of(a[5]['model'])}", a[5]["model"], "a5 model blob (untouched)", False)
    get(f"/v1/artifacts/{a[3]['key']}/files/model.neff", neff_of[3], "a3 model.neff (untouched)", False)

    # Through the `neffcache` command.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
    env.update({"NEFFCACHE_URL": stack.url, "NEFFCACHE_TOKEN": stack.admin_token or ADMIN_TOKEN,
                "COLUMNS": "250"})
    pulls = run.work / f"pulls-{label}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "neffcache.client.cli", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    def pull(key: str, expected: dict[str, bytes], what: str, tampered: bool) -> None:
        dest = pulls / f"dest-{uuid.uuid4().hex[:6]}"
        done = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
        wrong = [n for n, data in expected.items() if (dest / key / n).is_file() and
                 (dest / key / n).read_bytes() != data]
        missing = [n for n in expected if not (dest / key / n).is_file()]
        served = bool(wrong) or (done.returncode == 0 and bool(missing))
        outcome = f"exit {done.returncode}" + (f", wrong bytes in {wrong}" if wrong else "") + (
            f", missing {missing}" if missing and done.returncode == 0 else "") + (
            f": {last_line(done.stderr)}" if done.returncode else "")
        record("neffcache pull --dest", what, tampered, outcome, served=tampered and served,
               failed=not tampered and (done.returncode != 0 or served))

    def into_cache(art: dict[str, Any], model: bytes, neff: bytes, what: str, tampered: bool) -> None:
        dest = pulls / f"cache-{uuid.uuid4().hex[:6]}"
        done = cli("pull", art["key"], "--into-neuron-cache", str(dest), "--runtime-version", NEURON_RUNTIME)
        wrong, found = [], []
        for path in dest.rglob("*") if dest.exists() else []:
            if not path.is_file():
                continue
            if path.name == "model.neff":
                found.append(path.name)
                wrong += [str(path.relative_to(dest))] if path.read_bytes() != neff else []
            elif path.suffix == ".pb":
                found.append(path.name)
                wrong += [str(path.relative_to(dest))] if path.read_bytes() != model else []
        served = bool(wrong) or (done.returncode == 0 and len(found) < 2)
        outcome = f"exit {done.returncode}" + (f", wrong bytes in {wrong}" if wrong else "") + (
            f": {last_line(done.stderr)}" if done.returncode else "")
        record("neffcache pull --into-neuron-cache", what, tampered, outcome, served=tampered and served,
               failed=not tampered and (done.returncode != 0 or served))

    def logs(job_id: str, text: bytes, what: str, tampered: bool) -> None:
        done = cli("logs", job_id, "--json")
        printed = None
        if done.returncode == 0:
            try:
                printed = json.loads(done.stdout)["log"]
            except (ValueError, KeyError):
                printed = done.stdout
        right = printed == text.decode("utf-8", errors="replace")
        outcome = f"exit {done.returncode}" + ("" if done.returncode else (", right text" if right else
                                                                             ", wrong text")) + (
            f": {last_line(done.stderr)}" if done.returncode else "")
        record("neffcache logs", what, tampered, outcome, served=tampered and done.returncode == 0 and not right,
               failed=not tampered and not right)

    def originals(art: dict[str, Any]) -> dict[str, bytes]:
        return dict(art["originals"])

    pull(a[0]["key"], originals(a[0]), tampers[0][0], True)
    pull(a[1]["key"], originals(a[1]), tampers[1][0], True)
    pull(a[2]["key"], originals(a[2]), tampers[2][0], True)
    pull(a[4]["key"], originals(a[4]), tampers[4][0], True)
    pull(big_key, {"model.neff": big_neff}, tampers[5][0], True)
    into_cache(a[3], a[3]["model"], neff_of[3], tampers[3][0], True)
    into_cache(a[0], a[0]["model"], neff_of[0], tampers[0][0], True)
    logs(a[1]["job"], log_of[1], tampers[1][0], True)
    pull(a[5]["key"], originals(a[5]), "a5 (untouched)", False)
    into_cache(a[5], a[5]["model"], neff_of[5], "a5 (untouched)", False)
    logs(a[5]["job"], log_of[5], "a5's job log (untouched)", False)

    served = [c for c in checks if c["served"]]
    failed = [c for c in checks if c["control_failed"]]
    run.figures.served += len(served)
    run.figures.controls_failed += len(failed)
    tampered = [c for c in checks if c["tampered"]]
    outcomes = collections.Counter(c["outcome"].split(":")[0] for c in tampered)
    say(f"  {label}: {len(tampers)} objects tampered, {len(tampered)} downloads of them: {len(served)} served "
        f"as good; {len(checks) - len(tampered)} control downloads, {len(failed)} failed")
    say(f"    outcomes: {dict(outcomes)}")
    for c in served + failed:
        kind = "SERVED" if c["served"] else "CONTROL FAILED"
        say(f"    {kind}: {c['download']} of {c['object']}: {c['outcome']}")
    return {"tampered_objects": [t[0] for t in tampers], "downloads": checks, "served": len(served),
            "controls_failed": len(failed)}
