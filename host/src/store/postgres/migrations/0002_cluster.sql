-- A cluster of hosts on one database (docs/ARCHITECTURE.md, "A cluster on PostgreSQL").

-- The cluster's settings: how many partitions stream keys hash to (fixed here, once), the
-- secret hosts show each other when one forwards a request to another (never to clients),
-- and the admin token of every host that is given none.
CREATE TABLE cairn.cluster (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    partitions integer NOT NULL CHECK (partitions > 0),
    secret text NOT NULL,
    admin_token text NOT NULL
);
INSERT INTO cairn.cluster (partitions, secret, admin_token)
VALUES (256, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
        replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));

-- Every host that joined: where the others reach it, and when it last said it lives (by
-- the database's clock).
CREATE TABLE cairn.nodes (
    id text COLLATE "C" PRIMARY KEY,
    url text NOT NULL,
    incarnation text NOT NULL UNIQUE,
    started_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    left_at timestamptz
);

-- The commit sequence each host's groups move, by incarnation: what tells whether a COMMIT
-- of this host's whose answer was lost landed, whatever the other hosts commit. A row of its
-- own, so that a group holding it never holds up the host's renewals of its leases.
CREATE TABLE cairn.node_commits (
    incarnation text COLLATE "C" PRIMARY KEY,
    commit_sequence bigint NOT NULL DEFAULT 0
);

-- One lease per partition (0 … partitions - 1), and lease -1: the routing and the
-- projections, which run on one host at a time. A lease is held by `owner` until
-- `expires_at` (the database's clock); each new holder takes the next epoch, and every
-- append checks, in its own transaction, that its host still holds its partition at the
-- epoch it was granted.
CREATE TABLE cairn.leases (
    lease integer PRIMARY KEY,
    owner text COLLATE "C",
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO cairn.leases (lease) SELECT generate_series(-1, 255);

-- The epoch of the partition lease each event was appended under (NULL on one host): along
-- a stream it never goes down, which is what tells that no host appended after losing it.
ALTER TABLE cairn.events ADD COLUMN lease_epoch bigint;
