//! account-info, version 2: the same view, reading the Account's events in both shapes:
//! version 1's (amounts in cents, a transfer's fields beside the others) and account-v3's
//! (amounts as `{"cents", "currency"}`, the transfer nested). Deploy it before account-v3
//! (see the README's "Changing an event's shape"): the first version cannot decode the new
//! shape, so the deploy of account-v3 is refused while it runs.
//!
//! The view keeps its shape: an event in the new shape is read as the first version's code
//! reads it, then handled by that code.

use account_info::AccountInfoProjection;
use cairn_guest::serde_json::{Map, Value};
use cairn_guest::{EventEnvelope, Projection, Subscription, View, codec};

/// The fields that hold an amount of money.
const AMOUNTS: [&str; 3] = ["amount", "balance", "initial_balance"];

/// `data` in the first version's shape: each amount as its cents, the transfer's fields
/// beside the others. Data already in that shape stays as it is.
fn first_shape(mut data: Map<String, Value>) -> Map<String, Value> {
    for field in AMOUNTS {
        if let Some(cents) = data.get(field).and_then(|money| money.get("cents")).cloned() {
            data.insert(field.to_owned(), cents);
        }
    }
    if let Some(Value::Object(transfer)) = data.remove("transfer") {
        data.extend(transfer);
    }
    data
}

pub struct AccountInfoV2;

impl Projection for AccountInfoV2 {
    const NAME: &'static str = AccountInfoProjection::NAME;

    fn subscriptions() -> Vec<Subscription> {
        AccountInfoProjection::subscriptions()
    }

    fn handle(event: &EventEnvelope, view: &mut View<'_>) {
        match event.data::<Map<String, Value>>() {
            Ok(data) => {
                let mut first = event.clone();
                first.payload = codec::encode(&first_shape(data));
                AccountInfoProjection::handle(&first, view);
            }
            // Not a map of fields: the first version says why it cannot read it.
            Err(_) => AccountInfoProjection::handle(event, view),
        }
    }
}

cairn_guest::export_projection!(AccountInfoV2);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::serde_json::json;

    #[test]
    fn the_new_shape_reads_as_the_first() {
        let new = json!({
            "amount": {"cents": 5, "currency": "EUR"}, "transaction_id": "t1",
            "balance": {"cents": 9, "currency": "EUR"},
            "transfer": {"transfer_id": "t1", "counterparty_account_id": "b"}
        });
        let first = json!({"amount": 5, "transaction_id": "t1", "balance": 9,
                           "transfer_id": "t1", "counterparty_account_id": "b"});
        let Value::Object(new) = new else { unreachable!() };
        let Value::Object(first_data) = first.clone() else { unreachable!() };
        assert_eq!(Value::Object(first_shape(new)), first);
        assert_eq!(Value::Object(first_shape(first_data)), first, "the first shape stays as it is");
    }
}
