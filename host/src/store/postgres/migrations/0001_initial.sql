-- Cairn's store on PostgreSQL, first version. Every table lives in the `cairn` schema.
-- Keys that are paged or ordered are `COLLATE "C"`: byte order, as the embedded store keeps them.

-- The head of the log: one row. Every group commit takes it FOR UPDATE first and holds it
-- until COMMIT, so positions are given in commit order (docs/ARCHITECTURE.md). Every group
-- moves the commit sequence (what tells whether a COMMIT whose answer was lost landed);
-- the owner epoch moves each time a host takes the database, and every group checks it.
CREATE TABLE cairn.log_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint NOT NULL,
    commit_sequence bigint NOT NULL,
    owner_epoch bigint NOT NULL
);
INSERT INTO cairn.log_head (position, commit_sequence, owner_epoch) VALUES (0, 0, 0);

-- The global log. (stream, version) is the key: two writers can never store one version.
CREATE TABLE cairn.events (
    stream_type text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    position bigint NOT NULL UNIQUE,
    event_type text NOT NULL,
    payload bytea NOT NULL,
    recorded_at_micros bigint NOT NULL,
    correlation_id text COLLATE "C" NOT NULL,
    causation_id text,
    component_version bigint NOT NULL,
    reply_to text,
    PRIMARY KEY (stream_type, stream_id, version)
);
CREATE INDEX events_by_correlation ON cairn.events (correlation_id, position);

-- Each stream's version and its newest event's position.
CREATE TABLE cairn.streams (
    stream_type text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    last_position bigint NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE INDEX streams_by_recency ON cairn.streams (stream_type, last_position DESC);

-- Each stream's newest snapshot, and one at every snapshot interval it passed.
CREATE TABLE cairn.snapshots (
    stream_type text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    digest bytea NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE TABLE cairn.snapshot_history (
    stream_type text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    digest bytea NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (stream_type, stream_id, version)
);

-- Outcomes of keyed commands: `idem:<key>` (a client's Idempotency-Key, forgotten after
-- the retention window, so it has a time) and `cause:<...>` (a routed command's dedup key).
CREATE TABLE cairn.outcomes (
    stream_type text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    outcome bytea NOT NULL,
    expires_from bigint,
    PRIMARY KEY (stream_type, stream_id, key)
);
CREATE INDEX outcomes_by_expiry ON cairn.outcomes (expires_from) WHERE expires_from IS NOT NULL;

CREATE TABLE cairn.cursors (
    name text COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL
);

CREATE TABLE cairn.dead_letters (
    subscriber text COLLATE "C" NOT NULL,
    stream text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    letter bytea NOT NULL,
    PRIMARY KEY (subscriber, stream, position)
);
CREATE TABLE cairn.dead_letter_counts (
    subscriber text COLLATE "C" PRIMARY KEY,
    count bigint NOT NULL
);

CREATE TABLE cairn.components (
    name text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE cairn.component_blobs (
    digest bytea PRIMARY KEY,
    bytes bytea NOT NULL
);

-- Views: derived data, rebuilt from the log when lost.
CREATE TABLE cairn.view_records (
    name text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE cairn.view_documents (
    projection text COLLATE "C" NOT NULL,
    generation integer NOT NULL,
    key text COLLATE "C" NOT NULL,
    document text NOT NULL,
    PRIMARY KEY (projection, generation, key)
);
