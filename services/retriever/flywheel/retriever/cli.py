"""`flywheel collections create|list`, `flywheel ingest PATH... --collection NAME` and
`flywheel retrieve "query" --collection NAME`: the retriever from a terminal.

Files go to the retriever raw (their bytes): it extracts the text, so the CLI and API users get the
same extraction. A file the retriever refuses is reported and skipped; the exit code says whether any was.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from flywheel.common.cli import client_auth
from flywheel.common.clients.retriever import FILE_TYPES, RetrieverClient, file_input, metadata_filter
from flywheel.common.errors import FlywheelError, InvalidArgument
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb

console = Console()
errors = Console(stderr=True)
CONTEXT = {"help_option_names": ["-h", "--help"]}
ADDRESS = click.option("--address", envvar="FLYWHEEL_RETRIEVER_ADDR", default="127.0.0.1:50056", show_default=True,
                       help="Retriever gRPC address (FLYWHEEL_RETRIEVER_ADDR).")
TIMEOUT = click.option("--timeout", default=60.0, show_default=True, help="Deadline of each call, in seconds.")
TENANT = click.option("--tenant", default="", help="Tenant owning the collection (default: the default tenant).")


def run(func: Callable[..., Coroutine[Any, Any, int | None]]) -> Callable[..., None]:
    """Run an async command; a refused call is one red line and exit code 1 (2 for bad input)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = asyncio.run(func(*args, **kwargs))
        except InvalidArgument as exc:
            errors.print(f"[red]error[/red] {exc}")
            sys.exit(2)
        except FlywheelError as exc:
            errors.print(f"[red]error[/red] {exc}")
            sys.exit(1)
        sys.exit(code or 0)
    return wrapper


def client(address: str, timeout: float) -> RetrieverClient:
    return RetrieverClient(address, auth=client_auth(), timeout=timeout)


def model_text(ref: Any) -> str:
    return f"{ref.name} v{ref.version}" if ref.version else f"{ref.name} (not indexed yet)"


@click.group(context_settings=CONTEXT)
def collections() -> None:
    """Collections of documents for retrieval: create and list."""


@collections.command("create", context_settings=CONTEXT)
@click.argument("name")
@TENANT
@click.option("--description", default="", help="What the collection holds.")
@ADDRESS
@TIMEOUT
@run
async def create(name: str, tenant: str, description: str, address: str, timeout: float) -> None:
    """Create collection NAME (nothing happens if it exists)."""
    async with client(address, timeout) as c:
        coll, created = await c.create_collection(name, tenant=tenant, description=description)
    console.print(f"{'created' if created else 'exists:'} collection {coll.tenant}/{coll.name}, embedding model "
                  f"{model_text(coll.embedding_model)}")


@collections.command("list", context_settings=CONTEXT)
@TENANT
@ADDRESS
@TIMEOUT
@run
async def list_(tenant: str, address: str, timeout: float) -> None:
    """List collections (of --tenant, else every tenant's) with their counts, model and re-index progress."""
    async with client(address, timeout) as c:
        found = await c.list_collections(tenant)
    if not found:
        console.print("no collections")
        return
    table = Table("tenant", "collection", "documents", "chunks", "embedding model", "dims", "re-indexing",
                  "description")
    for coll in found:
        pending = (f"{coll.pending_embedding_model.name} v{coll.pending_embedding_model.version}: "
                   f"{coll.pending_documents_done}/{coll.document_count}") if coll.HasField("pending_embedding_model") \
            else ""
        table.add_row(coll.tenant, coll.name, str(coll.document_count), str(coll.chunk_count),
                      model_text(coll.embedding_model), str(coll.dimensions or ""), pending, coll.description)
    console.print(table)


