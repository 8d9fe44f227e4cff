"""What the live driver plays (`DriverConfig`, the world's `demo_scenario`) and where the platform is (`Addresses`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared
from payments_demo.generator import Scenario

# How the world changes at the drift onset (`--drift`).
DRIFTS = ("concept_shift", "covariate_shift", "both", "none")


def demo_scenario(drift: str = "both", *, chargeback_hours: tuple[float, float] = (2.0, 6.0),
                  settlement_hours: tuple[float, float] = (1.0, 3.0), cloned_card_rate: float = 0.06) -> Scenario:
    """The live demo's world: the generator's shift scenarios with label delays of simulated hours.

    Banks wait days for chargebacks; the demo cannot, so labels come a few simulated hours after the
    payment (a few wall seconds at the default compression). `drift`: concept_shift (cloned cards at
    grocery/fuel, at `cloned_card_rate` of the daily volume), covariate_shift, both, or none.
    """
    if drift not in DRIFTS:
        raise ValueError(f"unknown drift {drift!r}; known: {', '.join(DRIFTS)}")
    for name, (lo, hi) in (("chargeback_hours", chargeback_hours), ("settlement_hours", settlement_hours)):
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must be 0 <= low <= high, got {lo}, {hi}")
    return Scenario(
        name=f"live_{drift}", description=f"Live demo: stable, then {drift}, labels after hours.",
        covariate_shift=drift in ("covariate_shift", "both"), concept_shift=drift in ("concept_shift", "both"),
        cloned_card_rate=cloned_card_rate,
        chargeback_days=(chargeback_hours[0] / 24, chargeback_hours[1] / 24),
        settlement_days=(settlement_hours[0] / 24, settlement_hours[1] / 24))


class Addresses(ServiceSettings):
    """Where the platform's services are: the same FLYWHEEL_<SERVICE>_ADDR variables `make run` sets."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_DEMO_", extra="ignore", populate_by_name=True)

    registry_addr: str = shared("registry_addr", "127.0.0.1:50051", "Registry gRPC address.")  # type: ignore[assignment]
    featurestore_addr: str = shared("featurestore_addr", "127.0.0.1:50052", "Feature store gRPC address.")  # type: ignore[assignment]
    trainer_addr: str = shared("trainer_addr", "127.0.0.1:50053", "Trainer gRPC address.")  # type: ignore[assignment]
    inference_addr: str = shared("inference_addr", "127.0.0.1:8001", "Inference OIP v2 gRPC address.")  # type: ignore[assignment]
    evaluator_addr: str = shared("evaluator_addr", "127.0.0.1:50057", "Evaluator gRPC address.")  # type: ignore[assignment]
    monitor_addr: str = shared("monitor_addr", "127.0.0.1:50058", "Monitor gRPC address.")  # type: ignore[assignment]
    retriever_addr: str = shared("retriever_addr", "127.0.0.1:50056", "Retriever gRPC address.")  # type: ignore[assignment]
    inference_url: str = shared(  # type: ignore[assignment]
        "inference_url", "http://127.0.0.1:8000", "Inference's HTTP base URL (OpenAI-compatible door, applications).")
    status_port: int = Field(8090, description="Port of the status page (0 = off).")

    @classmethod
    def from_env(cls, **overrides: Any) -> Addresses:
        return cls(**overrides)


@dataclass
class DriverConfig:
    """What the driver plays. Defaults make the loop visible within a few minutes of `make run`."""

    model: str = "fraud"
    seed: int = 7
    # Wall seconds one simulated day lasts (the compression).
    day_seconds: float = 5.0
    # Payments per wall second (so transactions_per_day = rate * day_seconds). 50/s x 5 s = 250 a day:
    # the monitor's default window (500 rows) then spans two simulated days, enough to see whole daily
    # cycles (hour of day, 24-hour counts) and to average out single days of fraud bursts.
    rate: float = 50.0
    # Simulated days generated only so the 30-day aggregates start in their steady state (never published).
    warmup_days: int = 30
    # Simulated days published at bootstrap and trained on.
    history_days: int = 10
    # Live simulated days before the drift starts, then drifted days; the driver idles after the last.
    stable_days: int = 12
    drift_days: int = 120
    # Measured (gradient boosting with a max-F1 threshold, 6 days of training each side): on `both` with
    # cloned_card_rate 0.06 the stable-trained model falls from accuracy 0.967 / F1 0.29 to 0.894 / 0.04,
    # a model retrained on drifted days gets 0.945 / 0.46; concept_shift alone hurts less (0.950 / 0.04).
    drift: str = "both"
    cloned_card_rate: float = 0.06
    chargeback_hours: tuple[float, float] = (2.0, 6.0)
    settlement_hours: tuple[float, float] = (1.0, 3.0)
    customers: int = 500
    merchants: int = 60
    # Largest number of payments per ModelInfer request.
    batch_size: int = 20
    # How often the live loop wakes up, in wall seconds.
    tick_seconds: float = 0.5
    # Scored payments in the accuracy window.
    window: int = 200
    # Training run overrides (StartRun params), e.g. epochs.
    epochs: int | None = None
    run_params: dict[str, str] = field(default_factory=dict)
    # Seconds to wait for a champion after the first run (an evaluator may promote it) before setting it.
    champion_wait: float = 5.0
    # Seconds to wait until the trainer has consumed the history's labels.
    label_wait: float = 120.0
    # Seconds to wait until inference serves the champion.
    ready_wait: float = 120.0
    # Status line every this many wall seconds (0 = never).
    status_every: float = 10.0
    # Train even when the model already has a champion.
    retrain_on_start: bool = False
    # Ingest the bank's policy documents into the retriever at bootstrap (the support assistant's knowledge).
    documents: bool = True
    # Set up the support assistant (base LLM, prompt template, application) next to the bootstrap; needs documents.
    assistant: bool = True

    @property
    def transactions_per_day(self) -> int:
        return max(1, round(self.rate * self.day_seconds))

    def scenario(self) -> Scenario:
        return demo_scenario(self.drift, chargeback_hours=self.chargeback_hours,
                             settlement_hours=self.settlement_hours, cloned_card_rate=self.cloned_card_rate)
