//! Builds the bundled example components (see `guest_build.rs`): the aggregates and
//! projections a new data directory starts with, and the example versions tests deploy.

#[path = "guest_build.rs"]
mod guest_build;

use guest_build::Guest;

const GUESTS: &[Guest] = &[
    ("account", "ACCOUNT", "aggregates/account"),
    ("money-transfer", "MONEY_TRANSFER", "aggregates/money-transfer"),
    ("order", "ORDER", "aggregates/order"),
    ("customer", "CUSTOMER", "aggregates/customer"),
    ("account-info", "ACCOUNT_INFO", "examples/account-info"),
    ("customer-orders", "CUSTOMER_ORDERS", "examples/customer-orders"),
];
/// Example versions built on an aggregate crate used as a library (its `library` feature
/// leaves that crate's exports out).
const LIBRARY_USERS: &[Guest] = &[
    ("account-v2", "ACCOUNT_V2", "examples/account-v2"),
    ("account-v3", "ACCOUNT_V3", "examples/account-v3"),
    ("money-transfer-v2", "MONEY_TRANSFER_V2", "examples/money-transfer-v2"),
    ("account-info-v2", "ACCOUNT_INFO_V2", "examples/account-info-v2"),
    ("create-order-saga", "CREATE_ORDER_SAGA", "aggregates/create-order-saga"),
];
/// The components a new data directory starts with.
const BUNDLED: &[&str] = &[
    "account",
    "money-transfer",
    "order",
    "customer",
    "create-order-saga",
    "account-info",
    "customer-orders",
];

fn main() {
    guest_build::build(GUESTS, LIBRARY_USERS, BUNDLED, &[]);
}
