"""The feature store on the session's broker and database: a FeatureStoreApp in-process, serving the tiny
Feast repo in tests/fixtures/feast_repo from its own schema, with its own consumer group.

Covered: features.updates -> online features; point-in-time correct historical retrieval; idempotent
redelivery; the dead-letter topic; PushFeatures, Materialize, ListFeatureViews; error statuses; health.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import AsyncConnection, sql

from flywheel.common import rpc
from flywheel.common.events import Event
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.topics import FEATURES_UPDATES
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.features import Features
from flywheel.featurestore.main import SERVICE_NAME, FeatureStoreApp
from flywheel.featurestore.repo import feast_config
from flywheel.proto.events.v1.features_pb2 import FeaturesUpdated, FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as pb_grpc
from tests import polling
from tests.kafka_helpers import header, read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

FEAST_REPO = Path(__file__).resolve().parents[1] / "fixtures" / "feast_repo"
PRESENT, NOT_FOUND = pb.FEATURE_STATUS_PRESENT, pb.FEATURE_STATUS_NOT_FOUND
CUSTOMER_FEATURES = ["customer_profile__avg_amount_30d", "customer_profile__txn_count_7d",
                     "customer_profile__segment", "customer_profile__is_vip"]


def featurestore_settings(infra, **overrides: Any) -> FeatureStoreSettings:  # type: ignore[no-untyped-def]
    """Settings of a feature store of its own (schema, consumer group) on the session's broker and database."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        **shared_settings(infra), db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
        repo=str(FEAST_REPO))
    values.update(overrides)
    return FeatureStoreSettings(**values)


@pytest.fixture(scope="module")
async def app(infra) -> AsyncIterator[FeatureStoreApp]:  # type: ignore[no-untyped-def]
    app = FeatureStoreApp(featurestore_settings(infra))
    await app.start()
    await wait_assigned(app.consumer)
    yield app
    await app.stop()


@pytest.fixture(scope="module")
async def stub(infra, app: FeatureStoreApp) -> AsyncIterator[pb_grpc.FeatureStoreServiceStub]:
    async with rpc.channel(app.address, default_timeout=30, auth=infra.tokens.auth()) as channel:
        yield pb_grpc.FeatureStoreServiceStub(channel)


# -- helpers -------------------------------------------------------------------------------------------------


def s(value: str) -> FeatureValue:
    return FeatureValue(string_value=value)


def f(value: float) -> FeatureValue:
    return FeatureValue(double_value=value)


def i(value: int) -> FeatureValue:
    return FeatureValue(int64_value=value)


def b(value: bool) -> FeatureValue:
    return FeatureValue(bool_value=value)


NULL = FeatureValue()


