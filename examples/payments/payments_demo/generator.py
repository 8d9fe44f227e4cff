"""Synthetic card payments with late fraud labels: the world the demo's models learn from.

Customers (home country, typical spend) pay merchants (category, base risk). Legit
purchases follow each customer's habits; fraud comes in *episodes* on compromised
cards: a burst of one to several transactions that are mostly card-not-present, abroad,
at night, in risky categories, and well above the customer's usual ticket. A quarter of
the fraudulent purchases imitate the customer's ordinary ones (only the timing and the
burst give them away), so fraud is learnable but not trivially separable: a small MLP on
the platform's features reaches a ROC AUC of about 0.9 on `stable`.

Labels arrive late, as at a bank: a fraud is known when the chargeback comes in
(1-10 days after the purchase), a legit purchase when it settles without dispute
(1-3 days). Every transaction gets exactly one label, at `label_observed_at`.

Everything is deterministic for a seed: customers and merchants depend only on the seed
and the population sizes, and each simulated day has its own random stream, so two
scenarios with the same seed are identical before their onset day.

The streaming feature pipeline and the platform events live in `payments_demo.pipeline`
(re-exported at the bottom of this module, so `from payments_demo.generator import ...`
finds the whole API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

# --- the world's constants ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryProfile:
    """How purchases in one merchant category look."""

    # Typical ticket relative to the customer's spend level.
    amount_factor: float
    # Chance that a legit purchase is made with the card present (chip/contactless).
    card_present: float
    # Share of legit purchases, before and after a covariate shift.
    legit_share: float
    shifted_share: float
    # Share of card-not-present fraud (the classic pattern).
    fraud_share: float
    # Relative number of merchants in the category.
    merchant_weight: float


CATEGORIES: dict[str, CategoryProfile] = {
    "grocery": CategoryProfile(1.0, 0.97, 0.33, 0.22, 0.04, 0.20),
    "fuel": CategoryProfile(1.3, 0.95, 0.14, 0.10, 0.03, 0.12),
    "restaurants": CategoryProfile(1.1, 0.90, 0.26, 0.18, 0.04, 0.20),
    "electronics": CategoryProfile(4.0, 0.55, 0.08, 0.17, 0.30, 0.14),
    "travel": CategoryProfile(6.0, 0.20, 0.05, 0.06, 0.17, 0.10),
    "online_gaming": CategoryProfile(0.6, 0.02, 0.12, 0.24, 0.30, 0.14),
    "jewelry": CategoryProfile(5.0, 0.85, 0.02, 0.03, 0.12, 0.10),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
# Categories where the cloned-card pattern of `concept_shift` strikes.
EVERYDAY_CATEGORIES: tuple[str, ...] = ("grocery", "fuel")

COUNTRIES: tuple[str, ...] = ("NL", "DE", "BE", "FR", "ES", "IT", "GB", "US")
# Where the bank's customers live (the first five countries).
HOME_COUNTRY_WEIGHTS: tuple[float, ...] = (0.55, 0.2, 0.12, 0.08, 0.05, 0.0, 0.0, 0.0)

# Purchases per hour of day (UTC; the bank's customers live within an hour or two of it).
LEGIT_HOURS = np.array([0.6, 0.3, 0.2, 0.15, 0.2, 0.5, 1.5, 3, 4.5, 5, 5.5, 6.5,
                        7.5, 7, 6, 5.5, 6, 7, 7.5, 6.5, 5, 3.5, 2, 1.2])
# Card-not-present fraud: flatter, with much more at night.
FRAUD_HOURS = np.array([4, 4.5, 5, 5, 4.5, 3.5, 2.5, 2, 2, 2, 2, 2.5,
                        2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 3, 3, 3, 3.5, 3.5, 4])
# Cloned-card fraud: in shops, in opening hours.
DAYTIME_HOURS = np.array([0.0] * 9 + [1.0] * 10 + [0.0] * 5)

# Card-not-present fraud purchases per legit purchase (about 3 % of all transactions on `stable`).
FRAUD_SHARE = 0.035
# Mean extra transactions in an episode after the first (geometric).
FRAUD_EXTRA_MEAN = 1.5
# Share of fraudulent purchases that imitate the customer's normal behaviour (only timing and the burst remain).
STEALTH_SHARE = 0.25


# --- scenarios ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A named story of how the world changes over the simulated period.

    Shifts start at the onset day (default: half-way) and stay. Labels are delayed by a
    uniform number of days in `chargeback_days` (fraud) or `settlement_days` (legit).
    """

    name: str
    description: str
    # After onset: customers spend `spend_multiplier` times more and shop in the shifted category mix
    # (more online_gaming and electronics). How fraudsters behave does not change.
    covariate_shift: bool = False
    spend_multiplier: float = 1.6
    # After onset: card-not-present fraud falls to `old_fraud_multiplier` of its rate and a new pattern
    # appears: cloned cards used in person for small daytime purchases at grocery and fuel merchants,
    # mostly at the few whose terminals still accept magstripe fallback.
    concept_shift: bool = False
    old_fraud_multiplier: float = 0.5
    cloned_card_rate: float = 0.025
    chargeback_days: tuple[float, float] = (1.0, 10.0)
    settlement_days: tuple[float, float] = (1.0, 3.0)

    @property
    def has_onset(self) -> bool:
        return self.covariate_shift or self.concept_shift


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("stable", "Nothing changes: the same customers, merchants and fraud throughout."),
    Scenario("covariate_shift", "After the onset day customers spend 1.6x more and shift to online_gaming and "
             "electronics; the fraud mechanism is unchanged.", covariate_shift=True),
    Scenario("concept_shift", "After the onset day a new fraud pattern appears (small card-present daytime "
             "purchases with cloned cards at grocery/fuel merchants) and card-not-present fraud halves.",
             concept_shift=True),
    Scenario("label_delay", "Like stable, but every label (chargeback or settlement) arrives 20-40 days late.",
             chargeback_days=(20.0, 40.0), settlement_days=(20.0, 40.0)),
)}


