//! Test-only: a version of `faulty` whose upcaster traps on one stored event, so the replay
//! check refuses it naming that stream and event.
cairn_guest::export_aggregate!(misbehave::Faulty<false, false, true>);