def ts(when: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromDatetime(when)
    return out


def service(name: str) -> pb.FeatureSelection:
    return pb.FeatureSelection(feature_service=name)


def refs(*names: str) -> pb.FeatureSelection:
    return pb.FeatureSelection(features=pb.FeatureRefs(refs=list(names)))


def customer_row(customer: str, when: datetime | None = None) -> pb.EntityRow:
    row = pb.EntityRow(keys={"customer_id": s(customer)})
    if when is not None:
        row.event_time.CopyFrom(ts(when))
    return row


def profile(avg: float, count: int, segment: str | None = "gold", vip: bool | None = True) -> dict[str, FeatureValue]:
    return {"avg_amount_30d": f(avg), "txn_count_7d": i(count),
            "segment": NULL if segment is None else s(segment), "is_vip": NULL if vip is None else b(vip)}


def profile_push(customer: str, when: datetime, **values: Any) -> pb.PushRow:
    return pb.PushRow(entity_keys={"customer_id": s(customer)}, values=profile(**values), event_time=ts(when))


def update(push_source: str, keys: dict[str, str], values: dict[str, FeatureValue], when: datetime,
           event_id: str | None = None) -> Event:
    payload = FeaturesUpdated(update_id=uuid.uuid4().hex, push_source=push_source, entity_keys=keys, values=values,
                              event_time=ts(when))
    event = Event(FEATURES_UPDATES, next(iter(keys.values())), payload, "tests/featurestore")
    if event_id:
        event.id = event_id
    return event


def plain(value: FeatureValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


async def online(stub: pb_grpc.FeatureStoreServiceStub, selection: pb.FeatureSelection,
                 *rows: pb.EntityRow) -> pb.GetOnlineFeaturesResponse:
    return await stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(features=selection, entity_rows=list(rows)))


# Generous: the session's features.updates also holds other tests' rows (e.g. the evaluator's 14 days),
# which a consumer reading from the start applies first.
eventually = partial(polling.eventually, timeout=180.0)


async def offline_rows(app: FeatureStoreApp, customer: str) -> list[tuple[Any, ...]]:
    async with await AsyncConnection.connect(app.settings.database_url) as conn:
        cur = await conn.execute(sql.SQL(
            "SELECT avg_amount_30d, txn_count_7d, event_timestamp FROM {} WHERE customer_id = %s "
            "ORDER BY event_timestamp").format(sql.Identifier(app.settings.db_schema, "customer_profile_source")),
            (customer,))
        return await cur.fetchall()


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


# -- serving and schemas -------------------------------------------------------------------------------------


async def test_health_reports_serving(app: FeatureStoreApp) -> None:
    async with rpc.channel(app.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_list_feature_views_returns_the_schemas(stub) -> None:  # type: ignore[no-untyped-def]
    response = await stub.ListFeatureViews(pb.ListFeatureViewsRequest())
    views = {v.name: v for v in response.feature_views}
    assert set(views) == {"customer_profile", "merchant_risk"}
    customer = views["customer_profile"]
    assert list(customer.entities) == ["customer_id"]
    assert [(x.name, x.dtype) for x in customer.features] == [
        ("avg_amount_30d", "Float64"), ("txn_count_7d", "Int64"), ("segment", "String"), ("is_vip", "Bool")]
    assert customer.ttl.ToTimedelta() == timedelta(days=30)
    assert customer.online and customer.push_source == "customer_profile_push"
    assert customer.description == "Spending profile of a customer."
    assert [(x.name, x.dtype) for x in views["merchant_risk"].features] == [("chargeback_rate", "Float64")]
    services = {x.name: list(x.features) for x in response.feature_services}
    assert services == {
        "customer_features": ["customer_profile:avg_amount_30d", "customer_profile:txn_count_7d",
                              "customer_profile:segment", "customer_profile:is_vip"],
        "fraud_features": ["customer_profile:avg_amount_30d", "customer_profile:txn_count_7d",
                           "merchant_risk:chargeback_rate"],
    }


# -- writes: pushes and events -------------------------------------------------------------------------------


async def test_push_then_online_features_in_request_order(app, stub, unique: str) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    a, b_, missing = f"a-{unique}", f"b-{unique}", f"nobody-{unique}"
    pushed = await stub.PushFeatures(pb.PushFeaturesRequest(push_source="customer_profile_push", rows=[
        profile_push(a, now - timedelta(minutes=5), avg=10.0, count=1),
        profile_push(b_, now, avg=20.5, count=7, segment=None, vip=False),
        profile_push(a, now, avg=12.5, count=2, segment="silver", vip=False),  # later row of `a` wins online
    ]))
    assert pushed.rows_written == 3

    response = await online(stub, service("customer_features"), customer_row(b_), customer_row(missing),
                            customer_row(a))
    assert list(response.feature_names) == CUSTOMER_FEATURES
    assert [[plain(v) for v in row.values] for row in response.rows] == [
        [20.5, 7, None, False], [None, None, None, None], [12.5, 2, "silver", False]]
    assert [list(row.statuses) for row in response.rows] == [[PRESENT] * 4, [NOT_FOUND] * 4, [PRESENT] * 4]

    # A value older than the view's ttl (30 days) is returned, marked OUTSIDE_MAX_AGE.
    stale = f"stale-{unique}"
    await stub.PushFeatures(pb.PushFeaturesRequest(push_source="customer_profile_push", rows=[
        profile_push(stale, now - timedelta(days=31), avg=5.0, count=5)]))
    response = await online(stub, service("customer_features"), customer_row(stale))
    assert [plain(v) for v in response.rows[0].values] == [5.0, 5, "gold", True]
    assert list(response.rows[0].statuses) == [pb.FEATURE_STATUS_OUTSIDE_MAX_AGE] * 4

    # References, in any order and across views, come back in the order asked.
    await stub.PushFeatures(pb.PushFeaturesRequest(push_source="merchant_risk_push", rows=[pb.PushRow(
        entity_keys={"merchant_id": i(901)}, values={"chargeback_rate": f(0.25)}, event_time=ts(now))]))
    response = await online(stub, refs("merchant_risk:chargeback_rate", "customer_profile:txn_count_7d"),
                            pb.EntityRow(keys={"customer_id": s(a), "merchant_id": i(901)}))
    assert list(response.feature_names) == ["merchant_risk__chargeback_rate", "customer_profile__txn_count_7d"]
    assert [plain(v) for v in response.rows[0].values] == [0.25, 2]
    # Every pushed row is kept offline (history), not only the latest.
    assert [row[:2] for row in await offline_rows(app, a)] == [(10.0, 1), (12.5, 2)]


async def test_features_updates_events_reach_the_online_store(app, stub, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    customer = f"ev-{unique}"
    merchant = 700_000 + int(unique[:5], 16)  # integer join key, sent as text in the event
    await send_events(producer, [
        update("customer_profile_push", {"customer_id": customer}, profile(avg=3.5, count=4), now),
        update("merchant_risk_push", {"merchant_id": str(merchant)}, {"chargeback_rate": f(0.125)}, now),
    ])

    async def fraud_row() -> list[Any] | None:
        response = await online(stub, service("fraud_features"),
                                pb.EntityRow(keys={"customer_id": s(customer), "merchant_id": i(merchant)}))
        row = response.rows[0]
        return [plain(v) for v in row.values] if all(x == PRESENT for x in row.statuses) else None

    assert await eventually(fraud_row, what="event values online") == [3.5, 4, 0.125]


async def test_redelivered_event_is_applied_once(app, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    customer = f"dup-{unique}"
    first = datetime.now(UTC) - timedelta(minutes=1)
    event = update("customer_profile_push", {"customer_id": customer}, profile(avg=1.0, count=1), first,
                   event_id=f"dup-{unique}")
    again = update("customer_profile_push", {"customer_id": customer}, profile(avg=1.0, count=1), first,
                   event_id=f"dup-{unique}")
    # Same key, same partition: once the sentinel is in, the redelivery before it has been handled too.
    sentinel = update("customer_profile_push", {"customer_id": customer}, profile(avg=2.0, count=2),
                      first + timedelta(seconds=30))
    await send_events(producer, [event])
    await send_events(producer, [again, sentinel])

    async def both_seen() -> list[tuple[Any, ...]] | None:
        rows = await offline_rows(app, customer)
        return rows if any(r[0] == 2.0 for r in rows) else None

    rows = await eventually(both_seen, what="sentinel event applied")
    assert [r[:2] for r in rows] == [(1.0, 1), (2.0, 2)]  # the redelivered event added no second row


async def test_poison_events_go_to_the_dead_letter_topic_and_the_consumer_goes_on(  # type: ignore[no-untyped-def]
        app, stub, producer, infra, unique: str) -> None:
    now = datetime.now(UTC)
    poison = {
        f"unknown-source-{unique}": update("no_such_push", {"customer_id": f"p-{unique}"}, profile(1.0, 1), now),
        f"bad-value-{unique}": update("customer_profile_push", {"customer_id": f"p-{unique}"},
                                      {**profile(1.0, 1), "txn_count_7d": s("many")}, now),
        f"bad-key-{unique}": update("merchant_risk_push", {"merchant_id": "not-a-number"},
                                    {"chargeback_rate": f(0.5)}, now),
    }
    for event_id, event in poison.items():
        event.id = event_id
    good = f"after-poison-{unique}"
    await send_events(producer, [*poison.values(),
                                 update("customer_profile_push", {"customer_id": good}, profile(9.0, 9), now)])

    def dead(records: list[Any]) -> dict[str, str]:
        return {header(r, "ce_id"): header(r, "dlq_error") for r in records if header(r, "ce_id") in poison
                and header(r, "dlq_consumer") == app.settings.consumer_group}

    records = await read_records(infra.kafka_bootstrap, FEATURES_UPDATES.dlq, until=lambda rs: len(dead(rs)) == 3)
    errors = dead(records)
    assert "push source 'no_such_push' not found" in errors[f"unknown-source-{unique}"]
    assert "values['txn_count_7d'] must be int64_value" in errors[f"bad-value-{unique}"]
    assert "entity_keys['merchant_id'] = 'not-a-number' is not an integer" in errors[f"bad-key-{unique}"]

    async def good_online() -> bool:
        response = await online(stub, service("customer_features"), customer_row(good))
        return response.rows[0].statuses[0] == PRESENT

    assert await eventually(good_online, what="the event after the poison ones applied")
    assert await offline_rows(app, f"p-{unique}") == []  # nothing of a poison batch-mate was kept


# -- historical retrieval -----------------------------------------------------------------------------------


async def test_historical_features_are_point_in_time_correct(app, stub, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    customer, other = f"pit-{unique}", f"pit-other-{unique}"
    t1 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    t2, t3, t4 = t1 + timedelta(hours=1), t1 + timedelta(hours=2), t1 + timedelta(hours=3)
    # t1 arrives as an event, t3 through PushFeatures: both paths land in the same offline table.
    await send_events(producer, [update("customer_profile_push", {"customer_id": customer},
                                        profile(1.0, 1, "t1"), t1)])
    await eventually(lambda: offline_rows(app, customer), what="the t1 event stored offline")
    await stub.PushFeatures(pb.PushFeaturesRequest(push_source="customer_profile_push", rows=[
        profile_push(customer, t3, avg=3.0, count=3, segment="t3"),
        profile_push(other, t2, avg=50.0, count=50, segment="other")]))

    rows = [customer_row(customer, t4), customer_row(customer, t2), customer_row(customer, t1 - timedelta(hours=1)),
            customer_row(other, t4), customer_row(customer, t3), customer_row(customer, t2),
            customer_row(f"never-{unique}", t4)]
    request = pb.GetHistoricalFeaturesRequest(features=service("customer_features"), entity_rows=rows, page_size=3)
    pages = [page async for page in stub.GetHistoricalFeatures(request)]

    assert [len(p.rows) for p in pages] == [3, 3, 1]
    assert list(pages[0].feature_names) == CUSTOMER_FEATURES and not pages[1].feature_names
    echoed = [row for p in pages for row in p.entity_rows]
    assert echoed == rows  # in request order, keys and event_time echoed
    got = [[plain(v) for v in row.values] for p in pages for row in p.rows]
    assert got == [
        [3.0, 3, "t3", True],          # t4 sees t3's values
        [1.0, 1, "t1", True],          # t2 sees t1's, never t3's (written later in event time)
        [None, None, None, None],      # before t1: nothing yet
        [50.0, 50, "other", True],
        [3.0, 3, "t3", True],          # exactly at t3: t3's values
        [1.0, 1, "t1", True],          # a repeated row gets the same answer
        [None, None, None, None],      # an unknown entity
    ]
    statuses = [list(row.statuses) for p in pages for row in p.rows]
    assert statuses[0] == [PRESENT] * 4 and statuses[2] == [NOT_FOUND] * 4 and statuses[6] == [NOT_FOUND] * 4

    # A feature service spanning two views with different entity types.
    await stub.PushFeatures(pb.PushFeaturesRequest(push_source="merchant_risk_push", rows=[pb.PushRow(
        entity_keys={"merchant_id": i(4242)}, values={"chargeback_rate": f(0.5)}, event_time=ts(t2))]))
    request = pb.GetHistoricalFeaturesRequest(features=service("fraud_features"), entity_rows=[
        pb.EntityRow(keys={"customer_id": s(customer), "merchant_id": i(4242)}, event_time=ts(t4)),
        pb.EntityRow(keys={"customer_id": s(customer), "merchant_id": i(4242)}, event_time=ts(t1))])
    [page] = [page async for page in stub.GetHistoricalFeatures(request)]
    assert [[plain(v) for v in row.values] for row in page.rows] == [[3.0, 3, 0.5], [1.0, 1, None]]


# -- materialization ---------------------------------------------------------------------------------------


async def test_materialize_copies_offline_values_online(app, stub, unique: str) -> None:  # type: ignore[no-untyped-def]
    customer = f"mat-{unique}"
    when = datetime.now(UTC) - timedelta(hours=1)
    # A row that only exists offline (e.g. a backfill written straight to the source table).
    async with await AsyncConnection.connect(app.settings.database_url, autocommit=True) as conn:
        await conn.execute(sql.SQL(
            "INSERT INTO {} (customer_id, avg_amount_30d, txn_count_7d, segment, is_vip, event_timestamp, created) "
            "VALUES (%s, 42.0, 42, 'backfill', false, %s, now())").format(
                sql.Identifier(app.settings.db_schema, "customer_profile_source")), (customer, when))
    before = await online(stub, service("customer_features"), customer_row(customer))
    assert list(before.rows[0].statuses) == [NOT_FOUND] * 4

    response = await stub.Materialize(pb.MaterializeRequest(
        start_time=ts(when - timedelta(minutes=1)), end_time=ts(datetime.now(UTC)), feature_views=["customer_profile"]))
    assert list(response.feature_views) == ["customer_profile"]
    after = await online(stub, service("customer_features"), customer_row(customer))
    assert [plain(v) for v in after.rows[0].values] == [42.0, 42, "backfill", False]

    everything = await stub.Materialize(pb.MaterializeRequest(start_time=ts(when), end_time=ts(datetime.now(UTC))))
    assert set(everything.feature_views) == {"customer_profile", "merchant_risk"}


# -- errors ---------------------------------------------------------------------------------------------------


async def test_unknown_names_are_not_found(stub) -> None:  # type: ignore[no-untyped-def]
    row = customer_row("c")
    NF = grpc.StatusCode.NOT_FOUND
    await expect_error(online(stub, service("nope_service"), row), NF, "feature service 'nope_service'")
    await expect_error(online(stub, refs("nope_view:x"), row), NF, "feature view 'nope_view'")
    await expect_error(online(stub, refs("customer_profile:nope_feature"), row), NF, "feature 'nope_feature'",
                       "'customer_profile'")
    await expect_error(stub.PushFeatures(pb.PushFeaturesRequest(push_source="nope_push", rows=[
        profile_push("c", datetime.now(UTC), avg=1.0, count=1)])), NF, "push source 'nope_push'")
    await expect_error(stub.Materialize(pb.MaterializeRequest(
        start_time=ts(datetime.now(UTC) - timedelta(days=1)), feature_views=["nope_view"])), NF, "'nope_view'")
    historical = stub.GetHistoricalFeatures(pb.GetHistoricalFeaturesRequest(
        features=service("nope_service"), entity_rows=[customer_row("c", datetime.now(UTC))]))
    await expect_error(historical.read(), NF, "feature service 'nope_service'")


async def test_bad_requests_are_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    IA = grpc.StatusCode.INVALID_ARGUMENT
    now = datetime.now(UTC)
    cf = service("customer_features")
    await expect_error(online(stub, cf), IA, "entity_rows must not be empty")
    await expect_error(online(stub, pb.FeatureSelection(), customer_row("c")), IA, "features")
    await expect_error(online(stub, refs("customer_profile"), customer_row("c")), IA, "features.refs[0]")
    await expect_error(online(stub, cf, customer_row("c"), pb.EntityRow(keys={"customer": s("c")})), IA,
                       "entity_rows[1].keys['customer'] is not a join key")
    await expect_error(online(stub, service("fraud_features"), customer_row("c")), IA,
                       "entity_rows[0].keys has no 'merchant_id'")
    await expect_error(online(stub, cf, pb.EntityRow(keys={"customer_id": i(7)})), IA,
                       "entity_rows[0].keys['customer_id'] must be string_value")
    await expect_error(online(stub, cf, pb.EntityRow(keys={"customer_id": NULL})), IA,
                       "entity_rows[0].keys['customer_id'] must not be null")

    historical = stub.GetHistoricalFeatures(pb.GetHistoricalFeaturesRequest(
        features=cf, entity_rows=[customer_row("c", now), customer_row("c")]))
    await expect_error(historical.read(), IA, "entity_rows[1].event_time is required")

    def push(*rows: pb.PushRow) -> Any:
        return stub.PushFeatures(pb.PushFeaturesRequest(push_source="customer_profile_push", rows=list(rows)))

    await expect_error(push(), IA, "rows must not be empty")
    await expect_error(push(pb.PushRow(entity_keys={"customer_id": s("c")}, values={
        **profile(1.0, 1), "txn_count_7d": f(1.5)}, event_time=ts(now))), IA,
                       "rows[0].values['txn_count_7d'] must be int64_value")
    await expect_error(push(pb.PushRow(entity_keys={"customer_id": s("c")}, values={"avg_amount_30d": f(1.0)},
                                       event_time=ts(now))), IA, "rows[0].values has no 'txn_count_7d'")
    await expect_error(push(profile_push("c", now, avg=1.0, count=1), pb.PushRow(
        entity_keys={"customer_id": s("c")}, values=profile(1.0, 1))), IA, "rows[1].event_time is required")
    await expect_error(push(pb.PushRow(entity_keys={"customer_id": s("c")}, values={**profile(1.0, 1), "x": f(1)},
                                       event_time=ts(now))), IA, "rows[0].values['x'] is not a feature")
    await expect_error(stub.Materialize(pb.MaterializeRequest(start_time=ts(now), end_time=ts(now - timedelta(1)))),
                       IA, "start_time")


async def test_a_second_start_applies_nothing_new(app: FeatureStoreApp) -> None:
    """Start-up is an idempotent `feast apply`: a replica on the same schema adds and deletes nothing."""
    settings = app.settings
    replica = Features(app.db, feast_config(settings.database_url, settings.db_schema, settings.project),
                       app.repo_path, online_threads=1)
    await replica.start()
    try:
        async with app.db.connection() as conn:
            cur = await conn.execute("SELECT added, deleted FROM repo_applies ORDER BY id")
            applies = await cur.fetchall()
        assert len(applies) == 2
        assert "FeatureView:customer_profile" in applies[0]["added"]
        assert applies[1] == {"added": [], "deleted": []}
        assert set(replica.catalog.views) == {"customer_profile", "merchant_risk"}
    finally:
        await replica.close()


async def test_a_start_without_a_repo_serves_what_was_applied_and_deletes_nothing(app: FeatureStoreApp) -> None:
    """An unset FLYWHEEL_FEATURESTORE_REPO applies nothing: it must not wipe the project's views."""
    settings = app.settings

    async def applies() -> int:
        async with app.db.connection() as conn:
            row = await (await conn.execute("SELECT count(*) AS n FROM repo_applies")).fetchone()
        assert row is not None
        return int(row["n"])

    before = await applies()
    bare = Features(app.db, feast_config(settings.database_url, settings.db_schema, settings.project), None,
                    online_threads=1)
    await bare.start()
    try:
        assert set(bare.catalog.views) == {"customer_profile", "merchant_risk"}
        assert await applies() == before
    finally:
        await bare.close()
