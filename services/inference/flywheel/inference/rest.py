"""The OIP v2 REST front door (Starlette, served by uvicorn in the gRPC server's event loop), which also
carries the OpenAI-compatible /v1 routes (openai_api.py).

Every route takes the same bearer token and roles as its gRPC twin (see api.ROLES): health routes are
open, predictions need `predict`, metadata `predict` or a reading role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from flywheel.common.auth import Authenticator
from flywheel.common.errors import InvalidArgument
from flywheel.common.http import Endpoint, guard
from flywheel.common.http import error_response as error
from flywheel.common.rpc import ServerTls
from flywheel.inference.api import ROLES
from flywheel.inference.convert import (
    HEADER_LENGTH,
    config_to_rest,
    index_request_from_rest,
    index_to_rest,
    request_from_rest,
    response_to_rest,
    stats_to_rest,
)
from flywheel.inference.dataplane import DataPlane

log = logging.getLogger(__name__)


def build_app(dp: DataPlane, authenticator: Authenticator | None = None,
              extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The REST app; `authenticator` None serves without authentication (unit tests of the routes only);
    `extra_routes`: other doors on the same port (the OpenAI-compatible /v1 routes)."""

    def needs(rpc: str) -> Callable[[Endpoint], Endpoint]:
        return guard(authenticator, ROLES[rpc], f"call {rpc}")

    async def live(request: Request) -> Response:
        return JSONResponse({"live": dp.live()}, status_code=200 if dp.live() else 503)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": dp.ready()}, status_code=200 if dp.ready() else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(dp.server_metadata())

    def _path(request: Request) -> tuple[str, str]:
        return request.path_params["name"], request.path_params.get("version", "")

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(dp.model_metadata(*_path(request)))
        except Exception as exc:
            return error(exc)

    async def model_ready(request: Request) -> Response:
        try:
            ok = dp.model_ready(*_path(request))
        except Exception as exc:
            return error(exc)
        return JSONResponse({"name": _path(request)[0], "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        name, version = _path(request)
        try:
            header = request.headers.get(HEADER_LENGTH)
            try:
                header_length = int(header) if header is not None else None
            except ValueError:
                raise InvalidArgument(f"Inference-Header-Content-Length {header!r} is not an integer") from None
            infer_request, binary, all_binary = request_from_rest(name, version, await request.body(), header_length)
            body, length = response_to_rest(await dp.infer(infer_request), binary, all_binary)
        except Exception as exc:
            return error(exc)
        if length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length":
                                                                             str(length)})

    # Triton's extensions (model repository index, model configuration, statistics).

    async def repository_index(request: Request) -> Response:
        try:
            return JSONResponse(index_to_rest(dp.repository_index(ready=index_request_from_rest(await request.body()))))
        except Exception as exc:
            return error(exc)

    async def model_config(request: Request) -> Response:
        try:
            return JSONResponse(config_to_rest(dp.model_config(*_path(request))))
        except Exception as exc:
            return error(exc)

    async def model_stats(request: Request) -> Response:
        try:
            return JSONResponse(stats_to_rest(dp.model_statistics(request.path_params.get("name", ""),
                                                                  request.path_params.get("version", ""))))
        except Exception as exc:
            return error(exc)

    async def not_found(request: Request, exc: Any) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"},
                            status_code=getattr(exc, "status_code", 404))

    live, ready = needs("ServerLive")(live), needs("ServerReady")(ready)
    server_metadata, model_metadata = needs("ServerMetadata")(server_metadata), needs("ModelMetadata")(model_metadata)
    model_ready, infer = needs("ModelReady")(model_ready), needs("ModelInfer")(infer)
    repository_index, model_config = needs("RepositoryIndex")(repository_index), needs("ModelConfig")(model_config)
    model_stats = needs("ModelStatistics")(model_stats)
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        # Before /v2/models/{name}, which would take "stats" for a model name: a model called "stats"
        # has no REST metadata route (its gRPC ModelMetadata still works).
        Route("/v2/models/stats", model_stats),
        Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/models/{name}/config", model_config),
        Route("/v2/models/{name}/versions/{version}/config", model_config),
        Route("/v2/models/{name}/stats", model_stats),
        Route("/v2/models/{name}/versions/{version}/stats", model_stats),
        *extra_routes,
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


class RestServer:
    """uvicorn running `build_app(dp)` as a task of the current event loop."""

    def __init__(self, dp: DataPlane, host: str, port: int, *, authenticator: Authenticator | None,
                 tls: ServerTls | None = None, extra_routes: Sequence[BaseRoute] = ()) -> None:
        """`tls`: HTTPS with the server certificate (and client certificates when it requires them)."""
        ssl: dict[str, Any] = {}
        if tls is not None:
            import ssl as ssl_module

            ssl = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file,
                   "ssl_ca_certs": tls.client_ca_file or None,
                   "ssl_cert_reqs": ssl_module.CERT_REQUIRED if tls.require_client_auth else ssl_module.CERT_NONE}
        config = uvicorn.Config(build_app(dp, authenticator, extra_routes), host=host, port=port, lifespan="off",
                                log_level="warning", access_log=False, http="httptools", loop="none", **ssl)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> int:
        # `_serve`, not `serve`: the process's signal handling belongs to the app, not to uvicorn.
        self.task = asyncio.create_task(self.server._serve(), name="rest-server")
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise OSError("the REST server stopped while starting")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None
