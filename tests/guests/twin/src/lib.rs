//! Test-only: the `twin` component, a second subscriber to the events `faulty` reacts to.
cairn_guest::export_aggregate!(misbehave::Twin);
