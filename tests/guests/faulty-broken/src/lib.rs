//! Test-only: a version of `faulty` whose fold traps, so the replay check refuses it.
cairn_guest::export_aggregate!(misbehave::Faulty<true, true>);