def get_scenario(name: str | Scenario) -> Scenario:
    """The scenario called `name` (a `Scenario` is returned as is, so callers can define their own)."""
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


# --- entities ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    customer_id: str
    home_country: str
    # Median ticket of an everyday purchase, in EUR.
    spend_level: float
    # Relative purchase frequency (mean 1).
    activity: float
    # Chance that a legit purchase is made abroad.
    travel_propensity: float


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    category: str
    # Relative share of its category's legit purchases.
    popularity: float
    # How much card-not-present fraudsters favour it (1 = average; latent, not a feature).
    base_risk: float
    # Its terminals accept magstripe fallback: where cloned cards work (latent; `concept_shift` only).
    magstripe_fallback: bool = False


@dataclass
class Transaction:
    """One card payment and the truth about it (only the pipeline's features and labels are observable)."""

    transaction_id: str
    customer_id: str
    merchant_id: str
    event_time: datetime
    amount: float
    hour_of_day: int
    is_foreign: bool
    card_present: bool
    merchant_category: str
    is_fraud: bool
    # When the label becomes known: chargeback (fraud) or settlement (legit).
    label_observed_at: datetime
    # Where the card was used.
    country: str = ""
    # "" for legit; "card_not_present", "stealth" or "cloned_card" for fraud (latent, for analysis).
    fraud_pattern: str = ""

    @property
    def label_delay(self) -> timedelta:
        return self.label_observed_at - self.event_time


