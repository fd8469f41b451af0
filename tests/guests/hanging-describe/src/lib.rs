//! Test-only: a `faulty` whose `describe()` never returns.
cairn_guest::export_aggregate!(misbehave::HangingDescribe);
