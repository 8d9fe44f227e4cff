-- The monitor's record: observations (the prediction/label join table, TTL), labels waiting
-- for their prediction (TTL), windows per model version, and the alerts decided on them.

CREATE TABLE version_state (
    model_name text NOT NULL,
    version bigint NOT NULL,
    -- The open window (count mode: filled in arrival order; time mode: the newest bucket).
    open_window_id text,
    windows bigint NOT NULL DEFAULT 0,
    -- Last time a prediction of this version arrived on the champion arm.
    champion_seen_at timestamptz,
    PRIMARY KEY (model_name, version)
);

CREATE TABLE windows (
    window_id text PRIMARY KEY,
    model_name text NOT NULL,
    version bigint NOT NULL,
    sequence bigint NOT NULL,
    -- open -> pending (closed, waiting for analysis) -> analyzed | failed
    state text NOT NULL DEFAULT 'open',
    -- Time mode: the bucket this window covers.
    bucket_start timestamptz,
    rows bigint NOT NULL DEFAULT 0,
    start_ts timestamptz,
    end_ts timestamptz,
    reviews integer NOT NULL DEFAULT 0,
    -- Labels joined rows after the last analysis: analyze again (performance).
    reanalyze boolean NOT NULL DEFAULT false,
    labelled_rows bigint NOT NULL DEFAULT 0,
    champion boolean NOT NULL DEFAULT false,
    summary jsonb,
    -- Evidently snapshot JSON, gzip-compressed; HTML is rendered from it on demand.
    snapshot_gz bytea,
    drifted boolean,
    drift_event_id text,
    error text,
    closed_at timestamptz,
    analyzed_at timestamptz,
    UNIQUE (model_name, version, sequence)
);
CREATE INDEX windows_todo ON windows (closed_at) WHERE state = 'pending' OR reanalyze;
CREATE INDEX windows_model ON windows (model_name, version, sequence DESC);

CREATE TABLE observations (
    request_id text NOT NULL,
    model_name text NOT NULL,
    version bigint NOT NULL,
    arm smallint NOT NULL,
    row_index integer NOT NULL,
    entity_id text NOT NULL DEFAULT '',
    ts timestamptz NOT NULL,
    window_id text NOT NULL,
    probability double precision,
    predicted boolean,
    -- float32 little-endian values in the order of the version's numeric features (NaN = missing).
    numeric bytea,
    -- Categorical values joined by U+001F, in the order of the version's categorical features.
    categorical text,
    label boolean,
    labelled_at timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, model_name, version, arm, row_index)
);
CREATE INDEX observations_window ON observations (window_id);
CREATE INDEX observations_ingested ON observations (ingested_at);
CREATE INDEX observations_labelled ON observations (model_name, ts) WHERE label IS NOT NULL;

-- Labels by request (and entity); kept until their TTL so every arm's prediction joins them.
CREATE TABLE labels (
    request_id text NOT NULL,
    entity_id text NOT NULL DEFAULT '',
    label boolean NOT NULL,
    source smallint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, entity_id)
);
CREATE INDEX labels_received ON labels (received_at);

CREATE TABLE alerts (
    drift_id text PRIMARY KEY,
    model_name text NOT NULL,
    version bigint NOT NULL,
    window_id text NOT NULL,
    -- Start of the earliest drifted window among the last M: retraining data starts here.
    onset timestamptz NOT NULL,
    reason smallint NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    event bytea NOT NULL,
    retrain_request_id text,
    retrain_requested_at timestamptz
);
CREATE INDEX alerts_version ON alerts (model_name, version, detected_at DESC);
CREATE INDEX alerts_waiting ON alerts (detected_at) WHERE retrain_request_id IS NULL;
