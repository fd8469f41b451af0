-- Event schema versions (docs/ARCHITECTURE.md, "Schema versions and upcasting"): the
-- schema each event's data was written in. Events stored before it were all at the first.
-- A constant default and no CHECK: adding it rewrites and scans nothing, however long the
-- log (the host writes only declared versions, from 1, and reads refuse anything else).
ALTER TABLE cairn.events ADD COLUMN schema integer NOT NULL DEFAULT 1;
