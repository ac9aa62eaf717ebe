"""The baseline servers of bench/hit_path.py, each a child process: `_bare`, a bare FastAPI app
started by the service's own `serve` command with only the app swapped; `_raw`, a raw asyncio
server answering the same bytes (the load generator's own ceiling)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Response
from http_load import HOST, _new_loop

REPO = Path(__file__).resolve().parents[1]




def bare_main(port: int, bodies_path: Path, options_path: Path) -> int:
    """The bare FastAPI app, started by the service's own `serve` command with only the app swapped."""
    bodies = {k: base64.b64decode(v) for k, v in json.loads(bodies_path.read_text()).items()}
    app = FastAPI()

    @app.post("/v1/{name}")
    async def post(name: str, payload: Annotated[dict[str, Any], Body()]) -> Response:
        return Response(bodies[name], media_type="application/json")

    @app.get("/v1/artifacts/{key}")
    async def get(key: str) -> Response:
        return Response(bodies["artifact"], media_type="application/json")

    import uvicorn

    original = uvicorn.Config.__init__

    def swapped(self: Any, target: Any, *rest: Any, **options: Any) -> None:
        seen = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
        seen["app"] = target if isinstance(target, str) else repr(target)
        options_path.write_text(json.dumps(seen))
        options["factory"] = False
        options["workers"] = 1
        original(self, app, *rest, **options)

    uvicorn.Config.__init__ = swapped  # type: ignore[method-assign]
    try:
        from neffcache.service.__main__ import main as serve
    except ImportError:  # no serve command: uvicorn's defaults, as it used to run
        options_path.write_text(json.dumps({"fallback": True, "log_level": "info"}))
        uvicorn.run(app, host=HOST, port=port, log_level="info")
        return 0
    return serve(["serve", "--host", HOST, "--port", str(port)])


def raw_main(port: int, bodies_path: Path) -> int:
    """A raw asyncio server answering every request with the lookup body: the generator's ceiling."""
    body = base64.b64decode(json.loads(bodies_path.read_text())["lookup"])
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at >= 0:
                    end = lower.index(b"\r\n", at + 2)
                    await reader.readexactly(int(lower[at + 17:end]))
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    loop = _new_loop()
    loop.run_until_complete(serve())
    return 0


# --------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------


def main() -> int:
    mode = sys.argv[1]
    inner = argparse.ArgumentParser()
    inner.add_argument("--port", type=int, required=True)
    inner.add_argument("--bodies", type=Path, required=True)
    inner.add_argument("--options", type=Path)
    a = inner.parse_args(sys.argv[2:])
    sys.path.insert(0, str(REPO))
    return bare_main(a.port, a.bodies, a.options) if mode == "_bare" else raw_main(a.port, a.bodies)


if __name__ == "__main__":
    sys.exit(main())
