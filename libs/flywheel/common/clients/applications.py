"""`ApplicationsClient`: the LLM applications of an inference server (its operator REST API on the HTTP port,
`/v1/applications`), for the CLI and for projects that set up their applications (the payments demo).

Standard library HTTP (run in a worker thread), so nothing is added to what every service installs. Errors come
back as the platform's domain errors, with the server's message: 400 -> InvalidArgument, 401/403 -> PermissionDenied
(below), 404 -> NotFound, 409 -> AlreadyExists, 5xx / unreachable -> Unavailable.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from flywheel.common.errors import AlreadyExists, FlywheelError, InvalidArgument, NotFound, Unavailable
from flywheel.common.rpc import ClientAuth


class ApplicationsClient:
    """`url`: the inference HTTP base, e.g. http://127.0.0.1:8000 (https with FLYWHEEL_TLS_CA_FILE to verify)."""

    def __init__(self, url: str, *, auth: ClientAuth | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.auth = auth or ClientAuth()
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=self.auth.ca_file) if self.auth.ca_file else None

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"accept": "application/json"}
        if self.auth.token:
            headers["authorization"] = f"Bearer {self.auth.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", {}).get("message") or exc.reason
            except ValueError:
                message = exc.reason
            raise _error(exc.code, f"{method} {path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(f"inference at {self.url} is unreachable: {exc}") from None

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request, method, path, body)

    async def list(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/applications"))[1]["data"])

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            return (await self._call("GET", f"/v1/applications/{quote(name, safe='')}"))[1]
        except NotFound:
            return None

    async def put(self, name: str, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or replace; (the stored application, whether it was created)."""
        status, body = await self._call("PUT", f"/v1/applications/{quote(name, safe='')}", spec)
        return body, status == 201

    async def delete(self, name: str) -> None:
        await self._call("DELETE", f"/v1/applications/{quote(name, safe='')}")


def _error(status: int, message: str) -> FlywheelError:
    if status == 400:
        return InvalidArgument(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return AlreadyExists(message)
    if status in (401, 403):
        return PermissionDenied(message)
    return Unavailable(message)


class PermissionDenied(FlywheelError):
    """401 / 403: the token is missing, unknown, or lacks the role."""
