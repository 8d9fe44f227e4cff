"""`make run`: the embedded broker + database and every installed service, on one machine.

Services are found through the `flywheel.services` entry point group (name -> the
service's settings class). Each runs as its own process (`python -m flywheel.<name>`)
with the same FLYWHEEL_HOME, so it finds the embedded stack's addresses there. The
launcher waits until each one is ready (its settings' `readiness()`: SERVING over
grpc.health.v1, or for a service without gRPC an HTTP readiness URL answering 200), prints
where it listens (and the settings' `console_notes()`, e.g. the review app's demo logins),
and on Ctrl-C (or SIGTERM) stops every child, then the stack.

Installed projects (`flywheel.projects` entry points, name -> a function returning environment
settings, e.g. where the payments demo's model specs are) configure the services: their settings
go into every child's environment unless the environment sets them already.

Then it starts the installed demos (`flywheel.demos` entry points, name -> `module:callable`; each
runs as `python -m <module>` with the same environment, its output on this console), unless
`--no-demo`. A demo that ends does not stop the platform.

A service that exits on its own (crashed, killed) is restarted, like a compose restart policy or
Kubernetes would: after a delay that doubles per crash (1 s, 2 s, 4 s, ... at most 30 s), and it
must be ready again within 60 s. A crash loop ends it: a service that crashed
`--max-crashes` times within `--crash-window` seconds stops everything (exit code 1), since
restarting it again would only hide the problem. Every step is printed.

Every door takes a bearer token. On the first start the launcher creates an admin token, writes it
to `<home>/admin.token` (mode 0600; the `flywheel` CLI picks it up from there) and gives every
service and demo a token of its own (`<home>/tokens/<name>.token`, role `service`; demos also
`operator` and `predict`), reused on later starts. Inference accepts anonymous predictions here
(loopback only), so stock OIP clients work unchanged, and the review app creates demo logins (printed
once it is ready); production manifests turn both off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common.auth import Role, TokenStore
from flywheel.common.cli import ADMIN_TOKEN_FILE
from flywheel.common.db import Database
from flywheel.common.embedded import EmbeddedStack
from flywheel.common.settings import Readiness
from flywheel.common.supervise import CrashLoopPolicy

START_TIMEOUT = 60.0  # seconds a (re)started service has to be ready


@dataclass
class Child:
    name: str
    readiness: Readiness | None  # None: a demo (nothing to wait for)
    metrics_port: int
    proc: subprocess.Popen
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # its environment, for restarts (None: the launcher's)
    policy: CrashLoopPolicy = field(default_factory=CrashLoopPolicy)
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # waiting to be restarted (after a crash) at this time
    ready_by: float | None = None  # restarted, not ready yet; it must be by this time


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def installed_services() -> dict[str, type]:
    return {ep.name: ep.load() for ep in sorted(entry_points(group="flywheel.services"), key=lambda e: e.name)}


def installed_demos() -> dict[str, str]:
    """Demo name -> the module `python -m` runs (e.g. payments -> payments_demo.live)."""
    return {ep.name: ep.module for ep in sorted(entry_points(group="flywheel.demos"), key=lambda e: e.name)}


# The roles each kind of process gets; a demo plays a user's project (trains, promotes, predicts).
SERVICE_ROLES = (Role.SERVICE,)
DEMO_ROLES = (Role.SERVICE, Role.OPERATOR, Role.PREDICT)


async def provision_tokens(home: Path, database_url: str, principals: dict[str, tuple[Role, ...]]) -> dict[str, str]:
    """The admin token (written to <home>/admin.token) and one token per principal
    (<home>/tokens/<name>.token), each created on first use and reused while it stays valid."""
    store = TokenStore(Database(database_url, "auth", min_size=1, max_size=1))
    await store.db.pool.open(wait=True, timeout=30)
    try:
        await store.migrate()
        wanted = {"admin": (home / ADMIN_TOKEN_FILE, (Role.ADMIN,))}
        wanted |= {name: (home / "tokens" / f"{name}.token", roles) for name, roles in principals.items()}
        tokens = {}
        for name, (path, roles) in wanted.items():
            token = path.read_text().strip() if path.is_file() else ""
            principal = await store.lookup(token) if token else None
            if principal is None or principal.roles != frozenset(roles):
                token, _ = await store.create(name, roles, created_by="make run",
                                              description=f"created by make run for {name}")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(mode=0o600)
                path.chmod(0o600)  # before the secret is written
                path.write_text(token + "\n")
            tokens[name] = token
        return tokens
    finally:
        await store.db.close()


def apply_project_settings(env: dict[str, str], projects: Iterable[EntryPoint] | None = None) -> dict[str, str]:
    """Set in `env` what the installed projects need (`flywheel.projects` entry points, name -> a function
    returning {environment variable: value}), unless `env` sets it already; print and return what was set."""
    found = entry_points(group="flywheel.projects") if projects is None else projects
    applied: dict[str, str] = {}
    for project in sorted(found, key=lambda e: e.name):
        for key, value in project.load()().items():
            if key not in env:
                env[key] = applied[key] = str(value)
                print(f"  project {project.name:<8} {key}={value}", flush=True)
    return applied


def wait_ready(child: Child, timeout: float) -> None:
    """Until the child is ready. A fresh gRPC channel per look: a channel that failed to connect while the
    server was not listening yet retries with an exponential backoff (~43 s between tries after a minute), so
    one kept across the wait can miss a server that came up in the meantime."""
    assert child.readiness is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.proc.returncode} while starting")
        if is_ready(child.readiness, timeout=1.0):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{child.name} was not ready ({child.readiness.describe()}) within {timeout:.0f}s")


def is_ready(readiness: Readiness, timeout: float = 0.5) -> bool:
    """One readiness check, without waiting: grpc.health.v1 reports SERVING, or the HTTP readiness URL
    answers 200."""
    if readiness.protocol == "http":
        try:
            with urllib.request.urlopen(f"http://{readiness.address}{readiness.path}", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False
    return is_serving(readiness.address, timeout)


def is_serving(address: str, timeout: float = 0.5) -> bool:
    """One health check, without waiting: True when the service at `address` reports SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                               timeout=timeout).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def supervise(child: Child, now: float) -> bool:
    """One look at a service: restart it when it crashed (after its backoff), report when a restarted
    one serves again, kill one that did not in time (its exit counts as a crash). Returns False when
    it is crash-looping: time to stop everything."""
    if child.restart_at is not None:
        if now >= child.restart_at:
            child.proc = subprocess.Popen(child.argv, env=child.env)
            child.started_at, child.restart_at, child.ready_by = now, None, now + START_TIMEOUT
            print(f"flywheel: {child.name} restarted (pid {child.proc.pid})", flush=True)
        return True
    if child.proc.poll() is not None:
        how = describe_exit(child.proc.returncode)
        delay = child.policy.on_crash(now, ran_for=now - child.started_at)
        crashes, window = child.policy.recent_crashes(), child.policy.window
        if delay is None:
            print(f"flywheel: {child.name} {how}; {crashes} crashes within {window:.0f}s is a crash loop: "
                  "giving up, stopping", flush=True)
            return False
        print(f"flywheel: {child.name} {how}; restarting it in {delay:.0f}s "
              f"(crash {crashes} of {child.policy.max_crashes} allowed within {window:.0f}s)", flush=True)
        child.restart_at, child.ready_by = now + delay, None
        return True
    if child.ready_by is not None and child.readiness is not None:
        if is_ready(child.readiness):
            child.ready_by = None
            print(f"flywheel: {child.name} serving again on {child.readiness.address}", flush=True)
        elif now > child.ready_by:
            print(f"flywheel: {child.name} was not ready within {START_TIMEOUT:.0f}s after its restart; "
                  "killing it", flush=True)
            child.proc.kill()
            child.proc.wait()
    return True


