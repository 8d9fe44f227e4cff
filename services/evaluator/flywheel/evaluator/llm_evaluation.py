"""The LLM gate's use cases, free of any transport: golden sets, the reviewed answers of LLM traffic, and one
evaluation of an adapter, LLM, distilled student or prompt template version against its champion.

An evaluation runs every question of the application's newest golden set, plus the recent reviewed answers
held out from the candidate's training (decided at or after its `eval_start` tag), through inference's
`Generate` twice, with model = the application: pinned to the candidate, and pinned to the champion (greedy,
fixed seed). Both answer sets are scored the same way (llm_metrics), the golden set's gate decides, and the
evaluator's usual completion (report + evaluations.completed in one transaction) follows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Counter
from psycopg import AsyncConnection

from flywheel.common.clients.ports import ContentGuard, GeneratedAnswer, ModelRegistry, TextEmbedder, TextGenerator
from flywheel.common.errors import FailedPrecondition, FlywheelError, InvalidArgument, NotFound, PoisonEvent
from flywheel.common.prompt_templates import APPLICATION_TAG
from flywheel.evaluator import llm_metrics as lm
from flywheel.evaluator.golden import REVIEWED, GoldenSet, parse_golden_set
from flywheel.evaluator.report import finite
from flywheel.evaluator.store import LLM, EvaluationRow, EvaluatorStore, GoldenSetRow
from flywheel.proto.events.v1 import common_pb2, models_pb2, reviews_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

SOURCE = "flywheel/evaluator"
CHAMPION = "champion"
EVAL_START_TAG = "eval_start"
DISTILLED_TAG = "distilled_from"
LLM_KINDS = frozenset({common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER, common_pb2.MODEL_KIND_PROMPT})
Verdict = models_pb2.EvaluationVerdict

REVIEWS = Counter("flywheel_evaluator_reviews_total", "reviews.requested / reviews.completed events, by outcome.",
                  ["outcome"])
QUESTIONS = Counter("flywheel_evaluator_llm_questions_total", "Questions answered for LLM evaluations, by arm.",
                    ["arm"])


def kind_name(kind: int) -> str:
    return common_pb2.ModelKind.Name(kind)  # type: ignore[arg-type]


def last_user_turn(exchange: object) -> str:
    messages = list(getattr(exchange, "messages", []))
    for message in reversed(messages):
        if message.role == "user":
            return str(message.content)
    return ""


def parse_time(tag: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(tag.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"the {name} tag {tag!r} is not an ISO-8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read_golden_dir(directory: Path) -> list[tuple[str, str]] | None:
    """(file name, text) of each *.yaml / *.yml of `directory`, by name; None when it is not a directory."""
    if not directory.is_dir():
        return None
    return [(p.name, p.read_text()) for p in sorted(directory.iterdir()) if p.suffix in (".yaml", ".yml")]


class LlmEvaluations:
    """Golden sets, reviewed answers and LLM evaluations (executed by the Evaluator's worker)."""

    def __init__(self, store: EvaluatorStore, registry: ModelRegistry, generator: TextGenerator, *,
                 embedder: TextEmbedder | None = None, guard: ContentGuard | None = None,
                 prices: lm.Prices = lm.Prices(), concurrency: int = 2) -> None:
        self.store = store
        self.registry = registry
        self.generator = generator
        self.embedder = embedder
        self.guard = guard
        self.prices = prices
        self.concurrency = max(1, concurrency)

    # -- golden sets ---------------------------------------------------------------------------

    async def put_golden_set(self, text: str, created_by: str = "") -> tuple[GoldenSetRow, bool]:
        golden = parse_golden_set(text)
        return await self.store.put_golden_set(
            golden.application, golden.description, golden.content_sha256(), text, golden.count("answerable"),
            golden.count("refusal"), created_by)

    async def push_golden_dir(self, directory: Path) -> list[GoldenSetRow]:
        """Push every golden set (*.yaml) of `directory` (start-up seeding; unchanged ones store nothing). A broken
        file is logged and skipped: the others still count."""
        files = await asyncio.to_thread(read_golden_dir, directory)
        if files is None:
            log.warning("golden set directory not found", extra={"dir": str(directory)})
            return []
        pushed = []
        for name, text in files:
            try:
                row, created = await self.put_golden_set(text, f"{SOURCE} ({name})")
            except InvalidArgument as exc:
                log.error("golden set not pushed", extra={"file": name, "error": str(exc)})
                continue
            pushed.append(row)
            log.info("golden set " + ("stored" if created else "unchanged"), extra={
                "application": row.application, "version": row.version, "file": name})
        return pushed

    async def get_golden_set(self, application: str, version: int = 0) -> GoldenSetRow:
        if not application:
            raise InvalidArgument("application is empty")
        if version < 0:
            raise InvalidArgument(f"version must be 0 (the newest) or a version number, got {version}")
        found = await self.store.golden_set(application, version)
        if found is None:
            raise NotFound(f"application {application!r} has no golden set" + (f" version {version}" if version else
                                                                                  " (push one: flywheel golden push)"))
        return found

    async def list_golden_sets(self, application: str = "") -> list[GoldenSetRow]:
        return await self.store.golden_sets(application)

    # -- reviewed traffic ----------------------------------------------------------------------

    async def add_review_requests(self, conn: AsyncConnection, requests: Sequence[reviews_pb2.ReviewRequested]) -> None:
        rows = []
        for request in requests:
            question = last_user_turn(request.llm) if request.HasField("llm") else ""
            if not request.review_id or not question:
                REVIEWS.labels("not_llm").inc()
                continue
            rows.append({"review_id": request.review_id, "question": question, "completion": request.llm.completion,
                         "application": request.llm.application or request.model.name})
        if rows:
            REVIEWS.labels("question").inc(len(rows))
            await self.store.add_review_questions(conn, rows)

    async def add_review_decisions(self, conn: AsyncConnection,
                                   completed: Sequence[tuple[reviews_pb2.ReviewCompleted, datetime]]) -> None:
        rows = []
        for message, received_at in completed:
            usable = message.decision == reviews_pb2.REVIEW_DECISION_APPROVED or (
                message.decision == reviews_pb2.REVIEW_DECISION_CORRECTED and message.corrected_completion.strip())
            if not message.review_id or not usable:
                REVIEWS.labels("unusable_decision").inc()
                continue
            decided = message.completed_at.ToDatetime(UTC) if message.HasField("completed_at") else received_at
            rows.append({"review_id": message.review_id, "decision": int(message.decision),
                         "corrected": message.corrected_completion, "decided_at": decided})
        if rows:
            REVIEWS.labels("decision").inc(len(rows))
            await self.store.add_review_decisions(conn, rows)

    # -- queueing ------------------------------------------------------------------------------

    async def skip_reason(self, conn: AsyncConnection, registered: models_pb2.ModelRegistered) -> str:
        """Why this registered LLM version gets no evaluation ('' = it gets one)."""
        application = registered.tags.get(APPLICATION_TAG, "")
        if not application:
            return "no_application"
        if await self.store.golden_set(application, conn=conn) is None:
            return "no_golden_set"
        return ""

    def row_for(self, registered: models_pb2.ModelRegistered, event_id: str, source: str) -> EvaluationRow:
        if not registered.model.name or registered.model.version <= 0:
            raise PoisonEvent(f"models.registered event {event_id} names no version (model "
                              f"{registered.model.name!r}, version {registered.model.version})")
        return EvaluationRow(id=str(uuid.uuid4()), model_name=registered.model.name,
                             candidate_version=registered.model.version, trigger_event_id=event_id,
                             requested_by=source, kind=LLM)

    async def check_evaluable(self, candidate: reg.ModelVersion) -> GoldenSetRow:
        """The golden set an RPC-requested evaluation of `candidate` will use; FailedPrecondition when none."""
        application = candidate.tags.get(APPLICATION_TAG, "")
        if not application:
            raise FailedPrecondition(
                f"{candidate.model_name} v{candidate.version} ({kind_name(candidate.kind)}) has no "
                f"'{APPLICATION_TAG}' tag: the LLM gate needs the application whose golden set judges it")
        found = await self.store.golden_set(application)
        if found is None:
            raise FailedPrecondition(f"application {application!r} has no golden set: push one with "
                                     "`flywheel golden push FILE`")
        return found

    # -- one evaluation ------------------------------------------------------------------------

    async def evaluate(self, row: EvaluationRow, candidate: reg.ModelVersion,
                       baseline: reg.ModelVersion | None) -> None:
        """Fill `row` (verdict, metrics, checks, report) for `candidate` against `baseline` (None: no champion)."""
        if candidate.kind not in LLM_KINDS:
            raise InvalidArgument(f"{candidate.model_name} v{candidate.version} is {kind_name(candidate.kind)}, "
                                  "not an LLM, adapter or prompt")
        stored = await self.check_evaluable(candidate)
        golden = parse_golden_set(stored.yaml)
        gate = golden.gate
        as_of = datetime.now(UTC)
        items = lm.items_of(golden.items)
        reviewed, window = await self._reviewed(golden, candidate, as_of)
        items.extend(reviewed)
        notes: list[str] = [window]
        prompt = candidate.kind == common_pb2.MODEL_KIND_PROMPT
        cand_answers = await self._answer_all(golden.application, items, candidate.version, prompt, gate.max_tokens,
                                              gate.seed, "candidate")
        base_answers = await self._answer_all(golden.application, items, baseline.version, prompt, gate.max_tokens,
                                              gate.seed, "baseline") if baseline is not None else None
        similarity = await self._similarities(items, cand_answers, base_answers, notes)
        toxicity = await self._toxicity(golden.application, items, cand_answers, base_answers, notes)
        cand_scores = [lm.score_answer(item, a, prices=self.prices, similarity=similarity[0][i],
                                       toxicity=toxicity[0][i]) for i, (item, a) in enumerate(zip(items, cand_answers,
                                                                                                  strict=True))]
        base_scores = None if base_answers is None else [
            lm.score_answer(item, a, prices=self.prices, similarity=similarity[1][i], toxicity=toxicity[1][i])
            for i, (item, a) in enumerate(zip(items, base_answers, strict=True))]
        cand_metrics = lm.aggregate(items, cand_scores)
        base_metrics = lm.aggregate(items, base_scores) if base_scores is not None else None
        distilled = DISTILLED_TAG in candidate.tags
        checks = lm.gate_checks(gate, cand_metrics, base_metrics, baseline.version if baseline else 0,
                                distilled=distilled)
        questions = lm.question_results(items, [a.text for a in cand_answers], cand_scores,
                                        [a.text for a in base_answers] if base_answers else None, base_scores,
                                        gate.correct_threshold)
        row.verdict = Verdict.EVALUATION_VERDICT_PASSED if checks and all(c.passed for c in checks) \
            else Verdict.EVALUATION_VERDICT_FAILED
        row.candidate_metrics = finite(cand_metrics)
        row.baseline_metrics = finite(base_metrics) if base_metrics is not None else {}
        row.checks = [asdict(c) for c in checks]
        row.rows = len(items)
        row.report.update({
            "kind": LLM, "candidate_kind": kind_name(candidate.kind), "distilled": distilled,
            "golden_set": {"application": golden.application, "version": stored.version,
                           "content_sha256": stored.content_sha256},
            "pinned": "prompt_version" if prompt else "model_version",
            "baseline_version": baseline.version if baseline else 0,
            "candidate_metrics": row.candidate_metrics, "baseline_metrics": row.baseline_metrics,
            "checks": row.checks, "gate": gate.model_dump(mode="json"), "notes": notes,
            "reviewed_items": len(reviewed), "answered_before": as_of.isoformat(),
            "questions": [asdict(q) for q in questions],
            "failing": [q.item_id for q in questions if q.failing],
            "served_by": {"candidate": sorted({(a.model_version, a.prompt_version) for a in cand_answers}),
                          "baseline": sorted({(a.model_version, a.prompt_version) for a in base_answers or []})},
        })

    async def _reviewed(self, golden: GoldenSet, candidate: reg.ModelVersion,
                        as_of: datetime) -> tuple[list[lm.EvalItem], str]:
        tag = candidate.tags.get(EVAL_START_TAG, "")
        if not tag:
            return [], (f"no reviewed traffic: the candidate has no {EVAL_START_TAG} tag (reviews it was not trained "
                        "on are unknown)")
        start = parse_time(tag, EVAL_START_TAG)
        found = await self.store.reviewed_answers(golden.application, start, as_of, golden.gate.max_reviewed_items)
        items = [lm.EvalItem(f"review:{r.review_id}", REVIEWED, r.question, r.answer, (r.answer,)) for r in found]
        return items, (f"{len(items)} reviewed answers decided in [{start.isoformat()}, {as_of.isoformat()}) "
                       f"(at most {golden.gate.max_reviewed_items})")

    async def _answer_all(self, application: str, items: Sequence[lm.EvalItem], version: int, prompt: bool,
                          max_tokens: int, seed: int, arm: str) -> list[GeneratedAnswer]:
        """Every item answered by `application` pinned to `version` (of its prompt or its model), in item order,
        at most `concurrency` at a time. NotFound / InvalidArgument: ERROR; Unavailable: the worker waits."""
        gate = asyncio.Semaphore(self.concurrency)

        async def answer(item: lm.EvalItem) -> GeneratedAnswer:
            async with gate:
                got = await self.generator.generate(
                    application, [{"role": "user", "content": item.question}], max_tokens=max_tokens,
                    temperature=0.0, seed=seed, model_version=0 if prompt else version,
                    prompt_version=version if prompt else 0)
            QUESTIONS.labels(arm).inc()
            return got

        return list(await asyncio.gather(*(answer(item) for item in items)))

    async def _similarities(self, items: Sequence[lm.EvalItem], cand: Sequence[GeneratedAnswer],
                            base: Sequence[GeneratedAnswer] | None,
                            notes: list[str]) -> tuple[list[float | None], list[float | None]]:
        """Cosine similarity of each answer with its reference (answerable items), through the embedder."""
        none: list[float | None] = [None] * len(items)
        if self.embedder is None:
            notes.append("semantic_similarity omitted: no embedder configured (answer_correctness = token_f1)")
            return none, list(none)
        indices = [i for i, item in enumerate(items) if item.answerable]
        texts = [items[i].reference for i in indices] + [cand[i].text for i in indices] + \
            ([base[i].text for i in indices] if base is not None else [])
        try:
            got = await self.embedder.embed(texts)
        except FlywheelError as exc:
            notes.append(f"semantic_similarity omitted: the embedder failed ({exc}); answer_correctness = token_f1")
            return none, list(none)
        n = len(indices)
        refs = got.vectors[:n]
        out_c, out_b = list(none), list(none)
        for j, i in enumerate(indices):
            out_c[i] = lm.cosine(refs[j], got.vectors[n + j])
            if base is not None:
                out_b[i] = lm.cosine(refs[j], got.vectors[2 * n + j])
        notes.append(f"semantic_similarity by {got.model_name} v{got.model_version}; answer_correctness = mean of "
                     "token_f1 and semantic_similarity")
        return out_c, out_b

    async def _toxicity(self, application: str, items: Sequence[lm.EvalItem], cand: Sequence[GeneratedAnswer],
                        base: Sequence[GeneratedAnswer] | None,
                        notes: list[str]) -> tuple[list[float | None], list[float | None]]:
        """The guard's toxicity score of each answer (its output check, not enforced here)."""
        none: list[float | None] = [None] * len(items)
        if self.guard is None:
            notes.append("toxicity omitted: no guard configured")
            return none, list(none)

        async def score(item: lm.EvalItem, answer: GeneratedAnswer) -> float | None:
            if not answer.text.strip():
                return 0.0
            verdict = await self.guard.check_output(application, answer.text, user_input=item.question)  # type: ignore[union-attr]
            value = (verdict.scores or {}).get("toxicity")
            return float(value) if value is not None and math.isfinite(value) else None

        try:
            out_c = [await score(item, a) for item, a in zip(items, cand, strict=True)]
            out_b = [await score(item, a) for item, a in zip(items, base, strict=True)] if base else list(none)
        except FlywheelError as exc:
            notes.append(f"toxicity omitted: the guard failed ({exc})")
            return none, list(none)
        if all(v is None for v in out_c):
            notes.append(f"toxicity omitted: the guard's policy for {application!r} scores no toxicity")
        return out_c, out_b
