"""free_port hands out ports that nothing else can take before their server binds them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from flywheel.common.embedded import free_port


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 < port < ephemeral_low() for port in ports)


def test_a_port_given_out_is_not_given_to_another_process_but_a_server_can_bind_it() -> None:
    port = free_port()
    # Another process walking the range from exactly this port skips it.
    other = subprocess.run(
        [sys.executable, "-c",
         "import itertools, flywheel.common.embedded as e;"
         f"e._port_cursor = itertools.count({port} - e._RESERVABLE[0]); print(e.free_port())"],
        capture_output=True, text=True, check=True)
    assert int(other.stdout) != port
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


def test_a_free_preferred_port_is_kept() -> None:
    port = free_port()
    assert free_port(port) == port
