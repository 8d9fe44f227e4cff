"""`python -m bench` (`make bench`): run the benchmarks on one broker + database, write and print results."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from bench import (
    embedder,
    events,
    features,
    finetune,
    generation,
    guard,
    inference,
    ingestion,
    loop,
    monitor,
    registry,
    retrieval,
    review,
)
from bench.common import (
    BenchResult,
    Context,
    Infrastructure,
    Steps,
    infrastructure,
    machine_info,
    now_iso,
    write_result,
)
from flywheel.common.telemetry import setup_tracing

Benchmark = Callable[[Context], Awaitable[BenchResult]]
# In this order: the registry reports the peak RSS of the process (and its growth), so it runs before
# the events benchmark holds tens of thousands of events in memory. Ingestion runs after the embedder: its
# documents.ingested events stay in the run's broker, and a later embedder (a new group, from the earliest
# offset) would embed them again in the middle of its own measurement.
BENCHMARKS: dict[str, Benchmark] = {registry.NAME: registry.run, events.NAME: events.run,
                                    features.NAME: features.run, inference.NAME: inference.run,
                                    monitor.NAME: monitor.run, review.NAME: review.run, retrieval.NAME: retrieval.run,
                                    embedder.NAME: embedder.run, ingestion.NAME: ingestion.run, loop.NAME: loop.run,
                                    generation.NAME: generation.run, guard.NAME: guard.run,
                                    finetune.NAME: finetune.run}
DEFAULT_OUT = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmarks of Flywheel's foundation against real peers measured in the same run: "
                    "events (BoundedPublisher, outbox, ConsumerRunner vs raw aiokafka), registry (artifact "
                    "upload/download vs copy + sha256, GetModelVersion vs health Check), inference (Flywheel vs "
                    "MLServer serving the same TorchScript model under the same tritonclient load), embedder "
                    "(batched gRPC Embed vs sentence-transformers encode in-process), ingestion (documents to "
                    "retrievable through the retriever and the embedder vs encode of the same chunks), generation "
                    "(the LLM engine vs Hugging Face generate on SmolLM2-135M: 1 and 8 streams, int8), guard "
                    "(CheckInput / CheckOutput latency vs Presidio's analyzer, PII recall, streaming overhead), "
                    "finetune (a LoRA run of the fine-tuner on SmolLM2-135M vs a plain PEFT script; a distilled "
                    "student vs its teacher). Uses an "
                    "embedded broker + database in a temp dir, or FLYWHEEL_KAFKA_BOOTSTRAP + FLYWHEEL_DATABASE_URL "
                    "when both are set.")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)}); default: all")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes (5,000 events; 1 and 32 MiB artifacts; 500 calls) for a fast check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for <name>.json and <name>.md (default: bench/results)")
    return parser.parse_args(argv)


async def run_all(names: list[str], infra: Infrastructure, args: argparse.Namespace, console: Console) -> list[str]:
    """Run the benchmarks one after the other; returns the markdown of each that finished."""
    machine, date, run_id = machine_info(), now_iso(), uuid.uuid4().hex[:8]
    tables: list[str] = []
    with Steps(console) as steps:
        ctx = Context(infra=infra, quick=args.quick, run_id=run_id, steps=steps)
        for name in names:
            load_before = os.getloadavg()[0]
            try:
                result = await BENCHMARKS[name](ctx)
            except Exception:
                console.log(f"[red]benchmark {name} failed[/red]\n{traceback.format_exc()}")
                continue
            # Other work on the machine skews absolute numbers (the ratios less so): record how busy it was.
            result.extra["load_average_1m"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
            tables.append(write_result(result, args.out, machine=machine, date=date, stack=infra.description,
                                       quick=args.quick))
            console.log(f"{name}: wrote {args.out / (name + '.json')} and {name}.md")
    return tables


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    console = Console(log_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)],
                        format="%(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    setup_tracing("bench")  # as every service process does: spans are recorded (not exported)
    # SIGTERM unwinds like Ctrl-C, so the embedded broker and database are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with console.status("starting the broker and the database"), infrastructure() as infra:
        console.log(f"stack: {infra.description} (kafka {infra.kafka_bootstrap})")
        tables = asyncio.run(run_all(names, infra, args, console))
    for markdown in tables:
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    return 0 if len(tables) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
