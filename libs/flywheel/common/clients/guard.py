"""`GuardClient`: input and output checks and policy look-ups through the guard service (the
`ContentGuard` port)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import ContentGuard, GuardChunk, GuardPolicy, GuardVerdict
from flywheel.common.errors import NotFound
from flywheel.proto.guard.v1 import guard_service_pb2 as pb
from flywheel.proto.guard.v1 import guard_service_pb2_grpc as pb_grpc

SERVICE = "guard"
ACTIONS = {pb.ACTION_ALLOW: "allow", pb.ACTION_REDACT: "redact", pb.ACTION_BLOCK: "block",
           pb.ACTION_ESCALATE: "escalate"}


def verdict_from_proto(v: pb.Verdict) -> GuardVerdict:
    return GuardVerdict(
        verdict_id=v.verdict_id, action=ACTIONS.get(v.action, "unspecified"), blocked=v.blocked,
        escalated=v.escalated, text=v.text, rule=v.rule, category=v.category, message=v.message,
        application=v.application, policy_version=v.policy_version, hold_chars=v.hold_chars,
        spans=tuple((s.kind, s.start, s.end) for s in v.spans), scores={r.rail: r.score for r in v.rails},
        rails_fired=tuple(v.rails_fired), detectors=v.detectors, latency_ms=v.latency_ms)


def policy_from_proto(p: pb.Policy) -> GuardPolicy:
    return GuardPolicy(application=p.application, version=p.version, fail_closed=p.fail_closed,
                       stream_window_chars=p.stream_window_chars, blocked_input_response=p.blocked_input_response,
                       check_timeout_ms=p.check_timeout_ms, yaml=p.yaml)


def _chunks(context: Sequence[GuardChunk]) -> list[pb.ContextChunk]:
    return [pb.ContextChunk(chunk_id=c.chunk_id, document_id=c.document_id, title=c.title, text=c.text,
                            score=c.score) for c in context]


class GuardClient(ServiceClient, ContentGuard):
    """One channel kept open (a hot path: inference checks every input and every streamed window); `close` it.

    Failures are domain errors: `Unavailable` when the guard is down or slower than `timeout` (the caller
    applies the policy's fail_closed), `InvalidArgument` for a bad request, `NotFound` for an application
    without a policy."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 1.0) -> None:
        self.address = address
        self.timeout = timeout
        self._connection = Connection(address, pb_grpc.GuardServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=True)

    async def check_input(self, application: str, text: str, *, request_id: str = "",
                          context: Sequence[GuardChunk] = (), timeout: float | None = None) -> GuardVerdict:
        request = pb.CheckInputRequest(application=application, request_id=request_id, text=text,
                                       context=_chunks(context))
        async with self._connection.stub() as stub:
            try:
                response = await stub.CheckInput(request, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return verdict_from_proto(response.verdict)

    async def check_output(self, application: str, text: str, *, request_id: str = "", user_input: str = "",
                           context: Sequence[GuardChunk] = (), passed_text: str = "", final: bool = True,
                           timeout: float | None = None) -> GuardVerdict:
        request = pb.CheckOutputRequest(application=application, request_id=request_id, text=text,
                                        user_input=user_input, context=_chunks(context), passed_text=passed_text,
                                        final=final)
        async with self._connection.stub() as stub:
            try:
                response = await stub.CheckOutput(request, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return verdict_from_proto(response.verdict)

    async def policy(self, application: str) -> GuardPolicy | None:
        async with self._connection.stub() as stub:
            try:
                response = await stub.GetPolicy(pb.GetPolicyRequest(application=application), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                error = rpc.domain_error(SERVICE, self.address, exc)
                if isinstance(error, NotFound):
                    return None
                raise error from exc
        return policy_from_proto(response.policy)

    async def put_policy(self, application: str, yaml_text: str) -> GuardPolicy:
        """Store a new version of the application's policy (operator role)."""
        async with self._connection.stub() as stub:
            try:
                response = await stub.PutPolicy(pb.PutPolicyRequest(application=application, yaml=yaml_text),
                                                timeout=max(self.timeout, 10.0))
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return policy_from_proto(response.policy)
