"""gRPC front door of the guard: converts messages and calls the use cases."""

from __future__ import annotations

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.guard.checks import INPUT, OUTPUT, CheckRequest, ContextChunk, Guard, StoredPolicy, Verdict
from flywheel.guard.policies import PolicyBook
from flywheel.proto.guard.v1 import guard_service_pb2 as pb
from flywheel.proto.guard.v1 import guard_service_pb2_grpc as pb_grpc

# Who may call what: checks come from services (inference) and operators trying a policy out; a check
# writes the audit trail, so readers may not. Policies are an operator's decision; reading them is open to
# readers, operators and services (inference reads fail_closed and the stream window).
ROLES: dict[str, auth.Roles] = {
    "CheckInput": auth.WRITE, "CheckOutput": auth.WRITE,
    "PutPolicy": auth.OPERATE, "GetPolicy": auth.READ, "ListPolicies": auth.READ,
}
ACTIONS = {"allow": pb.ACTION_ALLOW, "redact": pb.ACTION_REDACT, "block": pb.ACTION_BLOCK,
           "escalate": pb.ACTION_ESCALATE}


def verdict_to_proto(verdict: Verdict) -> pb.Verdict:
    return pb.Verdict(
        verdict_id=verdict.verdict_id, action=ACTIONS[verdict.action], blocked=verdict.blocked,
        escalated=verdict.escalated, text=verdict.text,
        spans=[pb.Span(kind=s.kind, start=s.start, end=s.end, replacement=s.replacement) for s in verdict.spans],
        rule=verdict.rule, category=verdict.category, message=verdict.message,
        rails=[pb.RailResult(rail=r.rail, score=r.score, fired=r.fired, action=r.action, category=r.category,
                             detail=r.detail) for r in verdict.rails],
        rails_fired=verdict.rails_fired, application=verdict.application, policy_version=verdict.policy_version,
        latency_ms=verdict.latency_ms, detectors=verdict.detectors, hold_chars=verdict.hold_chars)


def policy_to_proto(policy: StoredPolicy) -> pb.Policy:
    document = policy.document
    message = pb.Policy(application=policy.application, version=policy.version, yaml=policy.yaml,
                        created_by=policy.created_by, fail_closed=document.fail_closed,
                        stream_window_chars=document.stream.window_chars,
                        blocked_input_response=document.blocked_input_response,
                        check_timeout_ms=document.check_timeout_ms, description=document.description)
    if policy.created_at is not None:
        message.created_at.FromDatetime(policy.created_at)
    return message


def _context(chunks: list[pb.ContextChunk]) -> tuple[ContextChunk, ...]:
    return tuple(ContextChunk(chunk_id=c.chunk_id, document_id=c.document_id, title=c.title, text=c.text,
                              score=c.score) for c in chunks)


class GuardServicer(pb_grpc.GuardServiceServicer):
    def __init__(self, guard: Guard, policies: PolicyBook) -> None:
        self.guard = guard
        self.policies = policies

    @map_errors
    async def CheckInput(self, request: pb.CheckInputRequest,
                         context: grpc.aio.ServicerContext) -> pb.CheckInputResponse:
        verdict = await self.guard.check(CheckRequest(
            stage=INPUT, application=request.application, text=request.text, request_id=request.request_id,
            context=_context(list(request.context)), principal=auth.principal_name()))
        return pb.CheckInputResponse(verdict=verdict_to_proto(verdict))

    @map_errors
    async def CheckOutput(self, request: pb.CheckOutputRequest,
                          context: grpc.aio.ServicerContext) -> pb.CheckOutputResponse:
        verdict = await self.guard.check(CheckRequest(
            stage=OUTPUT, application=request.application, text=request.text, request_id=request.request_id,
            context=_context(list(request.context)), user_input=request.user_input,
            passed_text=request.passed_text, final=request.final if request.HasField("final") else True,
            principal=auth.principal_name()))
        return pb.CheckOutputResponse(verdict=verdict_to_proto(verdict))

    @map_errors
    async def PutPolicy(self, request: pb.PutPolicyRequest, context: grpc.aio.ServicerContext) -> pb.PutPolicyResponse:
        stored = await self.policies.put(request.application, request.yaml, auth.principal_name())
        return pb.PutPolicyResponse(policy=policy_to_proto(stored))

    @map_errors
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        return pb.GetPolicyResponse(policy=policy_to_proto(
            await self.policies.get(request.application, int(request.version))))

    @map_errors
    async def ListPolicies(self, request: pb.ListPoliciesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListPoliciesResponse:
        return pb.ListPoliciesResponse(policies=[policy_to_proto(p) for p in await self.policies.newest()])
