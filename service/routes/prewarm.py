"""Prewarm: build what a deployment uses again for a new toolchain, before the rollout."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from neffcache.errors import Forbidden
from neffcache.service import prewarm
from neffcache.service.auth import WRITE, grant
from neffcache.service.errors import error_responses
from neffcache.service.routes.deps import context
from neffcache.spec import PrewarmRequest

router = APIRouter(prefix="/v1", tags=["cache"])


@router.post("/prewarm", dependencies=[WRITE], responses=error_responses(
    Forbidden, into={200: {"description": "each entry re-keyed, with its status (ready, compiling, failed, missing, "
                                          "unbuildable, refused), and the totals"}}))
def prewarm_sources(body: PrewarmRequest, request: Request) -> dict[str, Any]:
    """Re-key the sources (artifact keys, specs, or the most used artifacts) for the new toolchain
    and submit each as a compile request (service.prewarm); with `submit` false, only report how
    ready each one is. A refusal of one entry is that entry's status, not the request's."""
    return prewarm.prewarm(context(request), body, grant(request))
