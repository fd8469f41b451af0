//! Test-only: a later version of `faulty` whose reaction no longer traps.
cairn_guest::export_aggregate!(misbehave::Faulty<true>);
