"""Prometheus metrics of the monitor."""

from prometheus_client import Counter, Gauge

ROWS_INGESTED = Counter("flywheel_monitor_rows_ingested_total", "Prediction rows added to windows.", ["model"])
DUPLICATE_ROWS = Counter("flywheel_monitor_duplicate_rows_total", "Replayed prediction rows dropped.", ["model"])
LABELS_JOINED = Counter("flywheel_monitor_labels_joined_total", "Labels joined to prediction rows.", ["model"])
WINDOWS_CLOSED = Counter("flywheel_monitor_windows_closed_total", "Windows closed.", ["model"])
WINDOWS_ANALYZED = Counter("flywheel_monitor_windows_analyzed_total", "Window analyses.", ["model", "outcome"])
ALERTS = Counter("flywheel_monitor_alerts_total", "drift.detected alerts emitted.", ["model"])
RETRAIN_REQUESTS = Counter("flywheel_monitor_retrain_requests_total", "retrain.requests emitted.", ["model"])
REVIEWS = Counter("flywheel_monitor_reviews_requested_total", "reviews.requested emitted.", ["model", "reason"])
DEAD_LETTERED = Counter("flywheel_monitor_dead_lettered_total", "Records sent to a .dlq topic.", ["topic"])
FEATURE_DRIFT = Gauge("flywheel_monitor_feature_drift_score", "Drift score of a feature in the last analyzed window.",
                      ["model", "version", "feature"])
WINDOW_METRIC = Gauge("flywheel_monitor_window_metric", "A metric of the last analyzed window (measured or est_*).",
                      ["model", "version", "metric"])
LLM_GENERATIONS = Counter("flywheel_monitor_llm_generations_total", "LLM answers scored (online scoring).",
                          ["application"])
LLM_SKIPPED = Counter("flywheel_monitor_llm_skipped_total", "LLM answers not scored, by why (arm, no_application, "
                      "not_sampled).", ["reason"])
LLM_WINDOWS_CLOSED = Counter("flywheel_monitor_llm_windows_closed_total", "LLM scoring windows closed.",
                             ["application"])
LLM_ALERTS = Counter("flywheel_monitor_llm_alerts_total", "LLM quality alerts (drift.detected).", ["application"])
LLM_FEEDBACK = Counter("flywheel_monitor_llm_feedback_total", "Feedback on LLM answers stored.")
LLM_SCORE = Gauge("flywheel_monitor_llm_score", "A score of the last closed LLM window of an application "
                  "(groundedness, refusal_rate, pii_leak_rate, negative_feedback_rate, generations, ...).",
                  ["application", "metric"])
