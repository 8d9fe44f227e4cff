"""`python -m bench.profile_inference LABEL`: where the inference server spends its CPU under load.

Starts the embedded stack, an in-process registry with the bench model (see bench/inference.py) and one
Flywheel inference server with prediction logging on, drives each case with the bench's tritonclient
load driver and samples the server with py-spy meanwhile (`pip install py-spy`). Writes, per case,
`bench/results/profiles/<LABEL>-<case>.svg` (flame graph) and `<LABEL>-<case>.md` (top functions by
own and by total samples, from py-spy's raw collapsed stacks). Idle samples are left out, so the
shares are of the server's busy CPU time (its Python threads; gRPC's C-core shows inside the Python
frame that called it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

from rich.console import Console

from bench.common import Context, Steps, infrastructure, markdown_table
from bench.inference import Driver, champion_registry, start_flywheel, stop, url, wait_ready

OUT = Path(__file__).parent / "results" / "profiles"
CASES = {"grpc-8x1": ("grpc", 8, 1), "rest-8x1": ("rest", 8, 1), "grpc-1x1": ("grpc", 1, 1),
         "rest-1x1": ("rest", 1, 1), "grpc-32x1": ("grpc", 32, 1)}


def top_table(raw: Path, n: int = 25) -> tuple[str, int]:
    """Markdown tables of the functions with the most own (leaf) and total (anywhere on the stack) samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [_function(f) for f in stack.split(";")[1:]] or ["<thread>"]
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k

    def rows(counter: collections.Counter[str]) -> list[list[str]]:
        return [[f"`{name}`", f"{count:,}", f"{100 * count / samples:.1f}%"] for name, count in counter.most_common(n)]

    return ("### own samples (the function itself, leaf of the stack)\n\n"
            + markdown_table(["function", "samples", "share"], rows(own), right=(1, 2))
            + "\n### total samples (the function and what it called)\n\n"
            + markdown_table(["function", "samples", "share"], rows(total), right=(1, 2)), samples)


def _function(frame: str) -> str:
    """`name (file.py:123)` -> `name (file.py)`: samples of one function on different lines add up."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({where})" if where else name


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread name of `pid` and its children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    out: dict[str, float] = collections.defaultdict(float)
    for p in pids:
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[name] += (int(fields[11]) + int(fields[12])) / ticks
    return out


def syscalls(pid: int, seconds: int, out: Path) -> None:
    """strace -c of the server's threads (and its workers') for `seconds`."""
    pids = [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-c", "-f", "-o", str(out),
                    *(a for p in pids for a in ("-p", str(p)))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record(pid: int, seconds: int, out: Path, fmt: str) -> None:
    subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                    "--nonblocking", "--subprocesses", "--format", fmt, "--output", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def profile(ctx: Context, label: str, names: list[str], seconds: int, settings: dict[str, str]) -> None:
    scratch = ctx.infra.home / "profile"
    scratch.mkdir(exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    async with champion_registry(ctx, scratch) as (registry_app, _):
        server = start_flywheel(ctx, "flywheel", registry_app.address, logging_on=True, scratch=scratch,
                                settings=settings)
        driver = Driver()
        try:
            await wait_ready(server)
            for name in names:
                protocol, callers, rows = CASES[name]
                await asyncio.to_thread(driver.call, op="measure", protocol=protocol, url=url(server, protocol),
                                        rows=rows, callers=callers, requests=400, warmup=20)
                done = threading.Event()
                results: list[dict] = []

                def load(protocol: str = protocol, callers: int = callers, rows: int = rows,
                         done: threading.Event = done, results: list[dict] = results) -> None:
                    while not done.is_set():
                        results.append(driver.call(op="measure", protocol=protocol, url=url(server, protocol),
                                                   rows=rows, callers=callers, requests=1_000, warmup=2))

                thread = threading.Thread(target=load, daemon=True)
                thread.start()
                await asyncio.sleep(1.0)
                stem = OUT / f"{label}-{name}"
                before_cpu, first = thread_cpu(server.process.pid), len(results)
                await asyncio.sleep(5)
                after_cpu = thread_cpu(server.process.pid)
                window = [len(r["latencies_ms"]) / r["wall_s"] for r in results[first:] if "latencies_ms" in r]
                answered = 5 * (sum(window) / len(window) if window else 1.0)
                per_thread = sorted(((after_cpu[k] - before_cpu.get(k, 0.0), k) for k in after_cpu), reverse=True)
                threads = ", ".join(f"{k} {1e3 * v / answered:.3f}" for v, k in per_thread if v > 0)
                await asyncio.to_thread(record, server.process.pid, seconds, stem.with_suffix(".svg"), "flamegraph")
                raw = stem.with_suffix(".txt")
                await asyncio.to_thread(record, server.process.pid, seconds, raw, "raw")
                done.set()
                await asyncio.to_thread(thread.join)
                table, samples = top_table(raw)
                rps = [len(r["latencies_ms"]) / r["wall_s"] for r in results if "latencies_ms" in r]
                header = (f"# Profile `{label}`: {protocol}, {callers} callers, {rows} row(s)\n\n"
                          f"Flywheel inference with prediction logging on, settings {json.dumps(settings)}; "
                          f"py-spy 200 Hz, {seconds} s, non-blocking, idle samples left out: {samples:,} samples. "
                          f"Load meanwhile: {', '.join(f'{r:,.0f}' for r in rps)} req/s (the profiler costs some).\n\n"
                          f"CPU ms per request by thread (5 s without the profiler, /proc): {threads}.\n\n")
                stem.with_suffix(".md").write_text(header + table)
                with raw.open("rb") as f_in, gzip.open(f"{raw}.gz", "wb") as f_out:
                    f_out.write(f_in.read())
                raw.unlink()
                ctx.steps.log(f"{name}: {stem}.svg / .md ({samples:,} samples; {rps and max(rps):,.0f} req/s)")
        finally:
            driver.close()
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_inference")
    parser.add_argument("label", help="file name prefix, e.g. before / after")
    parser.add_argument("--cases", nargs="+", default=["grpc-8x1", "rest-8x1"], choices=sorted(CASES))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="FLYWHEEL_INFERENCE_<NAME> settings of the server, e.g. workers=2")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    console = Console(log_path=False)
    with infrastructure() as infra, Steps(console) as steps:
        ctx = Context(infra=infra, quick=True, run_id=uuid.uuid4().hex[:8], steps=steps)
        steps.begin("profile", len(args.cases))
        asyncio.run(profile(ctx, args.label, args.cases, args.seconds, settings))


if __name__ == "__main__":
    main()