def files_under(paths: tuple[Path, ...]) -> Iterator[tuple[Path, str | None]]:
    """Every file to ingest: given files as they are, folders searched recursively for the supported types.
    Yields (path, why it is skipped or None)."""
    for path in paths:
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                if found.suffix.lower() in FILE_TYPES and not any(part.startswith(".") for part in found.parts):
                    yield found, None
        elif path.is_file():
            yield path, None if path.suffix.lower() in FILE_TYPES else (
                f"unsupported file type {path.suffix or '(none)'!r} (supported: {', '.join(sorted(FILE_TYPES))})")
        else:
            yield path, "no such file or folder"


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--collection", "-c", required=True, help="Collection to ingest into (create it first).")
@TENANT
@click.option("--doc-type", default="", help="doc_type of every document (filterable).")
@click.option("--tag", "tags", multiple=True, help="A tag of every document (repeatable; filterable).")
@ADDRESS
@TIMEOUT
@run
async def ingest(paths: tuple[Path, ...], collection: str, tenant: str, doc_type: str, tags: tuple[str, ...],
                 address: str, timeout: float) -> int:
    """Ingest files and folders (recursively: .md/.markdown, .txt, .html/.htm, .pdf) into a collection.

    Each file is sent as it is; the retriever extracts its text, stores it and queues it for embedding.
    A file's path is its source and its id, so ingesting it again replaces it (unchanged text: nothing to do).
    Files the retriever refuses are reported and skipped; the exit code is 1 if any was.
    """
    from tqdm import tqdm

    found = list(files_under(paths))
    accepted = unchanged = 0
    failed: list[tuple[Path, str]] = [(p, why) for p, why in found if why]
    todo = [p for p, why in found if not why]
    async with client(address, timeout) as c:
        if todo:  # a wrong collection or address fails once, not once per file
            names = {coll.name for coll in await c.list_collections(tenant)}
            if collection not in names:
                raise FlywheelError(f"no collection {collection!r}" + (f" for tenant {tenant!r}" if tenant else "")
                                    + f"; create it: flywheel collections create {collection}")
        with tqdm(todo, desc="ingest", unit="file", file=sys.stderr, disable=None) as bar:
            for path in bar:
                try:
                    document = file_input(path, doc_type=doc_type, tags=list(tags))
                    result = (await c.ingest(collection, [document], tenant=tenant))[0]
                except OSError as exc:
                    failed.append((path, f"cannot read it: {exc.strerror or exc}"))
                    continue
                except InvalidArgument as exc:
                    why = str(exc).removeprefix("retriever refused the request: ")
                    failed.append((path, why.removeprefix(f"document {document.source!r}").lstrip(": ")))
                    continue
                if result.status == pb.INGEST_STATUS_ACCEPTED:
                    accepted += 1
                else:
                    unchanged += 1
    console.print(f"{accepted} accepted (queued for embedding), {unchanged} unchanged, {len(failed)} failed")
    for path, why in failed:
        errors.print(f"[red]failed[/red] {path}: {why}", soft_wrap=True, highlight=False)
    return 1 if failed else 0


@click.command(context_settings=CONTEXT)
@click.argument("query")
@click.option("--collection", "-c", required=True, help="Collection to search.")
@TENANT
@click.option("-k", "k", default=5, show_default=True, help="Chunks wanted (at most 100).")
@click.option("--doc-type", "doc_types", multiple=True, help="Only documents of this doc_type (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only documents carrying one of these tags (repeatable).")
@click.option("--full", is_flag=True, help="Print each chunk's whole text (default: its first 200 characters).")
@ADDRESS
@TIMEOUT
@run
async def retrieve(query: str, collection: str, tenant: str, k: int, doc_types: tuple[str, ...],
                   tags: tuple[str, ...], full: bool, address: str, timeout: float) -> None:
    """Retrieve the chunks of a collection that best answer QUERY (vector + full-text, fused by rank)."""
    flt = metadata_filter(doc_types=doc_types, tags_any=tags) if doc_types or tags else None
    async with client(address, timeout) as c:
        response = await c.retrieve(collection, text=query, k=k, tenant=tenant, filter=flt)
    if not response.chunks:
        console.print(f"nothing found (embedding model {model_text(response.embedding_model)})")
        return
    table = Table("#", "score", "sim", "ranks v/t", "document", "section", "text", title=(
        f"{len(response.chunks)} chunks, {model_text(response.embedding_model)}"))
    for i, chunk in enumerate(response.chunks, 1):
        text = " ".join(chunk.text.split())
        table.add_row(str(i), f"{chunk.score:.4f}", f"{chunk.similarity:.3f}",
                      f"{chunk.vector_rank or '-'}/{chunk.text_rank or '-'}",
                      f"{chunk.title or chunk.document_id}\n[dim]{chunk.source or chunk.document_id}[/]",
                      chunk.section, text if full else text[:200] + ("…" if len(text) > 200 else ""))
    console.print(table)
