//! Test-only projection `fragile-view`: counts each account's events and traps on
//! `AccountClosed` (logic in tests/guests/misbehave).
cairn_guest::export_projection!(misbehave::FragileView<false>);
