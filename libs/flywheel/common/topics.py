"""The topic catalog: every Kafka topic Flywheel uses, its payload type and its key.

Topic names are dotted and plural; each carries one protobuf message type from
`flywheel.events.v1`. A topic's dead-letter topic is `<name>.dlq`.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from flywheel.proto.events.v1 import (
    documents_pb2,
    features_pb2,
    guard_pb2,
    models_pb2,
    monitoring_pb2,
    predictions_pb2,
    reviews_pb2,
)

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    message: type[Message]
    # What the message key is; ordering is guaranteed per key.
    key: str
    partitions: int = 3

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    @property
    def event_type(self) -> str:
        """The CloudEvents `type`: the full protobuf name of the payload."""
        return self.message.DESCRIPTOR.full_name


PREDICTIONS_LOGGED = Topic("predictions.logged", predictions_pb2.PredictionLogged, "request id", 6)
FEEDBACK_RECEIVED = Topic("feedback.received", predictions_pb2.FeedbackReceived, "request id", 6)
DRIFT_DETECTED = Topic("drift.detected", monitoring_pb2.DriftDetected, "model name")
RETRAIN_REQUESTS = Topic("retrain.requests", models_pb2.RetrainRequested, "model name")
MODELS_REGISTERED = Topic("models.registered", models_pb2.ModelRegistered, "model name")
MODELS_PROMOTED = Topic("models.promoted", models_pb2.ModelPromoted, "model name")
EVALUATIONS_COMPLETED = Topic("evaluations.completed", models_pb2.EvaluationCompleted, "model name")
REVIEWS_REQUESTED = Topic("reviews.requested", reviews_pb2.ReviewRequested, "request id")
REVIEWS_COMPLETED = Topic("reviews.completed", reviews_pb2.ReviewCompleted, "request id")
DOCUMENTS_INGESTED = Topic("documents.ingested", documents_pb2.DocumentIngested, "document id")
DOCUMENTS_EMBEDDED = Topic("documents.embedded", documents_pb2.DocumentEmbedded, "document id")
GUARD_VERDICTS = Topic("guard.verdicts", guard_pb2.GuardVerdict, "request id")
FEATURES_UPDATES = Topic("features.updates", features_pb2.FeaturesUpdated, "entity key", 6)

ALL_TOPICS: tuple[Topic, ...] = (
    PREDICTIONS_LOGGED, FEEDBACK_RECEIVED, DRIFT_DETECTED, RETRAIN_REQUESTS, MODELS_REGISTERED,
    MODELS_PROMOTED, EVALUATIONS_COMPLETED, REVIEWS_REQUESTED, REVIEWS_COMPLETED, DOCUMENTS_INGESTED,
    DOCUMENTS_EMBEDDED, GUARD_VERDICTS, FEATURES_UPDATES,
)
BY_NAME: dict[str, Topic] = {t.name: t for t in ALL_TOPICS}


def topic(name: str) -> Topic:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(sorted(BY_NAME))}") from None
