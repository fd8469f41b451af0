//! Version 3 as given/when/then, natively and on `account_v3.wasm`: histories written by
//! version 1 (schema 1) are read through the upcasters; new events are in the new shape.

use super::*;
use cairn_guest::serde_json::json;
use cairn_testkit::{describe_of, given_on, given_stored_on};

const WASM: &[u8] = cairn_artifacts::ACCOUNT_V3;

fn credit(amount: i64, tx: &str) -> AccountCommand {
    AccountCommand::CreditAccount { amount, transaction_id: tx.into(), transfer: TransferRef::default() }
}

fn debit(amount: i64, tx: &str) -> AccountCommand {
    AccountCommand::DebitAccount { amount, transaction_id: tx.into(), transfer: TransferRef::default() }
}

/// A history as version 1 stored it: an opening, a credit and a debit of a transfer.
fn version_1_history() -> Vec<(&'static str, u32, cairn_guest::serde_json::Value)> {
    vec![
        ("AccountOpened", 1, json!({"initial_balance": 1000})),
        ("AccountCredited", 1, json!({"amount": 500, "transaction_id": "c1", "balance": 1500})),
        (
            "AccountDebited",
            1,
            json!({"amount": 200, "transaction_id": "t1", "balance": 1300,
                   "transfer_id": "t1", "counterparty_account_id": "b"}),
        ),
    ]
}

#[test]
fn a_history_written_by_version_1_is_folded_through_the_upcasters() {
    given_stored_on::<AccountV3>("account_v3", WASM, version_1_history())
        .when(credit(1, "c2"))
        .then_events([AccountEvent::AccountCredited {
            amount: Money::eur(1),
            transaction_id: "c2".into(),
            balance: Money::eur(1301),
            transfer: None,
        }])
        .then_state(|account| {
            assert_eq!(account, &Account { balance: 1301, currency: "EUR".into(), closed: false });
        });
}

#[test]
fn old_and_new_shapes_mix_in_one_history() {
    let mut history = version_1_history();
    history.push((
        "AccountCredited",
        2,
        json!({"amount": {"cents": 7, "currency": "EUR"}, "transaction_id": "c9",
               "balance": {"cents": 1307, "currency": "EUR"}}),
    ));
    given_stored_on::<AccountV3>("account_v3", WASM, history).when(debit(2000, "d1")).then_events([
        AccountEvent::AccountDebitFailedDueToInsufficientFunds {
            amount: Money::eur(2000),
            transaction_id: "d1".into(),
            balance: Money::eur(1307),
            transfer: None,
        },
    ]);
}

#[test]
fn a_version_1_event_that_does_not_decode_traps_naming_it() {
    let history = vec![("AccountOpened", 1, json!({"initial_balance": "a thousand"}))];
    given_stored_on::<AccountV3>("account_v3", WASM, history)
        .when(credit(1, "c"))
        .then_trapped("upcasting AccountOpened from schema 1 failed");
}

#[test]
fn new_events_are_written_in_the_new_shape() {
    given_on::<AccountV3>(
        "account_v3",
        WASM,
        [AccountEvent::AccountOpened { initial_balance: Money::eur(10) }],
    )
    .when(AccountCommand::DebitAccount {
        amount: 4,
        transaction_id: "t".into(),
        transfer: TransferRef { transfer_id: Some("t".into()), counterparty_account_id: Some("b".into()) },
    })
    .then_events([AccountEvent::AccountDebited {
        amount: Money::eur(4),
        transaction_id: "t".into(),
        balance: Money::eur(6),
        transfer: Some(TransferRef {
            transfer_id: Some("t".into()),
            counterparty_account_id: Some("b".into()),
        }),
    }]);
}

#[test]
fn the_component_declares_schema_2_for_each_changed_type() {
    let info = describe_of("account_v3", WASM);
    for event_type in CHANGED {
        assert_eq!(info.schema_of(event_type), 2, "{event_type}");
    }
    assert_eq!(info.schema_of("AccountClosed"), 1);
}
