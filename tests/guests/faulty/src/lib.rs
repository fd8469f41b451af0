//! Test-only: the `faulty` component, whose reaction traps on a poisoned event.
cairn_guest::export_aggregate!(misbehave::Faulty<false>);