@dataclass
class Population:
    """The bank's customers and the merchants they pay."""

    customers: list[Customer]
    merchants: list[Merchant]
    by_category: dict[str, list[Merchant]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_category = {c: [m for m in self.merchants if m.category == c] for c in CATEGORY_NAMES}


def population(*, seed: int = 7, customers: int = 500, merchants: int = 60) -> Population:
    """The bank's customers and the merchants they pay; depends only on the seed and the sizes."""
    if customers < 1 or merchants < 2 * len(CATEGORIES):
        raise ValueError(f"need at least 1 customer and {2 * len(CATEGORIES)} merchants (2 per category)")
    rng = np.random.default_rng([seed, 0])
    homes = rng.choice(len(COUNTRIES), size=customers, p=np.array(HOME_COUNTRY_WEIGHTS) / sum(HOME_COUNTRY_WEIGHTS))
    spend = np.exp(rng.normal(np.log(35.0), 0.6, customers))
    activity = rng.gamma(1.5, 1 / 1.5, customers)
    travel = rng.beta(1.0, 30.0, customers)
    people = [
        Customer(f"c-{i:05d}", COUNTRIES[homes[i]], round(float(spend[i]), 2), float(activity[i]), float(travel[i]))
        for i in range(customers)
    ]

    # Merchants per category in proportion to merchant_weight, at least two each.
    weights = np.array([c.merchant_weight for c in CATEGORIES.values()])
    counts = np.maximum(2, np.floor(weights / weights.sum() * merchants)).astype(int)
    while counts.sum() < merchants:
        counts[np.argmax(weights / weights.sum() * merchants - counts)] += 1
    while counts.sum() > merchants:
        counts[np.argmax(counts)] -= 1
    categories = [name for name, n in zip(CATEGORY_NAMES, counts, strict=True) for _ in range(n)]
    categories = [categories[i] for i in rng.permutation(merchants)]
    popularity = rng.gamma(2.0, 0.5, merchants)
    risk = np.exp(rng.normal(-0.5, 1.0, merchants))
    # The first two grocery merchants and the first fuel station still accept magstripe fallback.
    fallback = {i for category, n in (("grocery", 2), ("fuel", 1))
                for i in [j for j in range(merchants) if categories[j] == category][:n]}
    shops = [Merchant(f"m-{i:04d}", categories[i], float(popularity[i]), float(risk[i]), i in fallback)
             for i in range(merchants)]
    return Population(people, shops)


# --- the simulation ----------------------------------------------------------------------------------------------


@dataclass
class _Draft:
    """A transaction before ids, tie-breaking and labels are fixed."""

    time: float  # seconds since start
    customer: Customer
    merchant: Merchant
    amount: float
    country: str
    card_present: bool
    pattern: str
    delay_quantile: float


class _Day:
    """Draws one simulated day's transactions from the day's own random stream."""

    def __init__(self, world: Population, spec: Scenario, *, seed: int, day: int, shifted: bool,
                 transactions_per_day: int) -> None:
        self.world = world
        self.spec = spec
        self.rng = np.random.default_rng([seed, 1, day])
        self.t0 = day * 86_400.0
        self.shifted = shifted
        self.tpd = transactions_per_day
        self.out: list[_Draft] = []
        people = world.customers
        self.activity = np.array([c.activity for c in people]) / sum(c.activity for c in people)
        share = "shifted_share" if shifted and spec.covariate_shift else "legit_share"
        self.legit_mix = _normalized([getattr(CATEGORIES[c], share) for c in CATEGORY_NAMES])
        self.fraud_mix = _normalized([CATEGORIES[c].fraud_share for c in CATEGORY_NAMES])
        self.spend_factor = spec.spend_multiplier if shifted and spec.covariate_shift else 1.0

    def draw(self) -> list[_Draft]:
        # The order of draws is fixed, so a day is reproducible from (seed, day, scenario phase).
        self._legit(int(self.rng.poisson(self.tpd)))
        cnp_rate = self.tpd * FRAUD_SHARE / (1 + FRAUD_EXTRA_MEAN)  # episodes a day
        if self.shifted and self.spec.concept_shift:
            cnp_rate *= self.spec.old_fraud_multiplier
        for _ in range(int(self.rng.poisson(cnp_rate))):
            self._card_not_present_episode()
        if self.shifted and self.spec.concept_shift:
            for _ in range(int(self.rng.poisson(self.tpd * self.spec.cloned_card_rate / 2.0))):  # 2 per episode
                self._cloned_card_episode()
        return self.out

    def _hour_time(self, hours: np.ndarray) -> float:
        hour = self.rng.choice(24, p=hours / hours.sum())
        return self.t0 + hour * 3600.0 + self.rng.uniform(0.0, 3600.0)

    def _merchant(self, category: str, *, fraud: bool) -> Merchant:
        shops = self.world.by_category[category]
        w = np.array([m.popularity * (m.base_risk if fraud else 1.0) for m in shops])
        return shops[self.rng.choice(len(shops), p=w / w.sum())]

    def _legit_purchase(self, customer: Customer, time: float, pattern: str) -> _Draft:
        category = CATEGORY_NAMES[self.rng.choice(len(CATEGORY_NAMES), p=self.legit_mix)]
        profile = CATEGORIES[category]
        merchant = self._merchant(category, fraud=False)
        amount = customer.spend_level * self.spend_factor * profile.amount_factor * np.exp(self.rng.normal(0.0, 0.5))
        abroad = self.rng.random() < customer.travel_propensity
        country = self._foreign_country(customer) if abroad else customer.home_country
        card_present = bool(self.rng.random() < profile.card_present)
        return _Draft(time, customer, merchant, amount, country, card_present, pattern, self.rng.random())

    def _legit(self, n: int) -> None:
        idx = self.rng.choice(len(self.world.customers), size=n, p=self.activity)
        for i in idx:
            self.out.append(self._legit_purchase(self.world.customers[i], self._hour_time(LEGIT_HOURS), ""))

    def _foreign_country(self, customer: Customer) -> str:
        others = [c for c in COUNTRIES if c != customer.home_country]
        return others[self.rng.integers(len(others))]

    def _episode_times(self, first: float, n: int) -> list[float]:
        gaps = self.rng.exponential(25 * 60.0, n - 1)
        return [first, *(first + np.cumsum(gaps)).tolist()]

    def _card_not_present_episode(self) -> None:
        """A compromised card: a burst of purchases, mostly CNP, abroad, at night, large and risky."""
        customer = self.world.customers[self.rng.integers(len(self.world.customers))]
        n = int(self.rng.geometric(1 / (1 + FRAUD_EXTRA_MEAN)))  # 1, 2, ... (mean 1 + FRAUD_EXTRA_MEAN)
        for time in self._episode_times(self._hour_time(FRAUD_HOURS), n):
            if self.rng.random() < STEALTH_SHARE:
                self.out.append(self._legit_purchase(customer, time, "stealth"))
                continue
            category = CATEGORY_NAMES[self.rng.choice(len(CATEGORY_NAMES), p=self.fraud_mix)]
            profile = CATEGORIES[category]
            merchant = self._merchant(category, fraud=True)
            amount = (customer.spend_level * self.spend_factor * profile.amount_factor
                      * np.exp(self.rng.normal(np.log(3.0), 0.7)))
            country = self._foreign_country(customer) if self.rng.random() < 0.5 else customer.home_country
            card_present = bool(self.rng.random() < profile.card_present * 0.3)
            self.out.append(_Draft(time, customer, merchant, amount, country, card_present, "card_not_present",
                                   self.rng.random()))

    def _cloned_card_episode(self) -> None:
        """A cloned card used in person: small everyday purchases in the daytime, at home."""
        customer = self.world.customers[self.rng.integers(len(self.world.customers))]
        n = 1 + int(self.rng.integers(0, 3))
        fallback = [m for c in EVERYDAY_CATEGORIES for m in self.world.by_category[c] if m.magstripe_fallback]
        for _ in range(n):
            time = self._hour_time(DAYTIME_HOURS)
            if self.rng.random() < 0.6:
                merchant = fallback[self.rng.integers(len(fallback))]
            else:
                category = EVERYDAY_CATEGORIES[self.rng.integers(len(EVERYDAY_CATEGORIES))]
                merchant = self._merchant(category, fraud=False)
            amount = (customer.spend_level * self.spend_factor * CATEGORIES[merchant.category].amount_factor
                      * np.exp(self.rng.normal(np.log(0.8), 0.4)))
            self.out.append(_Draft(time, customer, merchant, amount, customer.home_country, True, "cloned_card",
                                   self.rng.random()))


def _normalized(values: list[float]) -> np.ndarray:
    a = np.array(values, dtype=float)
    return a / a.sum()


def generate(
    scenario: str | Scenario = "stable",
    *,
    seed: int = 7,
    start: datetime,
    days: int,
    transactions_per_day: int = 300,
    customers: int = 500,
    merchants: int = 60,
    onset_day: int | None = None,
) -> list[Transaction]:
    """Simulate `days` days of card payments from `start` (UTC), sorted by event time.

    About `transactions_per_day` legit purchases a day (Poisson), plus fraud (about 3 %
    of all transactions on `stable`). Shift scenarios change the world from `onset_day`
    (default `days // 2`) on. Event times are strictly increasing (ties are broken by
    one microsecond); transaction ids are `t-<YYYYMMDD>-<n>`, numbered per day.
    """
    spec = get_scenario(scenario)
    if days < 1 or transactions_per_day < 1:
        raise ValueError("days and transactions_per_day must be positive")
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    onset = days // 2 if onset_day is None else onset_day
    world = population(seed=seed, customers=customers, merchants=merchants)
    drafts: list[_Draft] = []
    for day in range(days):
        shifted = spec.has_onset and day >= onset
        drafts.extend(_Day(world, spec, seed=seed, day=day, shifted=shifted,
                           transactions_per_day=transactions_per_day).draw())
    end = days * 86_400.0
    drafts = sorted((d for d in drafts if d.time < end), key=lambda d: d.time)

    out: list[Transaction] = []
    per_day: dict[str, int] = {}
    previous: datetime | None = None
    for d in drafts:
        time = start + timedelta(seconds=d.time)
        if previous is not None and time <= previous:
            time = previous + timedelta(microseconds=1)
        previous = time
        day_key = f"{time:%Y%m%d}"
        n = per_day.get(day_key, 0)
        per_day[day_key] = n + 1
        fraud = d.pattern != ""
        lo, hi = spec.chargeback_days if fraud else spec.settlement_days
        observed = time + timedelta(days=lo + d.delay_quantile * (hi - lo))
        out.append(Transaction(
            transaction_id=f"t-{day_key}-{n:05d}", customer_id=d.customer.customer_id,
            merchant_id=d.merchant.merchant_id, event_time=time, amount=round(float(d.amount), 2),
            hour_of_day=time.hour, is_foreign=d.country != d.customer.home_country, card_present=d.card_present,
            merchant_category=d.merchant.category, is_fraud=fraud, label_observed_at=observed, country=d.country,
            fraud_pattern=d.pattern,
        ))
    return out


def fraud_rate(transactions: list[Transaction]) -> float:
    return sum(t.is_fraud for t in transactions) / len(transactions) if transactions else 0.0


# The pipeline half of the API, so the whole of it can be imported from here (see the module docstring).
from payments_demo.pipeline import (  # noqa: E402
    FeatureRow,
    all_events,
    feature_events,
    feature_rows,
    feedback_events,
    label_events,
    publish,
)

__all__ = [
    "CATEGORIES",
    "SCENARIOS",
    "Customer",
    "FeatureRow",
    "Merchant",
    "Population",
    "Scenario",
    "Transaction",
    "all_events",
    "feature_events",
    "feature_rows",
    "feedback_events",
    "fraud_rate",
    "generate",
    "get_scenario",
    "label_events",
    "population",
    "publish",
]
