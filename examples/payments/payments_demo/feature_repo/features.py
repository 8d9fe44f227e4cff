"""Feast definitions of the payments demo: what a user writes to give the platform features.

Three feature views, each fed by a push source (the bank's streaming pipeline pushes rows
through the platform's `features.updates` topic) over a PostgreSQL batch table:

- `transactions` (per transaction_id): the payment itself, as authorized.
- `customer_stats` (per customer_id): the customer's recent history, stamped just before
  each of their transactions, so a point-in-time join at the transaction time sees only the past.
- `merchant_stats` (per merchant_id): daily merchant activity and fraud rate, from labels
  observed before the row's time only.

`fraud_model_v1` is the feature service the fraud model (`models/fraud.yaml`) trains and
serves on. No `project` here: the platform sets it.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float64, Int64, String

OWNER = "payments-risk@bank.example"


def batch_source(view: str) -> PostgreSQLSource:
    """The offline table a view's pushed rows land in (the platform creates it from the view's schema)."""
    return PostgreSQLSource(
        name=f"{view}_source",
        table=f"{view}_source",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description=f"Offline rows of the {view} view, written by its push source.",
    )


# --- entities ----------------------------------------------------------------------------------------------------

transaction = Entity(name="transaction", join_keys=["transaction_id"], value_type=ValueType.STRING,
                     description="A card payment, e.g. t-20260101-00042.", owner=OWNER)
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING,
                  description="A card holder, e.g. c-00042.", owner=OWNER)
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING,
                  description="An acquiring merchant account, e.g. m-0042.", owner=OWNER)

# --- sources -----------------------------------------------------------------------------------------------------

transactions_push = PushSource(name="transactions_push", batch_source=batch_source("transactions"),
                               description="Each authorized payment, as it happens.", owner=OWNER)
customer_stats_push = PushSource(name="customer_stats_push", batch_source=batch_source("customer_stats"),
                                 description="A customer's aggregates, pushed just before each payment.",
                                 owner=OWNER)
merchant_stats_push = PushSource(name="merchant_stats_push", batch_source=batch_source("merchant_stats"),
                                 description="Daily merchant aggregates (00:00 UTC).", owner=OWNER)

# --- feature views -----------------------------------------------------------------------------------------------

transactions = FeatureView(
    name="transactions",
    entities=[transaction],
    ttl=timedelta(days=30),
    schema=[
        Field(name="transaction_id", dtype=String),
        Field(name="customer_id", dtype=String, description="Who paid."),
        Field(name="merchant_id", dtype=String, description="Who was paid."),
        Field(name="amount", dtype=Float64, description="EUR."),
        Field(name="hour_of_day", dtype=Int64, description="0-23, UTC."),
        Field(name="is_foreign", dtype=Int64, description="1 when used outside the customer's home country."),
        Field(name="card_present", dtype=Int64, description="1 for chip/contactless, 0 for online/phone."),
        Field(name="merchant_category", dtype=String,
              description="grocery, fuel, restaurants, electronics, travel, online_gaming or jewelry."),
    ],
    online=True,
    source=transactions_push,
    description="The payment being scored.",
    owner=OWNER,
)

customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="customer_id", dtype=String),
        Field(name="txn_count_24h", dtype=Int64, description="Payments in the 24 h before this one."),
        Field(name="amount_sum_24h", dtype=Float64, description="Their total amount, EUR."),
        Field(name="avg_amount_30d", dtype=Float64, description="Mean amount over 30 days (0 without history)."),
    ],
    online=True,
    source=customer_stats_push,
    description="The customer's history strictly before the payment (stamped 1 microsecond before it).",
    owner=OWNER,
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=timedelta(days=60),
    schema=[
        Field(name="merchant_id", dtype=String),
        Field(name="txn_count_24h", dtype=Int64, description="Payments on the previous day."),
        Field(name="fraud_rate_30d", dtype=Float64,
              description="Fraud share among the last 30 days' payments whose label was known by then."),
    ],
    online=True,
    source=merchant_stats_push,
    description="Daily merchant aggregates, computed at 00:00 UTC from what was known then.",
    owner=OWNER,
)

# --- feature services --------------------------------------------------------------------------------------------

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[
        transactions[["amount", "hour_of_day", "is_foreign", "card_present", "merchant_category"]],
        customer_stats,
        merchant_stats,
    ],
    description="Features of the fraud model (models/fraud.yaml).",
    owner=OWNER,
)
