//! Test-only: a later version of the projection `fragile-view` that no longer traps.
cairn_guest::export_projection!(misbehave::FragileView<true>);
