"""The JSON API beside the pages (/api/v1, schema at /api/v1/openapi.json): the same use cases for scripts,
other tools and the page's own script. It takes a platform bearer token (`authorization: Bearer ...`,
roles reviewer, lead or admin) or the session cookie (then state changes need the X-CSRF-Token header).
Errors are `{"error": "..."}` with 400 (bad input), 401, 403, 404, 409 (conflicts with the item's state).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from flywheel.common.errors import InvalidArgument
from flywheel.review.access import Unauthenticated
from flywheel.review.export import jsonl, parquet
from flywheel.review.intake import REASONS
from flywheel.review.queues import ACTIONS, Claim, Verdict
from flywheel.review.reports import ExportFilter
from flywheel.review.store import Decision, Item, User
from flywheel.review.web import CSRF_HEADER, Caller, WebContext, seconds_until

# -- wire types ----------------------------------------------------------------------------------------


class ModelRefOut(BaseModel):
    name: str
    version: int


class ItemOut(BaseModel):
    """An item as a reviewer sees it."""

    id: str
    queue: str
    kind: Literal["predictive", "answer"]
    request_id: str
    entity_id: str
    reason: str
    priority: int
    model: ModelRefOut
    prompt: ModelRefOut
    guard_verdict_id: str
    status: Literal["open", "conflict", "done"]
    labels_needed: int
    labels_done: int
    requested_at: datetime
    event_time: datetime
    entity_keys: dict[str, str]
    content: dict[str, Any] = Field(description="What was predicted or answered, the (redacted) inputs, the "
                                                "retrieved chunks, the request's context.")
    choices: list[str] = Field(description="Label names (predictive) or actions (answers) a decision may take.")


class ClaimOut(BaseModel):
    item: ItemOut
    lease_expires_at: datetime


class VerdictIn(BaseModel):
    """Predictive items: `label` (a label name of the queue). Answers: `action` approve, correct (with
    `corrected_completion`) or reject (with the reason in `comment`)."""

    label: str = Field("", max_length=200)
    action: str = Field("", max_length=20)
    corrected_completion: str = ""
    comment: str = ""

    def verdict(self) -> Verdict:
        return Verdict(self.label, self.action, self.corrected_completion, self.comment)


class DecisionOut(BaseModel):
    id: str
    item_id: str
    queue: str
    reviewer: str
    action: str
    category: str
    label: dict[str, Any]
    corrected_completion: str
    comment: str
    resolution: bool
    decided_at: datetime | None
    undo_until: datetime | None
    undone_at: datetime | None


class DecidedOut(BaseModel):
    decision: DecisionOut
    item_status: str


class ItemDetailOut(BaseModel):
    item: ItemOut
    decisions: list[DecisionOut]


class LeaseOut(BaseModel):
    lease_expires_at: datetime
    lease_seconds_left: float


class UserIn(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: Literal["reviewer", "lead", "admin"] = "reviewer"
    queues: list[str] = Field(default_factory=list, description="Queues the user works or leads; empty = all.")


class UserOut(BaseModel):
    username: str
    role: str
    queues: list[str]
    created_at: datetime | None
    created_by: str
    disabled: bool


class MeOut(BaseModel):
    name: str
    role: str
    queues: list[str]
    via: Literal["session", "token"]


def item_out(ctx: WebContext, item: Item) -> ItemOut:
    choices = list(ACTIONS) if item.kind == "answer" else ctx.settings.labels_for(item.queue)
    return ItemOut(
        id=item.id, queue=item.queue, kind=item.kind, request_id=item.request_id,  # type: ignore[arg-type]
        entity_id=item.entity_id, reason=REASONS.get(item.reason, str(item.reason)), priority=item.priority,
        model=ModelRefOut(name=item.model_name, version=item.model_version),
        prompt=ModelRefOut(name=item.prompt_name, version=item.prompt_version), guard_verdict_id=item.guard_verdict_id,
        status=item.status, labels_needed=item.labels_needed, labels_done=item.labels_done,  # type: ignore[arg-type]
        requested_at=item.requested_at, event_time=item.event_time, entity_keys=item.entity_keys,
        content=item.content, choices=choices)


def decision_out(d: Decision) -> DecisionOut:
    return DecisionOut(id=d.id, item_id=d.item_id, queue=d.queue, reviewer=d.reviewer, action=d.action,
                       category=d.category, label=d.label, corrected_completion=d.corrected_completion,
                       comment=d.comment, resolution=d.resolution, decided_at=d.decided_at, undo_until=d.undo_until,
                       undone_at=d.undone_at)


def user_out(u: User) -> UserOut:
    return UserOut(username=u.username, role=u.role, queues=u.queues, created_at=u.created_at,
                   created_by=u.created_by, disabled=u.disabled_at is not None)


def claim_response(ctx: WebContext, claim: Claim | None) -> Response:
    if claim is None:
        return Response(status_code=204)
    body = ClaimOut(item=item_out(ctx, claim.item), lease_expires_at=claim.lease_expires_at)
    return JSONResponse(body.model_dump(mode="json"))


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["review"])

    async def caller(request: Request) -> Caller:
        found = await ctx.caller(request)
        if found is None:
            raise Unauthenticated("log in, or send `authorization: Bearer <token>` (role reviewer, lead or admin)")
        return found

    async def changing(request: Request, who: Caller = Depends(caller)) -> Caller:
        ctx.check_csrf(who, request.headers.get(CSRF_HEADER))
        return who

    @r.get("/me", response_model=MeOut, summary="Who the caller is")
    async def me(who: Caller = Depends(caller)) -> MeOut:
        return MeOut(name=who.actor.name, role=who.actor.role, queues=sorted(who.actor.queues),
                     via=who.via)  # type: ignore[arg-type]

    @r.get("/queues", summary="Queues the caller works: depth, age of the oldest open item, work in progress")
    async def list_queues(who: Caller = Depends(caller)) -> list[dict[str, Any]]:
        progress = await ctx.reports.progress(who.actor)
        return [vars(q) for q in progress.queues]

    @r.post("/queues/{queue}/claim", response_model=ClaimOut, status_code=200,
            responses={204: {"description": "Nothing left for the caller in this queue"}},
            summary="Claim the next item (or get back the one the caller holds), leased for lease_seconds")
    async def claim(queue: str, who: Caller = Depends(changing)) -> Response:
        return claim_response(ctx, await ctx.queues.claim_next(who.actor, queue))

    @r.get("/queues/{queue}/current", response_model=ClaimOut,
           responses={204: {"description": "The caller holds no item in this queue"}},
           summary="The item the caller holds in the queue, if any")
    async def current(queue: str, who: Caller = Depends(caller)) -> Response:
        return claim_response(ctx, await ctx.queues.current(who.actor, queue))

    @r.get("/items/{item_id}", response_model=ItemDetailOut, summary="An item and its standing decisions")
    async def get_item(item_id: str, who: Caller = Depends(caller)) -> ItemDetailOut:
        item, decisions = await ctx.queues.item(who.actor, item_id)
        return ItemDetailOut(item=item_out(ctx, item), decisions=[decision_out(d) for d in decisions])

    @r.post("/items/{item_id}/decision", response_model=DecidedOut, status_code=201,
            summary="Decide an item the caller holds (label, or approve / correct / reject)")
    async def decide(item_id: str, body: VerdictIn, who: Caller = Depends(changing)) -> DecidedOut:
        decided = await ctx.queues.decide(who.actor, item_id, body.verdict())
        return DecidedOut(decision=decision_out(decided.decision), item_status=decided.item_status)

    @r.post("/items/{item_id}/skip", response_model=ItemOut, summary="Give a held item back; not offered to "
                                                                      "the caller again")
    async def skip(item_id: str, who: Caller = Depends(changing)) -> ItemOut:
        return item_out(ctx, await ctx.queues.skip(who.actor, item_id))

    @r.post("/items/{item_id}/lease", response_model=LeaseOut, summary="Renew the caller's lease on an item")
    async def renew(item_id: str, who: Caller = Depends(changing)) -> LeaseOut:
        expires = await ctx.queues.renew(who.actor, item_id)
        return LeaseOut(lease_expires_at=expires, lease_seconds_left=seconds_until(expires))

    @r.post("/decisions/{decision_id}/undo", response_model=ItemOut,
            summary="Undo the caller's decision within undo_seconds; the item goes back to the caller")
    async def undo(decision_id: str, who: Caller = Depends(changing)) -> ItemOut:
        return item_out(ctx, await ctx.queues.undo(who.actor, decision_id))

    @r.get("/conflicts", response_model=list[ItemDetailOut], summary="Double-labelled items whose labels "
                                                                     "disagree (lead)")
    async def conflicts(queue: str | None = None, who: Caller = Depends(caller)) -> list[ItemDetailOut]:
        found = await ctx.queues.conflicts(who.actor, queue)
        return [ItemDetailOut(item=item_out(ctx, i), decisions=[decision_out(d) for d in ds]) for i, ds in found]

    @r.post("/items/{item_id}/resolve", response_model=DecidedOut, status_code=201,
            summary="A lead's final decision on a conflict")
    async def resolve(item_id: str, body: VerdictIn, who: Caller = Depends(changing)) -> DecidedOut:
        decided = await ctx.queues.resolve(who.actor, item_id, body.verdict())
        return DecidedOut(decision=decision_out(decided.decision), item_status=decided.item_status)

    @r.get("/progress", summary="Per-queue depth and age, per-reviewer counts and throughput")
    async def progress(hours: float = Query(24.0, gt=0, le=24 * 365), who: Caller = Depends(caller),
                       ) -> dict[str, Any]:
        p = await ctx.reports.progress(who.actor, hours)
        return {"since": p.since, "queues": [vars(q) for q in p.queues], "reviewers": [vars(x) for x in p.reviewers]}

    @r.get("/quality", summary="Agreement on double-labelled items: Cohen's kappa per queue and reviewer pair (lead)")
    async def quality(who: Caller = Depends(caller)) -> dict[str, Any]:
        q = await ctx.reports.quality(who.actor)

        def agreement(a: Any) -> dict[str, Any]:
            return {"items": a.items, "agreed": a.agreed, "observed": a.observed, "kappa": a.kappa}
        return {"queues": {name: agreement(a) for name, a in q.queues.items()},
                "pairs": [{"queue": p.queue, "reviewer": p.reviewer, "other": p.other, **agreement(p.agreement)}
                          for p in q.pairs], "conflicts": q.conflicts}

    @r.get("/export", summary="Decisions as JSON Lines or Parquet, filtered by queue, reviewer and time (lead)",
           responses={200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}})
    async def export(format: Literal["jsonl", "parquet"] = "jsonl", queue: str = "", reviewer: str = "",
                     since: str = Query("", description="ISO time (UTC unless it names a zone): decided at or after"),
                     until: str = Query("", description="ISO time: decided before"),
                     who: Caller = Depends(caller)) -> Response:
        flt = ExportFilter(queue.strip() or None, reviewer.strip() or None, _time("since", since),
                           _time("until", until))
        records = ctx.reports.export(who.actor, flt)
        first = await _peek(records)  # permission and filter errors surface before the response starts
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"decisions-{queue or 'all'}-{stamp}"
        if format == "parquet":
            data = await parquet(first)
            return StreamingResponse(_chunks(data), media_type="application/vnd.apache.parquet",
                                     headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})
        return StreamingResponse(jsonl(first), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'})

    @r.get("/users", response_model=list[UserOut], summary="Users (lead: its reviewers; admin: everyone)")
    async def users(who: Caller = Depends(caller)) -> list[UserOut]:
        return [user_out(u) for u in await ctx.accounts.list_users(who.actor)]

    @r.post("/users", response_model=UserOut, status_code=201,
            summary="Create a user (lead: reviewers of its queues; admin: anyone)")
    async def create_user(body: UserIn, who: Caller = Depends(changing)) -> UserOut:
        return user_out(await ctx.accounts.create_user(who.actor, body.username, body.password, body.role,
                                                       body.queues))

    @r.post("/users/{username}/disable", response_model=UserOut, summary="Disable a user (ends its sessions)")
    async def disable(username: str, who: Caller = Depends(changing)) -> UserOut:
        return user_out(await ctx.accounts.set_disabled(who.actor, username, True))

    @r.post("/users/{username}/enable", response_model=UserOut, summary="Enable a disabled user")
    async def enable(username: str, who: Caller = Depends(changing)) -> UserOut:
        return user_out(await ctx.accounts.set_disabled(who.actor, username, False))

    return r


def _time(name: str, value: str) -> datetime | None:
    """An optional ISO time from a query (a form's empty field = none); UTC when it names no zone."""
    if not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(f"{name} must be an ISO time like 2026-03-01T12:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def _peek(records: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Start the iterator (so its checks run now) and give back one that yields everything."""
    try:
        head = await records.__anext__()
    except StopAsyncIteration:
        async def empty() -> AsyncIterator[dict[str, Any]]:
            return
            yield  # an async generator that yields nothing
        return empty()

    async def joined() -> AsyncIterator[dict[str, Any]]:
        yield head
        async for r in records:
            yield r
    return joined()


async def _chunks(data: Any, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    try:
        while chunk := data.read(size):
            yield chunk
    finally:
        data.close()
