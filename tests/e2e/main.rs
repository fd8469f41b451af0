//! End-to-end tests: the real `cairn serve` binary, a temporary data directory with a
//! real redb file (or, for the scenarios in `on_postgres`, a real PostgreSQL database), the
//! real example components, and HTTP.

mod browser;
mod harness;
#[path = "../support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

mod backup;
mod bounds;
mod cli;
mod cluster;
mod commands;
mod console;
mod crash;
mod delivery;
mod deploys;
mod durability;
mod errors;
mod fuzz;
// Needs the fault hooks, which only debug builds have.
#[cfg(debug_assertions)]
mod in_process;
mod metrics;
mod on_postgres;
mod openapi;
mod orchestration;
mod postgres_store;
mod reads;
mod sagas;
mod sandbox;
mod schemas;
mod schemathesis;
mod stream;
mod traces;
mod trust;
mod views;
