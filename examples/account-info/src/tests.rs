//! The account-info view as given/then. Every scenario runs natively and on `account_info.wasm`.

use super::*;
use account::{AccountEvent::*, TransferRef};
use cairn_guest::serde_json::json;
use cairn_guest::testing::envelope;
use cairn_testkit::projection::given;

const AT: &str = "2026-01-01T00:00:00Z";

fn leg(transfer: &str, counterparty: &str) -> TransferRef {
    TransferRef { transfer_id: Some(transfer.into()), counterparty_account_id: Some(counterparty.into()) }
}

#[test]
fn an_opened_account_shows_its_opening_balance() {
    given::<AccountInfoProjection>([envelope("account", "A", 1, &AccountOpened { initial_balance: 25000 })])
        .then_view(
            "A",
            json!({"id": "A", "balance": 25000, "transactions": [
                {"transaction_id": "opening", "kind": "opened", "amount": 25000, "balance": 25000, "recorded_at": AT}
            ]}),
        );
}

#[test]
fn a_transfer_shows_the_debit_and_the_credit_with_their_counterparties() {
    given::<AccountInfoProjection>([
        envelope("account", "A", 1, &AccountOpened { initial_balance: 25000 }),
        envelope("account", "B", 1, &AccountOpened { initial_balance: 12500 }),
        envelope(
            "account",
            "A",
            2,
            &AccountDebited { amount: 5500, transaction_id: "t1".into(), balance: 19500, transfer: leg("t1", "B") },
        ),
        envelope(
            "account",
            "B",
            2,
            &AccountCredited { amount: 5500, transaction_id: "t1".into(), balance: 18000, transfer: leg("t1", "A") },
        ),
    ])
    .then_keys(["A", "B"])
    .then_view(
        "A",
        json!({"id": "A", "balance": 19500, "transactions": [
            {"transaction_id": "opening", "kind": "opened", "amount": 25000, "balance": 25000, "recorded_at": AT},
            {"transaction_id": "t1", "kind": "debit", "amount": 5500, "balance": 19500,
             "counterparty_account_id": "B", "transfer_id": "t1", "recorded_at": AT}
        ]}),
    )
    .then_view(
        "B",
        json!({"id": "B", "balance": 18000, "transactions": [
            {"transaction_id": "opening", "kind": "opened", "amount": 12500, "balance": 12500, "recorded_at": AT},
            {"transaction_id": "t1", "kind": "credit", "amount": 5500, "balance": 18000,
             "counterparty_account_id": "A", "transfer_id": "t1", "recorded_at": AT}
        ]}),
    );
}

#[test]
fn a_debit_refused_for_lack_of_funds_is_not_a_transaction_and_closing_is_shown() {
    given::<AccountInfoProjection>([
        envelope("account", "A", 1, &AccountOpened { initial_balance: 100 }),
        envelope(
            "account",
            "A",
            2,
            &AccountDebitFailedDueToInsufficientFunds {
                amount: 500,
                transaction_id: "t9".into(),
                balance: 100,
                transfer: TransferRef::default(),
            },
        ),
        envelope("account", "A", 3, &AccountClosed),
    ])
    .then_view(
        "A",
        json!({"id": "A", "balance": 100, "closed": true, "transactions": [
            {"transaction_id": "opening", "kind": "opened", "amount": 100, "balance": 100, "recorded_at": AT}
        ]}),
    );
}

#[test]
fn events_that_do_not_decode_stop_the_projection_with_a_clear_message() {
    given::<AccountInfoProjection>([envelope(
        "account",
        "A",
        1,
        &json!({"AccountOpened": {"initial_balance": "lots"}}),
    )])
    .then_trapped("AccountOpened at position 1 does not decode");
}

/// However many transactions an account has, its document holds the recent ones and links
/// the pages of the older ones, each page linked to the one before it.
#[test]
fn older_transactions_move_to_linked_pages_and_the_document_stays_small() {
    let credits = (2..=451u64).map(|version| {
        let transaction_id = format!("c{version}");
        let credit = AccountCredited {
            amount: 1,
            transaction_id,
            balance: version as i64 - 1,
            transfer: TransferRef::default(),
        };
        envelope("account", "A", version, &credit)
    });
    let mut events = vec![envelope("account", "A", 1, &AccountOpened { initial_balance: 0 })];
    events.extend(credits);
    // 451 transactions: three pages of 100 moved out (at 200, 300 and 400), 151 kept.
    let transaction = |version: u64| {
        json!({"transaction_id": format!("c{version}"), "kind": "credit", "amount": 1,
               "balance": version - 1, "recorded_at": AT})
    };
    let page = |n: u64, first: u64, earlier: Option<String>| {
        let mut page = json!({"account_id": "A", "page": n,
            "transactions": (first..first + 100).map(|v| if v == 1 {
                json!({"transaction_id": "opening", "kind": "opened", "amount": 0, "balance": 0, "recorded_at": AT})
            } else { transaction(v) }).collect::<Vec<_>>()});
        if let Some(earlier) = earlier {
            page["earlier_page"] = json!(earlier);
        }
        page
    };
    given::<AccountInfoProjection>(events)
        .then_view(
            "A",
            json!({"id": "A", "balance": 450, "earlier_transactions": 300, "earlier_page": "A/transactions/3",
                   "transactions": (301..=451u64).map(transaction).collect::<Vec<_>>()}),
        )
        .then_view("A/transactions/1", page(1, 1, None))
        .then_view("A/transactions/2", page(2, 101, Some("A/transactions/1".into())))
        .then_view("A/transactions/3", page(3, 201, Some("A/transactions/2".into())));
}
