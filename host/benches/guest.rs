//! criterion benchmarks (`cargo bench -p cairn --bench guest`):
//! (a) one command on the Account component, on a fresh instance as the host runs it,
//!     next to the same Account logic compiled natively: the guest's share of a command;
//! (c) JSON ⇄ MessagePack, as every command and answer crosses it.

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

criterion_group!(benches, a_command_on_the_account, json_and_msgpack);
criterion_main!(benches);
