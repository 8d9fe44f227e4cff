"""`python -m payments_demo.live` (also `python -m payments_demo drive`, and what `make run` starts through the
`flywheel.demos` entry point): the live demo driver's command line, and its composition root.

It reads the options into a `DriverConfig`, the service addresses into `Addresses`, and runs a `DemoDriver`
(`payments_demo.driver`) with its status page (`payments_demo.status`) until the scenario ends or Ctrl-C.
The modules behind it:

    config.py      DriverConfig, Addresses, the demo's scenario
    timeline.py    the simulated days and the map from simulated to wall-clock time
    driver.py      DemoDriver: start/stop, and the parts below put together
    bootstrap.py   history, the first training run, the champion, inference serving it
    assistant.py   the support assistant: base LLM, prompt template, application (in the background)
    traffic.py     live payments: features pushed, scored over inference, labels sent
    labels.py      labels waiting for the time the bank learns them
    stats.py       served predictions vs truth, by window, phase and version
    narration.py   the loop's events, narrated and kept for the status page
    clients.py     the platform's gRPC stubs

`DemoDriver`, `DriverConfig`, `Addresses` and the phases `STABLE` / `DRIFT` are importable from here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from payments_demo.config import DRIFTS, Addresses, DriverConfig
from payments_demo.driver import DemoDriver
from payments_demo.timeline import BOOTSTRAP, DRIFT, STABLE

__all__ = ["BOOTSTRAP", "DRIFT", "STABLE", "Addresses", "DemoDriver", "DriverConfig", "main", "parser"]

log = logging.getLogger("payments_demo.live")  # not __name__: that is __main__ under `python -m`


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (e.g. 2,6)") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
    return lo, hi


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    d = DriverConfig()
    p = argparse.ArgumentParser(
        prog="python -m payments_demo drive",
        description="Drive live card payments through a running Flywheel (make run): bootstrap history and a first "
                    "model, then score payments over inference, send their labels seconds later, switch the world "
                    "to a drifted one, and narrate drift alerts, retraining, evaluations and promotions. Service "
                    "addresses come from FLYWHEEL_<SERVICE>_ADDR, Kafka from FLYWHEEL_KAFKA_BOOTSTRAP or "
                    ".flywheel/stack.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="model name (trainer spec, registry, inference)")
    p.add_argument("--rate", type=_positive(float), default=d.rate, help="payments per wall second")
    p.add_argument("--day-seconds", type=_positive(float), default=d.day_seconds,
                   help="wall seconds one simulated day lasts")
    p.add_argument("--history-days", type=_positive(int), default=d.history_days,
                   help="simulated days published at bootstrap and trained on")
    p.add_argument("--warmup-days", type=int, default=d.warmup_days,
                   help="simulated days before the history, only for the 30-day aggregates")
    p.add_argument("--stable-days", type=int, default=d.stable_days, help="live simulated days before the drift")
    p.add_argument("--drift-days", type=int, default=d.drift_days, help="drifted simulated days, then idle")
    p.add_argument("--drift", choices=DRIFTS, default=d.drift, help="how the world changes at the onset")
    p.add_argument("--cloned-card-rate", type=float, default=d.cloned_card_rate,
                   help="concept shift: cloned-card fraud per payment")
    p.add_argument("--chargeback-hours", type=_pair, default=d.chargeback_hours, metavar="LOW,HIGH",
                   help="simulated hours until a fraud's chargeback arrives")
    p.add_argument("--settlement-hours", type=_pair, default=d.settlement_hours, metavar="LOW,HIGH",
                   help="simulated hours until a legit payment settles")
    p.add_argument("--batch-size", type=_positive(int), default=d.batch_size, help="payments per inference request")
    p.add_argument("--window", type=_positive(int), default=d.window, help="payments in the accuracy window")
    p.add_argument("--epochs", type=_positive(int), default=None, help="epochs of the first run (default: the spec)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--retrain-on-start", action="store_true", help="train even if the model has a champion")
    p.add_argument("--no-documents", action="store_true",
                   help="do not ingest the bank's policy documents into the retriever at bootstrap (nor set up the "
                        "support assistant)")
    p.add_argument("--no-assistant", action="store_true",
                   help="do not set up the support assistant (base LLM, prompt template, application)")
    p.add_argument("--max-transactions", type=_positive(int), default=None, help="stop after this many payments")
    p.add_argument("--status-port", type=int, default=None,
                   help="status page port (0 = off; default FLYWHEEL_DEMO_STATUS_PORT or 8090)")
    p.add_argument("--status-every", type=float, default=d.status_every, help="seconds between status lines")
    return p


async def _drive(config: DriverConfig, addresses: Addresses, max_transactions: int | None) -> int:
    from payments_demo.status import StatusPage

    driver = DemoDriver(config, addresses)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, driver.request_stop)
    page = StatusPage(driver, port=addresses.status_port) if addresses.status_port else None
    try:
        await driver.start()
        if page is not None:
            await page.start()
            log.info(f"status page: http://127.0.0.1:{page.port}/")
        await driver.bootstrap()
        await driver.run(max_transactions=max_transactions)
        if max_transactions is None:
            await driver.stopped()  # keep the page up after the scenario, until Ctrl-C
    finally:
        if page is not None:
            await page.stop()
        await driver.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    from flywheel.common.telemetry import setup_logging

    args = parser().parse_args(argv)
    addresses = Addresses.from_env(**({"status_port": args.status_port} if args.status_port is not None else {}))
    setup_logging("payments-demo", addresses.log_level, addresses.log_json if "FLYWHEEL_LOG_JSON" in os.environ
                  else False)
    config = DriverConfig(
        model=args.model, seed=args.seed, day_seconds=args.day_seconds, rate=args.rate,
        warmup_days=args.warmup_days, history_days=args.history_days, stable_days=args.stable_days,
        drift_days=args.drift_days, drift=args.drift, cloned_card_rate=args.cloned_card_rate,
        chargeback_hours=args.chargeback_hours, settlement_hours=args.settlement_hours, batch_size=args.batch_size,
        window=args.window, epochs=args.epochs, status_every=args.status_every,
        retrain_on_start=args.retrain_on_start, documents=not args.no_documents,
        assistant=not args.no_assistant)
    try:
        return asyncio.run(_drive(config, addresses, args.max_transactions))
    except RuntimeError as exc:
        log.error(f"demo driver: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
