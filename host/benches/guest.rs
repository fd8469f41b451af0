//! criterion benchmarks (`cargo bench -p cairn --bench guest`):
//! (a) one command on the Account component, on a fresh instance as the host runs it,
//!     next to the same Account logic compiled natively: the guest's share of a command;
//! (c) JSON ⇄ MessagePack, as every command and answer crosses it;
//! (e) reading stored events through one upcast step (account-v3 folding events version 1
//!     wrote), next to the same fold of events already in its schema.

use cairn::runtime::{Limits, Runtime};
use cairn_guest::glue::RawCommand;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;

fn command(command_type: &str, data: serde_json::Value) -> RawCommand {
    RawCommand { command_type: command_type.to_owned(), payload: cairn::msgpack::to_msgpack(&data) }
}

fn a_command_on_the_account(c: &mut Criterion) {
    let runtime = Runtime::new(None, Limits::default()).expect("a runtime");
    let component = cairn_artifacts::component("account").expect("the bundled account component");
    let account = runtime.load_aggregate(component).expect("the account loads");
    let open = command("OpenAccount", json!({"initial_balance": 25_000}));
    let state = account.execute(None, &open).unwrap().unwrap().state;
    let credit = command("CreditAccount", json!({"amount": 500, "transaction_id": "t-1"}));
    let mut group = c.benchmark_group("a command on the Account");
    group.bench_function("wasm, fresh instance, execute", |b| {
        b.iter(|| account.execute(black_box(state.as_deref()), black_box(&credit)).unwrap().unwrap())
    });
    group.bench_function("native, same logic", |b| {
        b.iter(|| {
            cairn_guest::glue::execute::<account::AccountAggregate>(
                black_box(state.as_deref()),
                black_box(&credit),
            )
            .unwrap()
        })
    });
    group.finish();
}

fn json_and_msgpack(c: &mut Criterion) {
    let command = json!({"from_account_id": "101", "to_account_id": "202", "amount": 5500});
    let history: Vec<_> =
        (0..64).map(|n| json!({"transaction_id": format!("t-{n}"), "amount": n * 100})).collect();
    let state = json!({"balance": 19_500, "closed": false, "transactions": history});
    let mut group = c.benchmark_group("JSON and MessagePack");
    for (name, value) in [("a command's data", &command), ("a 64-transaction state", &state)] {
        let packed = cairn::msgpack::to_msgpack(value);
        group.bench_function(format!("{name}: JSON to MessagePack"), |b| {
            b.iter(|| cairn::msgpack::to_msgpack(black_box(value)))
        });
        group.bench_function(format!("{name}: MessagePack to JSON"), |b| {
            b.iter(|| cairn::msgpack::to_json(black_box(&packed)))
        });
    }
    group.finish();
}

/// `count` credits of account `a` as stored: in version 1's shape at schema 1, or in
/// account-v3's at schema 2.
fn credits(count: u64, first_schema: bool) -> Vec<cairn::store::StoredEvent> {
    (1..=count)
        .map(|n| {
            let cents = |c: u64| if first_schema { json!(c) } else { json!({"cents": c, "currency": "EUR"}) };
            let data = json!({"amount": cents(1), "transaction_id": format!("t-{n}"), "balance": cents(n)});
            cairn::store::StoredEvent {
                stream_type: "account".to_owned(),
                stream_id: "a".to_owned(),
                version: cairn::store::Version(n),
                position: cairn::store::Position(n),
                event_type: "AccountCredited".to_owned(),
                payload: cairn::msgpack::to_msgpack(&data),
                recorded_at_micros: 0,
                correlation_id: "c".to_owned(),
                causation_id: None,
                component_version: cairn::store::ComponentVersion(1),
                reply_to: None,
                schema: if first_schema { 1 } else { 2 },
                trace: None,
            }
        })
        .collect()
}

fn reading_through_an_upcast(c: &mut Criterion) {
    let runtime = Runtime::new(None, Limits::default()).expect("a runtime");
    let v3 = runtime.load_aggregate(cairn_artifacts::ACCOUNT_V3).expect("account-v3 loads");
    let mut group = c.benchmark_group("reading stored events with account-v3");
    for count in [1u64, 100] {
        for (name, first_schema) in [("in its schema", false), ("through one upcast step", true)] {
            let stored = credits(count, first_schema);
            group.bench_function(format!("{count} events {name}: upcast and fold"), |b| {
                b.iter(|| {
                    let mut events = stored.clone();
                    cairn::upcast::upcast_with(&v3, &mut events).unwrap();
                    let raw: Vec<_> = events
                        .into_iter()
                        .map(|e| cairn_guest::glue::RawEvent { event_type: e.event_type, payload: e.payload })
                        .collect();
                    v3.apply_events(None, black_box(&raw)).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, a_command_on_the_account, json_and_msgpack, reading_through_an_upcast);
criterion_main!(benches);
