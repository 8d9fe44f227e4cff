"""HTTP doors (Starlette, and FastAPI which is built on it): domain errors as JSON with their status,
and the same bearer-token check the gRPC servers make, per route.

    routes = [Route("/v2/models/{name}/infer", guard(authenticator, auth.PREDICT, "infer")(infer), ...)]

A missing or unknown token answers 401 with `WWW-Authenticate: Bearer`, a token without the route's
role 403; the body is `{"error": "<what is missing>"}`. On success the principal is bound for
`flywheel.common.auth.current_principal()` while the endpoint runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flywheel.common import errors
from flywheel.common.auth import Authenticator, AuthError, Roles, bind_principal, unbind_principal

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.FlywheelError], int] = {
    errors.InvalidArgument: 400, errors.PoisonEvent: 400, errors.NotFound: 404, errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409, errors.Unavailable: 503,
}

Endpoint = Callable[[Request], Awaitable[Response]]


def status_of(exc: errors.FlywheelError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


def error_response(exc: BaseException) -> JSONResponse:
    """A domain error as `{"error": message}` with its status; anything else is a logged 500."""
    if isinstance(exc, AuthError):
        return auth_error_response(exc)
    if isinstance(exc, errors.FlywheelError):
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))
    log.exception("unhandled error in an HTTP door")
    return JSONResponse({"error": "internal error; see the server log"}, status_code=500)


def auth_error_response(exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="flywheel"'} if exc.status == 401 else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


def guard(authenticator: Authenticator | None, allowed: Roles, action: str) -> Callable[[Endpoint], Endpoint]:
    """Wrap an endpoint so it runs only for callers with one of `allowed` (`admin` always may).

    `allowed` empty (auth.OPEN), or no authenticator: the endpoint runs as is.
    """
    def wrap(endpoint: Endpoint) -> Endpoint:
        if authenticator is None or not allowed:
            return endpoint

        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            try:
                principal = await authenticator.authorize(request.headers.get("authorization"), allowed, action)
            except AuthError as exc:
                return auth_error_response(exc)
            bound = bind_principal(principal)
            try:
                return await endpoint(request)
            finally:
                unbind_principal(bound)
        return guarded
    return wrap
