-- Traces across sagas (docs/ARCHITECTURE.md, "Traces"): the W3C trace context each event's
-- command was part of, as its `traceparent` header form. Nullable with no default: adding
-- it rewrites nothing, and events stored before it have none.
ALTER TABLE cairn.events ADD COLUMN trace_parent text;
