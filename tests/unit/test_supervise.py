"""Supervision logic without processes or a broker: restart backoff, the crash-loop limit of
`make run`, the health board, and a real RpcServer whose health follows its components."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common import rpc
from flywheel.common.launcher import describe_exit
from flywheel.common.supervise import Backoff, CrashLoopPolicy, HealthBoard
from tests.polling import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- backoff ---------------------------------------------------------------------------------------------------------

def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff(initial=0.5, cap=4.0, reset_after=60.0)
    assert [backoff.delay(ran_for=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(ran_for=60.0) == 0.5  # ran long enough: not a loop any more
    assert backoff.delay(ran_for=59.9) == 1.0


def test_backoff_refuses_a_cap_below_its_first_delay() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2.0, cap=1.0)


# --- crash-loop limit ------------------------------------------------------------------------------------------------

def test_crash_loop_policy_restarts_with_growing_delays_then_gives_up() -> None:
    policy = CrashLoopPolicy(max_crashes=4, window=100.0, initial_delay=1.0, max_delay=30.0)
    assert policy.on_crash(now=10.0, ran_for=5.0) == 1.0
    assert policy.on_crash(now=20.0, ran_for=5.0) == 2.0
    assert policy.on_crash(now=30.0, ran_for=5.0) == 4.0
    assert policy.recent_crashes() == 3
    assert policy.on_crash(now=40.0, ran_for=5.0) is None  # the 4th crash within 100 s: a crash loop


def test_crashes_older_than_the_window_do_not_count() -> None:
    policy = CrashLoopPolicy(max_crashes=3, window=100.0, initial_delay=1.0, max_delay=30.0)
    assert policy.on_crash(now=0.0, ran_for=5.0) == 1.0
    assert policy.on_crash(now=60.0, ran_for=5.0) == 2.0
    # 0.0 left the window: two crashes in it (60, 150), not three; and it ran 100 s: delay starts over.
    assert policy.on_crash(now=150.0, ran_for=100.0) == 1.0
    assert policy.recent_crashes() == 2
    assert policy.on_crash(now=155.0, ran_for=1.0) is None  # 60, 150, 155


def test_a_limit_of_one_crash_never_restarts() -> None:
    assert CrashLoopPolicy(max_crashes=1).on_crash(now=5.0, ran_for=5.0) is None


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"


# --- health board ----------------------------------------------------------------------------------------------------

def test_health_board_is_healthy_only_when_every_component_says_so() -> None:
    board = HealthBoard()
    changes: list[bool] = []
    board.subscribe(lambda: changes.append(board.healthy))
    assert board.healthy  # nothing registered
    consumer, relay = board.reporter("consumer"), board.reporter("relay")
    assert not board.healthy and board.down() == ["consumer", "relay"]  # down until they report
    consumer(True)
    assert not board.healthy and board.down() == ["relay"]
    relay(True)
    assert board.healthy
    relay(True)  # no change, no notification
    consumer(False)
    assert board.down() == ["consumer"]
    assert changes == [False, False, False, True, False]  # two registrations, then three changes
    with pytest.raises(ValueError, match="already"):
        board.reporter("consumer")


# --- a real gRPC server whose health follows its components -----------------------------------------------------------

async def test_rpc_server_health_follows_its_components() -> None:
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(lambda servicer, s: None, None, "tests.Dummy")
    consumer = server.component_health("consumer")
    relay = server.component_health("relay")
    consumer(True)
    port = await server.start()
    try:
        async with rpc.channel(f"127.0.0.1:{port}", default_timeout=5.0) as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            async def statuses() -> tuple[int, int]:
                every = [await stub.Check(health_pb2.HealthCheckRequest(service=n)) for n in ("", "tests.Dummy")]
                return every[0].status, every[1].status

            assert await statuses() == (NOT_SERVING, NOT_SERVING)  # the relay never reported
            relay(True)
            await eventually(lambda: _equals(statuses, (SERVING, SERVING)), timeout=5, what="SERVING")
            consumer(False)
            await eventually(lambda: _equals(statuses, (NOT_SERVING, NOT_SERVING)), timeout=5, what="NOT_SERVING")
            consumer(True)
            await eventually(lambda: _equals(statuses, (SERVING, SERVING)), timeout=5, what="SERVING again")
            late = server.component_health("late")  # wired after the start: down until it reports
            await eventually(lambda: _equals(statuses, (NOT_SERVING, NOT_SERVING)), timeout=5, what="late one")
            late(True)
            await eventually(lambda: _equals(statuses, (SERVING, SERVING)), timeout=5, what="late one healthy")

            await server.health.enter_graceful_shutdown()  # shutting down wins over healthy components
            consumer(False)
            consumer(True)
            await eventually(lambda: _equals(statuses, (NOT_SERVING, NOT_SERVING)), timeout=5, what="draining")
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    finally:
        await server.stop(grace=0)


async def _equals(check, expected) -> bool:  # type: ignore[no-untyped-def]
    return await check() == expected
