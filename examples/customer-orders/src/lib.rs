//! The `customer-orders` projection: per customer, the credit limit, the credit still
//! available, and every order with its state and total. It is the read side of the
//! order/credit saga and joins the events of two aggregate types:
//! `GET /views/customer-orders/{customer_id}`.
//!
//! Only `OrderCreated` (and `OrderCancelled`) name the customer; `OrderApproved` and
//! `OrderRejected` name only the order. So the projection keeps an index document per
//! order, `_order/{order_id}` → its customer (keys starting with `_` are never served).

use cairn_guest::{EventEnvelope, Projection, Subscription, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomerOrders {
    pub id: String,
    pub name: String,
    pub credit_limit: i64,
    pub available_credit: i64,
    pub orders: BTreeMap<String, OrderSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// `PENDING`, `APPROVED`, `REJECTED` or `CANCELLED`.
    pub state: String,
    pub order_total: i64,
}

/// The index document of one order: which customer's document holds it.
#[derive(Serialize, Deserialize)]
struct OrderOwner {
    customer_id: String,
}

#[derive(Deserialize)]
struct CustomerCreated {
    name: String,
    credit_limit: i64,
}

/// The fields of the customer's credit events.
#[derive(Deserialize)]
struct Credit {
    order_total: i64,
}

/// The fields of `OrderCreated` and `OrderCancelled`.
#[derive(Deserialize)]
struct OrderFacts {
    customer_id: String,
    order_total: i64,
}

pub struct CustomerOrdersProjection;

fn index_key(order_id: &str) -> String {
    format!("_order/{order_id}")
}

impl Projection for CustomerOrdersProjection {
    const NAME: &'static str = "customer-orders";

    fn subscriptions() -> Vec<Subscription> {
        vec![
            Subscription::to(
                "customer",
                ["CustomerCreated", "CustomerCreditReserved", "CustomerCreditReleased"],
            ),
            Subscription::to("order", ["OrderCreated", "OrderApproved", "OrderRejected", "OrderCancelled"]),
        ]
    }

    fn handle(event: &EventEnvelope, view: &mut View<'_>) {
        match (event.stream_type.as_str(), event.event_type.as_str()) {
            ("customer", "CustomerCreated") => {
                let created: CustomerCreated = decode(event);
                view.update(&event.stream_id, |customer: &mut CustomerOrders| {
                    customer.id = event.stream_id.clone();
                    customer.name = created.name;
                    customer.credit_limit = created.credit_limit;
                    customer.available_credit = created.credit_limit;
                });
            }
            ("customer", "CustomerCreditReserved") => {
                let credit: Credit = decode(event);
                update_existing(view, &event.stream_id, |c| c.available_credit -= credit.order_total);
            }
            ("customer", "CustomerCreditReleased") => {
                let credit: Credit = decode(event);
                update_existing(view, &event.stream_id, |c| c.available_credit += credit.order_total);
            }
            ("order", "OrderCreated") => {
                let facts: OrderFacts = decode(event);
                view.put(
                    &index_key(&event.stream_id),
                    &OrderOwner { customer_id: facts.customer_id.clone() },
                );
                // An order for a customer who does not exist is rejected by the saga; it makes
                // no document for that customer.
                set_order_state(
                    view,
                    &facts.customer_id,
                    &event.stream_id,
                    "PENDING",
                    Some(facts.order_total),
                );
            }
            ("order", "OrderCancelled") => {
                let facts: OrderFacts = decode(event);
                set_order_state(
                    view,
                    &facts.customer_id,
                    &event.stream_id,
                    "CANCELLED",
                    Some(facts.order_total),
                );
            }
            ("order", event_type @ ("OrderApproved" | "OrderRejected")) => {
                let Some(owner) = view.get::<OrderOwner>(&index_key(&event.stream_id)) else { return };
                let state = if event_type == "OrderApproved" { "APPROVED" } else { "REJECTED" };
                set_order_state(view, &owner.customer_id, &event.stream_id, state, None);
            }
            _ => {}
        }
    }
}

/// Change a customer's document if the customer exists.
fn update_existing(view: &mut View<'_>, customer_id: &str, change: impl FnOnce(&mut CustomerOrders)) {
    if let Some(mut customer) = view.get::<CustomerOrders>(customer_id) {
        change(&mut customer);
        view.put(customer_id, &customer);
    }
}

fn set_order_state(view: &mut View<'_>, customer_id: &str, order_id: &str, state: &str, total: Option<i64>) {
    update_existing(view, customer_id, |customer| {
        let order = customer
            .orders
            .entry(order_id.to_owned())
            .or_insert(OrderSummary { state: String::new(), order_total: 0 });
        order.state = state.to_owned();
        if let Some(total) = total {
            order.order_total = total;
        }
    });
}

fn decode<T: serde::de::DeserializeOwned>(event: &EventEnvelope) -> T {
    // The aggregates wrote these fields; if they do not decode, the events changed shape
    // and this projection must change with them: stop here rather than show a wrong view.
    event.data().unwrap_or_else(|e| {
        panic!("{} at position {} does not decode: {e}", event.event_type, event.position)
    })
}

cairn_guest::export_projection!(CustomerOrdersProjection);

#[cfg(test)]
mod tests;
