"""`python -m bench.profile_inference LABEL [--code DIR]`: where the inference server spends its CPU under load.

Starts the embedded stack, an in-process registry with the bench model (see bench/inference.py) and one
Flywheel inference server with prediction logging on (from this checkout, or from the checkout at DIR:
`git archive <commit> | tar -x -C DIR` gives the code before a change), drives each case with the bench's
tritonclient load driver and, per case, while the load runs:

1. 5 s unprofiled: req/s and the server's CPU per request from /proc (user / system, per thread);
2. `perf record` (native: interpreter, kernel, gRPC core, torch, protobuf; every CPU cycle is in it);
3. py-spy (`pip install py-spy`; Python frames): a flame graph and its raw collapsed stacks.

Writes `bench/results/profiles/<LABEL>-<case>.md` (all three summarised: CPU/request, perf by library,
py-spy top functions by own and total samples), `.svg` (py-spy flame graph) and `.txt.gz` (raw stacks).
py-spy sees only what runs as Python frames: time in C (gRPC's Cython layer, syscalls) counts as idle for
it, so its shares are of the Python-visible part; perf's are of everything.
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
from bench.inference import Driver, Server, champion_registry, scrape, start_flywheel, stop, url, wait_ready

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


def answered_by(server: Server) -> float:
    """Requests the server answered so far (its flywheel_inference_requests_total)."""
    return sum(scrape(server, ("flywheel_inference_requests_total",)).values())


def code_path(root: Path) -> str:
    """PYTHONPATH serving the checkout at `root` (as tools/wt-env.sh builds it)."""
    services = sorted(p for p in (root / "services").iterdir() if p.is_dir())
    parts = [root / "libs", root / "libs" / "predictive", *services]
    return os.pathsep.join(str(p) for p in parts if p.exists())


def perf_by_library(pid: int, seconds: int, out: Path) -> tuple[str, float]:
    """`perf record` of the server for `seconds`: (markdown table of CPU share by library, CPU seconds)."""
    data = out.with_suffix(".perf")
    subprocess.run(["perf", "record", "-F", "499", "-o", str(data), "-p", str(pid), "--", "sleep", str(seconds)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio",
                             "-g", "none"], capture_output=True, text=True, check=False).stdout
    rows, cpu_ns = [], 0.0
    for line in report.splitlines():
        if line.startswith("# Event count (approx.):"):
            cpu_ns = float(line.rsplit(":", 1)[1])
        elif line.strip() and not line.startswith("#"):
            share, _, library = line.strip().partition("  ")
            if float(share.rstrip("%")) >= 0.5:
                rows.append([f"`{library.strip()}`", share])
    data.unlink(missing_ok=True)
    return markdown_table(["library", "share of CPU"], rows, right=(1,)), cpu_ns / 1e9


async def profile(ctx: Context, label: str, names: list[str], seconds: int, settings: dict[str, str],
                  code: Path | None) -> None:
    scratch = ctx.infra.home / "profile"
    scratch.mkdir(exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    async with champion_registry(ctx, scratch) as (registry_app, _):
        server = start_flywheel(ctx, "flywheel", registry_app.address, logging_on=True, scratch=scratch,
                                settings=settings, extra_env={"PYTHONPATH": code_path(code)} if code else None)
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
                before_cpu, before_n = thread_cpu(server.process.pid), answered_by(server)
                await asyncio.sleep(5)
                after_cpu, answered = thread_cpu(server.process.pid), max(1.0, answered_by(server) - before_n)
                per_thread = sorted(((after_cpu[k] - before_cpu.get(k, 0.0), k) for k in after_cpu), reverse=True)
                threads = ", ".join(f"{k} {1e3 * v / answered:.3f}" for v, k in per_thread if v > 0)
                total_ms = 1e3 * sum(v for v, _ in per_thread) / answered
                before_n = answered_by(server)
                perf_table, perf_cpu = await asyncio.to_thread(perf_by_library, server.process.pid, seconds, stem)
                perf_ms = 1e3 * perf_cpu / max(1.0, answered_by(server) - before_n)
                await asyncio.to_thread(record, server.process.pid, seconds, stem.with_suffix(".svg"), "flamegraph")
                raw = stem.with_suffix(".txt")
                await asyncio.to_thread(record, server.process.pid, seconds, raw, "raw")
                done.set()
                await asyncio.to_thread(thread.join)
                table, samples = top_table(raw)
                rps = [len(r["latencies_ms"]) / r["wall_s"] for r in results if "latencies_ms" in r]
                header = (f"# Profile `{label}`: {protocol}, {callers} callers, {rows} row(s)\n\n"
                          f"Flywheel inference ({f'code of {code}' if code else 'this checkout'}) with prediction "
                          f"logging on, settings {json.dumps(settings)}; "
                          f"py-spy 200 Hz, {seconds} s, non-blocking, idle samples left out: {samples:,} samples. "
                          f"Load meanwhile: {', '.join(f'{r:,.0f}' for r in rps)} req/s (the profiler costs some).\n\n"
                          f"Without a profiler (5 s, /proc): {answered / 5:,.0f} req/s, server CPU "
                          f"{total_ms:.3f} ms per request; by thread: {threads}.\n\n"
                          f"### perf: CPU by library ({perf_ms:.3f} ms per request while perf ran)\n\n{perf_table}\n"
                          "### py-spy (Python frames only)\n\n")
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
    parser.add_argument("--code", type=Path, help="serve the checkout at this directory (default: this one)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="FLYWHEEL_INFERENCE_<NAME> settings of the server, e.g. workers=2")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    console = Console(log_path=False)
    with infrastructure() as infra, Steps(console) as steps:
        ctx = Context(infra=infra, quick=True, run_id=uuid.uuid4().hex[:8], steps=steps)
        steps.begin("profile", len(args.cases))
        asyncio.run(profile(ctx, args.label, args.cases, args.seconds, settings, args.code))


if __name__ == "__main__":
    main()
