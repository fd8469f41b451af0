//! # Cairn: a WebAssembly-hosted actor runtime for event-sourced aggregates
//!
//! Business logic is a pure function in a sandbox (a WebAssembly component exporting
//! `process-command` and `apply-event`); everything stateful belongs to this host.
//!
//! Where to start reading, following one command through the host:
//! - [`http`] decodes a request into a typed command;
//! - [`actor`] hands it to the single-writer actor of its stream, which decides it with
//!   the component from [`components`] (run by [`runtime`]) against its in-memory state;
//! - [`store`] appends the events (group commit, fsync) and the actor answers.
//!
//! - [`routing`] follows the log and delivers reactions between aggregates (sagas).
//! - [`projection`] follows the log too and keeps the read models in [`views`].
//!
//! Data flows one way: http → actor → store → routing / projection. Lower layers never call upward;
//! the store publishes its head position for whatever follows the log.

pub mod actor;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod components;
pub mod config;
pub mod faults;
pub mod host;
pub mod http;
pub mod lifecycle;
pub mod msgpack;
pub mod projection;
pub mod replay;
/// The WebAssembly runtime, a crate of its own (`cairn-runtime`).
pub use cairn_runtime as runtime;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod traces;
pub mod upcast;
