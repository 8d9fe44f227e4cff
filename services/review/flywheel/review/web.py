"""The review app's HTTP door: one FastAPI app serving the pages (pages.py) and the JSON API (api.py), with
who-is-calling (a session cookie, or a platform bearer token for the API), CSRF checks, security headers,
errors as JSON on the API, and the health probes.

Sessions: the cookie holds a random token signed with the app's key (itsdangerous), HttpOnly,
SameSite=Lax, Secure when configured; the database keeps the token's sha256 and the session's CSRF
token. Every state-changing request made with a session must carry that CSRF token (a form field, or the
X-CSRF-Token header from the page's script); requests with a bearer token carry no cookies and need none.
The login form is protected by a double-submit cookie.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, TimestampSigner
from starlette.exceptions import HTTPException as StarletteHTTPException

from flywheel.common import errors
from flywheel.common.auth import Authenticator, AuthError
from flywheel.review.access import Actor, Forbidden, Unauthenticated, actor_of_principal
from flywheel.review.accounts import Accounts, Session, TooManyAttempts
from flywheel.review.config import ReviewSettings
from flywheel.review.features import FeatureNames
from flywheel.review.queues import ReviewQueues
from flywheel.review.reports import Reports

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "flywheel_review_session"
LOGIN_COOKIE = "flywheel_review_login"
FLASH_COOKIE = "flywheel_review_flash"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
STATUS_OF: dict[type[Exception], int] = {
    TooManyAttempts: 429, Forbidden: 403, Unauthenticated: 401, errors.InvalidArgument: 400, errors.NotFound: 404,
    errors.AlreadyExists: 409, errors.FailedPrecondition: 409, errors.Unavailable: 503,
}


def status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


class LoginRequired(Exception):
    """A page needs a logged-in user: redirect to the login page, then back."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


@dataclass(frozen=True)
class Caller:
    """Who is calling and how: a session (with its CSRF token) or a bearer token."""

    actor: Actor
    via: str
    csrf_token: str = ""
    session_token: str = ""


@dataclass
class WebContext:
    settings: ReviewSettings
    queues: ReviewQueues
    reports: Reports
    accounts: Accounts
    authenticator: Authenticator
    features: FeatureNames
    signer: TimestampSigner
    # Whether the consumer and the outbox relay work (readiness).
    ready: Callable[[], bool]
    templates: Jinja2Templates | None = None

    # -- cookies --------------------------------------------------------------------------------------

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, self.signer.sign(value).decode(), max_age=max_age, httponly=True, samesite="lax",
                            secure=self.settings.cookie_secure, path="/")

    def read_cookie(self, request: Request, name: str, max_age: float | None = None) -> str | None:
        raw = request.cookies.get(name)
        if not raw:
            return None
        try:
            return self.signer.unsign(raw, max_age=max_age).decode()  # type: ignore[arg-type]
        except BadSignature:
            return None

    def flash(self, response: Response, message: str) -> None:
        self.set_cookie(response, FLASH_COOKIE, message, max_age=60)

    # -- callers --------------------------------------------------------------------------------------

    async def caller(self, request: Request) -> Caller | None:
        """The bearer token's principal (API), else the session's user; None when neither is there."""
        header = request.headers.get("authorization")
        if header:
            try:
                principal = await self.authenticator.principal(header)
            except AuthError as exc:
                raise Unauthenticated(str(exc)) from None
            return Caller(actor_of_principal(principal), "token")
        token = self.read_cookie(request, SESSION_COOKIE, max_age=self.settings.session_hours * 3600)
        if token is None:
            return None
        session: Session | None = await self.accounts.session(token)
        if session is None:
            return None
        return Caller(session.actor, "session", session.csrf_token, token)

    @staticmethod
    def check_csrf(caller: Caller, submitted: str | None) -> None:
        """A state change made with a session must carry the session's CSRF token."""
        if caller.via != "session":
            return
        if not submitted or not hmac.compare_digest(submitted, caller.csrf_token):
            raise Forbidden("missing or wrong CSRF token: reload the page and try again")


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def build_app(ctx: WebContext) -> FastAPI:
    from flywheel.review import api, pages

    app = FastAPI(title="Flywheel review", version="1",
                  description="Human review of predictions and answers: queues fed by reviews.requested, decisions "
                              "back into the loop as feedback.received and reviews.completed.",
                  openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None)
    ctx.templates = Jinja2Templates(directory=str(HERE / "templates"))
    ctx.templates.env.globals["csrf_field"] = CSRF_FIELD
    ctx.templates.env.globals["seconds_until"] = seconds_until
    ctx.templates.env.filters["duration"] = duration
    ctx.templates.env.filters["show"] = show
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def error_page(request: Request, status: int, message: str) -> Response:
        """The error as a page, with the navigation when someone is logged in."""
        assert ctx.templates is not None
        try:
            caller = await ctx.caller(request)
        except Exception:  # the error may be about the caller itself
            caller = None
        values = {"status": status, "message": message, "caller": caller}
        if caller is not None:
            values.update(actor=caller.actor, csrf=caller.csrf_token)
        return ctx.templates.TemplateResponse(request, "error.html", values, status_code=status)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)

    @app.exception_handler(errors.FlywheelError)
    async def domain_error(request: Request, exc: errors.FlywheelError) -> Response:
        status = status_of(exc)
        if is_api(request):
            headers = {"WWW-Authenticate": 'Bearer realm="flywheel"'} if status == 401 else None
            return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
        if status == 401:
            return RedirectResponse(f"/login?next={quote(request.url.path, safe='/')}", status_code=303)
        return await error_page(request, status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        message = "; ".join(problems) or "invalid request"
        if is_api(request):
            return JSONResponse({"error": message}, status_code=400)
        return await error_page(request, 400, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        if is_api(request):
            return JSONResponse({"error": f"{message}: {request.method} {request.url.path}"},
                                status_code=exc.status_code)
        return await error_page(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        if is_api(request):
            return JSONResponse({"error": "internal error; see the server log"}, status_code=500)
        return await error_page(request, 500, "internal error; see the server log")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "alive"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ok = ctx.ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    app.include_router(api.router(ctx))
    app.include_router(pages.router(ctx))
    return app


def seconds_until(moment: datetime) -> float:
    """Seconds from now until `moment` (0 when it has passed), measured here, so a page's countdown does not
    depend on the browser's clock."""
    return round(max(0.0, (moment - datetime.now(UTC)).total_seconds()), 1)


def duration(seconds: float) -> str:
    """12 s, 4 min, 2 h 5 min, 3 d 4 h."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def show(value: Any) -> str:
    """An input value for a person: floats with at most 6 significant digits, missing as —."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def login_page_response(ctx: WebContext, request: Request, *, next_url: str, error: str = "",
                        status: int = 200) -> HTMLResponse:
    """The login form with a fresh double-submit token (the same value in a cookie and in the form)."""
    assert ctx.templates is not None
    token = new_csrf()
    response = ctx.templates.TemplateResponse(request, "login.html", {
        "caller": None, "next": next_url, "login_csrf": token, "error": error}, status_code=status)
    ctx.set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
    return response
