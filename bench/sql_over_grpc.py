"""`python bench/sql_over_grpc.py PORT DATABASE_URL SCHEMA COLLECTION_ID UNFILTERED_PATH`: the thinnest gRPC
wrapper of the retriever's search statement, a peer of the retrieval benchmark.

A grpc.aio server on uvloop (as the retriever) answering RetrieverService.Retrieve and nothing else: the
request's vector and filter go into the statement the service runs (`search_sql`, path UNFILTERED_PATH without
a filter, "auto" with one), executed on a psycopg connection set up as the service's (one per concurrent
call, up to the benchmark's 8 callers, the most recently used first, as the benchmark's plain psycopg peer
does), and each row becomes a RetrievedChunk. No authentication, no validation, no pool, no collection
lookup, no metrics, no other service parts. Retrieve measured against this server is the service's own
overhead; this server measured against the same SQL in psycopg is what one gRPC call and one more process
hop cost on this machine.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.retriever.api import filter_of
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.domain import Filter
from flywheel.retriever.main import search_settings
from flywheel.retriever.store import SearchPlan, register_vector, search_sql

CONNECTIONS = 8  # the benchmark's concurrent callers
SERVICE = pb.DESCRIPTOR.services_by_name["RetrieverService"].full_name


def chunk_of(row: dict[str, Any]) -> pb.RetrievedChunk:
    return pb.RetrievedChunk(
        chunk_id=row["chunk_id"], document_id=row["document_id"], title=row["title"], source=row["source"],
        index=row["chunk_index"], text=row["text"], start_offset=row["start_offset"], end_offset=row["end_offset"],
        section=row["section"], score=row["score"], vector_rank=row["vector_rank"], text_rank=row["text_rank"],
        similarity=row["similarity"], metadata=row["metadata"], doc_type=row["doc_type"], tags=row["tags"])


async def search_connections(database_url: str, schema: str, settings: RetrieverSettings,
                             count: int) -> list[AsyncConnection]:
    """Plain psycopg connections set up as the retriever's are: its schema first, its search settings, binary
    vector parameters."""
    connections = []
    for _ in range(count):
        conn = await AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row)
        await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
        for key, value in search_settings(settings).items():
            await conn.execute("SELECT set_config(%s, %s, false)", (key, value))
        await register_vector(conn)
        connections.append(conn)
    return connections


async def serve(port: int, database_url: str, schema: str, collection_id: int, unfiltered_path: str) -> None:
    settings = RetrieverSettings()
    connections = await search_connections(database_url, schema, settings, CONNECTIONS)
    free = list(connections)

    async def retrieve(request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        flt = filter_of(request.filter) if request.HasField("filter") else Filter()
        plan = SearchPlan(collection_id=collection_id, tenant="default", model_version=1,
                          dims=len(request.vector.values), k=request.k, candidates=max(settings.candidates, request.k),
                          vector=request.vector.values, keywords="", vector_weight=1.0, text_weight=0.0, rrf_k=60,
                          filter=flt, path=unfiltered_path if flt.empty else "auto",
                          exact_max_rows=settings.exact_search_max_rows)
        statement, params = search_sql(plan)
        conn = free.pop()
        try:
            rows = await (await conn.execute(statement, params)).fetchall()
        finally:
            free.append(conn)
        return pb.RetrieveResponse(chunks=[chunk_of(row) for row in rows])

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Retrieve": grpc.unary_unary_rpc_method_handler(
            retrieve, request_deserializer=pb.RetrieveRequest.FromString,
            response_serializer=pb.RetrieveResponse.SerializeToString)})])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        for conn in connections:
            await conn.close()


def main(argv: list[str]) -> None:
    if len(argv) != 5 or "--help" in argv or "-h" in argv:
        sys.exit(__doc__)
    port, database_url, schema, collection_id, unfiltered_path = argv
    uvloop.run(serve(int(port), database_url, schema, int(collection_id), unfiltered_path))


if __name__ == "__main__":
    main(sys.argv[1:])
