"""The server-rendered pages: log in, the queues, working a queue (one item at a time, every action a form
with its keyboard shortcut), progress, agreement, conflicts, export and users. Forms post and redirect
(post/redirect/get); each carries the session's CSRF token. The one script (static/review.js) adds the
keyboard shortcuts, renews the lease while the page is open and counts down the undo window.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from flywheel.common.errors import FailedPrecondition, FlywheelError, InvalidArgument
from flywheel.review.access import ROLES, Forbidden, Unauthenticated
from flywheel.review.intake import REASONS
from flywheel.review.queues import ACTIONS, Verdict
from flywheel.review.store import Item
from flywheel.review.web import (
    CSRF_FIELD,
    FLASH_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Caller,
    LoginRequired,
    WebContext,
    login_page_response,
    status_of,
)

# Keys of the label buttons, in the order of the queue's label names; answers use letters.
LABEL_KEYS = "123456789"


def _safe_next(url: str) -> str:
    """Only a local path (never another site) after logging in."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    templates = ctx.templates
    assert templates is not None

    async def page_caller(request: Request) -> Caller:
        found = await ctx.caller(request)
        if found is None:
            raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return found

    async def form_caller(request: Request, csrf_token: str | None) -> Caller:
        who = await page_caller(request)
        ctx.check_csrf(who, csrf_token)
        return who

    def render(request: Request, name: str, caller: Caller, status: int = 200, **values: Any) -> Response:
        flash = ctx.read_cookie(request, FLASH_COOKIE, max_age=60)
        response = templates.TemplateResponse(request, name, {
            "caller": caller, "actor": caller.actor, "csrf": caller.csrf_token, "flash": flash, **values},
            status_code=status)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def redirect(url: str, message: str = "") -> Response:
        response = RedirectResponse(url, status_code=303)
        if message:
            ctx.flash(response, message)
        return response

    # -- log in and out -----------------------------------------------------------------------------

    @r.get("/login")
    async def login_form(request: Request, next: str = "/") -> Response:
        return login_page_response(ctx, request, next_url=_safe_next(next))

    @r.post("/login")
    async def login(request: Request, username: str = Form(""), password: str = Form(""),
                    csrf_token: str = Form(""), next: str = Form("/")) -> Response:
        expected = ctx.read_cookie(request, LOGIN_COOKIE, max_age=3600)
        if not expected or not csrf_token or expected != csrf_token:
            return login_page_response(ctx, request, next_url=_safe_next(next), status=403,
                                       error="The login form expired or was not sent from this site: try again.")
        try:
            token, _ = await ctx.accounts.login(username, password)
        except (Unauthenticated, Forbidden) as exc:
            return login_page_response(ctx, request, next_url=_safe_next(next), error=str(exc),
                                       status=status_of(exc))
        response = RedirectResponse(_safe_next(next), status_code=303)
        ctx.set_cookie(response, SESSION_COOKIE, token, max_age=int(ctx.settings.session_hours * 3600))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @r.post("/logout")
    async def logout(request: Request, csrf_token: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        await ctx.accounts.logout(who.session_token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- queues and work ----------------------------------------------------------------------------

    @r.get("/")
    async def home(request: Request) -> Response:
        who = await page_caller(request)
        progress = await ctx.reports.progress(who.actor)
        return render(request, "queues.html", who, queues=progress.queues)

    async def item_view(item: Item) -> dict[str, Any]:
        view: dict[str, Any] = {"item": item, "reason": REASONS.get(item.reason, str(item.reason))}
        if item.kind == "answer":
            view["actions"] = ACTIONS
        else:
            view["inputs"] = await ctx.features.annotate(item.content, item.model_name, item.model_version)
            view["labels"] = list(zip(LABEL_KEYS, ctx.settings.labels_for(item.queue), strict=False))
            prediction = item.content.get("prediction") or {}
            names = ctx.settings.labels_for(item.queue)
            view["predicted"] = None if prediction.get("label") is None else names[1 if prediction["label"] else 0]
            view["score"] = prediction.get("score")
        return view

    @r.get("/queues/{queue}")
    async def work(request: Request, queue: str) -> Response:
        who = await page_caller(request)
        claim = await ctx.queues.current(who.actor, queue)
        last = await ctx.queues.last_undoable(who.actor, queue)
        values: dict[str, Any] = {"queue": queue, "claim": claim, "last": last,
                                  "back": f"/queues/{quote(queue, safe='')}",
                                  "lease_seconds": ctx.settings.lease_seconds}
        if claim is not None:
            values.update(await item_view(claim.item))
        return render(request, "work.html", who, **values)

    async def claim_next(who: Caller, queue: str, done: str) -> Response:
        claim = await ctx.queues.claim_next(who.actor, queue)
        if claim is None:
            done = f"{done} The queue is empty for you now." if done else "Nothing left to review in this queue."
        return redirect(f"/queues/{quote(queue, safe='')}", done)

    @r.post("/queues/{queue}/claim")
    async def claim(request: Request, queue: str, csrf_token: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        return await claim_next(who, queue, "")

    @r.post("/items/{item_id}/decide")
    async def decide(request: Request, item_id: str, csrf_token: str = Form(""), label: str = Form(""),
                     action: str = Form(""), corrected_completion: str = Form(""),
                     comment: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        item, _ = await ctx.queues.item(who.actor, item_id)
        try:
            decided = await ctx.queues.decide(who.actor, item_id, Verdict(label, action, corrected_completion,
                                                                          comment))
        except (InvalidArgument, FailedPrecondition) as exc:
            return redirect(f"/queues/{quote(item.queue, safe='')}", f"Not saved: {exc}")
        d = decided.decision
        what = d.category if d.action == "label" else {"approve": "Approved", "correct": "Corrected",
                                                        "reject": "Rejected"}[d.action]
        return await claim_next(who, item.queue, f"{what}: saved.")

    @r.post("/items/{item_id}/skip")
    async def skip(request: Request, item_id: str, csrf_token: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        try:
            item = await ctx.queues.skip(who.actor, item_id)
        except FailedPrecondition as exc:
            item, _ = await ctx.queues.item(who.actor, item_id)
            return redirect(f"/queues/{quote(item.queue, safe='')}", f"Not skipped: {exc}")
        return await claim_next(who, item.queue, "Skipped.")

    @r.post("/decisions/{decision_id}/undo")
    async def undo(request: Request, decision_id: str, csrf_token: str = Form(""),
                   back: str = Form("/")) -> Response:
        who = await form_caller(request, csrf_token)
        try:
            item = await ctx.queues.undo(who.actor, decision_id)
        except FailedPrecondition as exc:
            return redirect(_safe_next(back), f"Not undone: {exc}")
        target = "/conflicts" if item.status == "conflict" else f"/queues/{quote(item.queue, safe='')}"
        return redirect(target, "Undone: the item is back.")

    # -- progress, quality, conflicts, export --------------------------------------------------------

    @r.get("/progress")
    async def progress(request: Request, hours: float = 24.0) -> Response:
        who = await page_caller(request)
        if not 0 < hours <= 24 * 365:
            raise InvalidArgument("hours must be between 0 and 8760")
        return render(request, "progress.html", who, progress=await ctx.reports.progress(who.actor, hours),
                      hours=hours)

    @r.get("/quality")
    async def quality(request: Request) -> Response:
        who = await page_caller(request)
        return render(request, "quality.html", who, quality=await ctx.reports.quality(who.actor))

    @r.get("/conflicts")
    async def conflicts(request: Request, queue: str | None = None) -> Response:
        who = await page_caller(request)
        found = await ctx.queues.conflicts(who.actor, queue or None)
        shown = []
        for item, decisions in found:
            view = await item_view(item)
            view["decisions"] = [d for d in decisions if not d.resolution]
            shown.append(view)
        last = await ctx.queues.last_undoable(who.actor)
        return render(request, "conflicts.html", who, conflicts=shown, queue=queue or "", back="/conflicts",
                      last=last if last is not None and last.resolution else None)

    @r.post("/items/{item_id}/resolve")
    async def resolve(request: Request, item_id: str, csrf_token: str = Form(""), label: str = Form(""),
                      action: str = Form(""), corrected_completion: str = Form(""),
                      comment: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        try:
            decided = await ctx.queues.resolve(who.actor, item_id, Verdict(label, action, corrected_completion,
                                                                           comment))
        except (InvalidArgument, FailedPrecondition) as exc:
            return redirect("/conflicts", f"Not resolved: {exc}")
        return redirect("/conflicts", f"Resolved: {decided.decision.category}.")

    @r.get("/export")
    async def export(request: Request) -> Response:
        who = await page_caller(request)
        who.actor.require_lead()
        progress = await ctx.reports.progress(who.actor)
        return render(request, "export.html", who, queues=[q.queue for q in progress.queues
                                                            if who.actor.may_lead(q.queue)])

    # -- users --------------------------------------------------------------------------------------

    @r.get("/users")
    async def users(request: Request) -> Response:
        who = await page_caller(request)
        listed = await ctx.accounts.list_users(who.actor)
        roles = ROLES if who.actor.is_admin else ("reviewer",)
        return render(request, "users.html", who, users=listed, roles=roles)

    @r.post("/users")
    async def create_user(request: Request, csrf_token: str = Form(""), username: str = Form(""),
                          password: str = Form(""), role: str = Form("reviewer"),
                          queues: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        try:
            user = await ctx.accounts.create_user(who.actor, username, password, role,
                                                  [q for q in queues.replace(",", " ").split() if q])
        except (InvalidArgument, FlywheelError) as exc:
            if isinstance(exc, Forbidden):
                raise
            return redirect("/users", f"Not created: {exc}")
        return redirect("/users", f"Created {user.role} {user.username}.")

    @r.post("/users/{username}/{change}")
    async def change_user(request: Request, username: str, change: str,
                          csrf_token: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        if change not in ("disable", "enable"):
            raise InvalidArgument(f"unknown change {change!r}: disable or enable")
        user = await ctx.accounts.set_disabled(who.actor, username, change == "disable")
        return redirect("/users", f"{user.username} {'disabled' if user.disabled_at else 'enabled'}.")

    @r.get("/account")
    async def account(request: Request) -> Response:
        who = await page_caller(request)
        return render(request, "account.html", who)

    @r.post("/account/password")
    async def change_password(request: Request, csrf_token: str = Form(""), current: str = Form(""),
                              new: str = Form("")) -> Response:
        who = await form_caller(request, csrf_token)
        try:
            await ctx.accounts.change_password(who.actor, current, new)
        except InvalidArgument as exc:
            return redirect("/account", f"Not changed: {exc}")
        return redirect("/account", "Password changed.")

    assert CSRF_FIELD == "csrf_token"  # the form field every handler above reads
    return r