def stop_children(children: list[Child], grace: float = 10.0) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.common.launcher",
        description="Start the embedded Kafka broker and PostgreSQL, then every installed Flywheel service. "
                    "Ctrl-C stops everything. Data is kept in --home between runs.")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")),
                        help="data directory (default .flywheel, or FLYWHEEL_HOME)")
    parser.add_argument("--only", nargs="*", metavar="SERVICE", help="start only these services")
    parser.add_argument("--json-logs", action="store_true", help="children log JSON lines instead of text")
    parser.add_argument("--no-demo", action="store_true",
                        help="do not start the demos (flywheel.demos entry points, e.g. the payments driver)")
    parser.add_argument("--max-crashes", type=int, default=5, metavar="N",
                        help="stop everything when a service crashed N times within --crash-window (default 5; "
                             "1 = never restart)")
    parser.add_argument("--crash-window", type=float, default=120.0, metavar="SECONDS",
                        help="the window of --max-crashes, and how long a service must run before its restart "
                             "delay starts over at 1 s (default 120)")
    args = parser.parse_args(argv)

    services = installed_services()
    if args.only:
        unknown = set(args.only) - set(services)
        if unknown:
            parser.error(f"unknown service(s) {', '.join(sorted(unknown))}; installed: {', '.join(services)}")
        services = {n: s for n, s in services.items() if n in args.only}

    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    home = args.home.resolve()
    print(f"flywheel: starting the embedded stack in {home}", flush=True)
    stack = EmbeddedStack(home).start()
    children: list[Child] = []
    code = 0
    try:
        print(f"  kafka      {stack.kafka.bootstrap}\n  postgres   {stack.postgres.url}", flush=True)
        env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_KAFKA_BOOTSTRAP": stack.kafka.bootstrap,
               "FLYWHEEL_DATABASE_URL": stack.postgres.url}
        env.setdefault("FLYWHEEL_LOG_JSON", "true" if args.json_logs else "false")
        demos_wanted = {} if args.no_demo or args.only else installed_demos()
        tokens = asyncio.run(provision_tokens(home, stack.postgres.url, {
            **{n: SERVICE_ROLES for n in services}, **{f"demo-{n}": DEMO_ROLES for n in demos_wanted}}))
        print(f"  admin token {home / ADMIN_TOKEN_FILE} (the flywheel CLI uses it; role admin)", flush=True)
        # Stock OIP clients (tritonclient, load tools) send no token: on loopback, predictions are open.
        env.setdefault("FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT", "true")
        # A person can log in to the review app right away: it creates demo logins (printed below).
        env.setdefault("FLYWHEEL_REVIEW_DEMO_LOGINS", "true")
        apply_project_settings(env)
        planned = {name: settings_class(_env_file=None, home=home) for name, settings_class in services.items()}
        # Every gRPC service finds the others through FLYWHEEL_<NAME>_ADDR (e.g. FLYWHEEL_REGISTRY_ADDR).
        for name, settings in planned.items():
            if settings.readiness().protocol == "grpc":
                env.setdefault(f"FLYWHEEL_{name.upper()}_ADDR", settings.readiness().address)
        for name, settings in planned.items():
            argv = [sys.executable, "-m", f"flywheel.{name}"]
            child_env = {**env, "FLYWHEEL_TOKEN": tokens[name]}
            children.append(Child(name, settings.readiness(), settings.metrics_port,
                                  subprocess.Popen(argv, env=child_env), argv, child_env,
                                  CrashLoopPolicy(args.max_crashes, args.crash_window)))
        for child in children:
            wait_ready(child, timeout=60)
            assert child.readiness is not None
            print(f"  {child.name:<12} {child.readiness.describe()}   "
                  f"metrics http://127.0.0.1:{child.metrics_port}/metrics", flush=True)
        # Read once every service is ready (e.g. the logins the review app wrote to FLYWHEEL_HOME while starting).
        for settings in planned.values():
            for note in settings.console_notes():
                print(f"  {'':<12} {note}", flush=True)
        demos: list[Child] = []
        for name, module in demos_wanted.items():
            demo_env = {**env, "FLYWHEEL_TOKEN": tokens[f"demo-{name}"]}
            demos.append(Child(name, None, 0, subprocess.Popen([sys.executable, "-m", module], env=demo_env)))
            print(f"  demo {name:<7} python -m {module}", flush=True)
        print("flywheel: ready (Ctrl-C stops everything)", flush=True)
        children[:0] = demos  # stopped first: a demo talks to the services until the end
        while not stopping:
            for child in list(children):
                if stopping:  # Ctrl-C reaches the children too: their exits now are no crashes
                    break
                if child in demos:
                    if child.proc.poll() is not None:
                        print(f"flywheel: demo {child.name} ended with code {child.proc.returncode}", flush=True)
                        demos.remove(child)
                        children.remove(child)
                elif not supervise(child, time.monotonic()):
                    code = 1
                    stopping = True
                    break
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as exc:
        print(f"flywheel: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("flywheel: stopping", flush=True)
        stop_children(children)
        stack.stop()
        print("flywheel: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
