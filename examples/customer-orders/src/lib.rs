//! The `customer-orders` projection: per customer, the credit limit, the credit still
//! available, and every order with its state and total. It is the read side of the
//! order/credit saga and joins the events of two aggregate types:
//! `GET /views/customer-orders/{customer_id}`.
//!
//! Only `OrderCreated` (and `OrderCancelled`) name the customer; `OrderApproved` and
//! `OrderRejected` name only the order. So the projection keeps an index document per
//! order, `_order/{order_id}` → its customer and where its summary is (keys starting with
//! `_` are never served).
//!
//! A customer's document stays small however many orders it has: it holds the most recent
//! ones (at most [`RECENT_MAX`]); older ones move, [`PAGE`] at a time, to pages under their
//! own keys, `{customer_id}/orders/{n}`, each linked to the one before it (`earlier_page`),
//! the newest linked from the customer's document. An order in a page still has its state
//! changed there. The order in which orders came is kept in `_recent/{customer_id}`.

use cairn_guest::{EventEnvelope, Projection, Subscription, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomerOrders {
    pub id: String,
    pub name: String,
    pub credit_limit: i64,
    pub available_credit: i64,
    /// The most recent orders.
    pub orders: BTreeMap<String, OrderSummary>,
    /// How many older orders are in pages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier_orders: u64,
    /// The key of the newest page of older orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_page: Option<String>,
}

/// A page of a customer's older orders: `{customer_id}/orders/{page}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrderPage {
    pub customer_id: String,
    /// Pages count from 1, oldest first.
    pub page: u64,
    pub orders: BTreeMap<String, OrderSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_page: Option<String>,
}

/// Orders a customer's document holds at most; at this many, the oldest [`PAGE`] of them
/// move to a page of their own.
pub const RECENT_MAX: usize = 200;
/// Orders a page holds.
pub const PAGE: usize = 100;

/// The key of page `page` of a customer's older orders.
pub fn page_key(customer_id: &str, page: u64) -> String {
    format!("{customer_id}/orders/{page}")
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// `PENDING`, `APPROVED`, `REJECTED` or `CANCELLED`.
    pub state: String,
    pub order_total: i64,
}

/// The index document of one order: its customer, and the page its summary moved to
/// (none: the customer's own document).
#[derive(Serialize, Deserialize)]
struct OrderOwner {
    customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<u64>,
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

/// The bookkeeping document with a customer's recent order ids, oldest first.
fn recent_key(customer_id: &str) -> String {
    format!("_recent/{customer_id}")
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
                    &OrderOwner { customer_id: facts.customer_id.clone(), page: None },
                );
                // An order for a customer who does not exist is rejected by the saga; it makes
                // no document for that customer.
                let Some(mut customer) = view.get::<CustomerOrders>(&facts.customer_id) else { return };
                let summary = OrderSummary { state: "PENDING".to_owned(), order_total: facts.order_total };
                if customer.orders.insert(event.stream_id.clone(), summary).is_none() {
                    let mut recent: Vec<String> =
                        view.get(&recent_key(&facts.customer_id)).unwrap_or_default();
                    recent.push(event.stream_id.clone());
                    if customer.orders.len() >= RECENT_MAX {
                        move_oldest_to_a_page(view, &mut customer, &mut recent);
                    }
                    view.put(&recent_key(&facts.customer_id), &recent);
                }
                view.put(&facts.customer_id, &customer);
            }
            ("order", "OrderCancelled") => {
                let facts: OrderFacts = decode(event);
                set_order_state(view, &event.stream_id, "CANCELLED", Some(facts.order_total));
            }
            ("order", event_type @ ("OrderApproved" | "OrderRejected")) => {
                let state = if event_type == "OrderApproved" { "APPROVED" } else { "REJECTED" };
                set_order_state(view, &event.stream_id, state, None);
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

/// Change the state of an order the view knows, wherever its summary is now.
fn set_order_state(view: &mut View<'_>, order_id: &str, state: &str, total: Option<i64>) {
    let Some(owner) = view.get::<OrderOwner>(&index_key(order_id)) else { return };
    let change = |orders: &mut BTreeMap<String, OrderSummary>| {
        if let Some(order) = orders.get_mut(order_id) {
            order.state = state.to_owned();
            if let Some(total) = total {
                order.order_total = total;
            }
        }
    };
    match owner.page {
        None => update_existing(view, &owner.customer_id, |customer| change(&mut customer.orders)),
        Some(page) => {
            let key = page_key(&owner.customer_id, page);
            if let Some(mut summaries) = view.get::<OrderPage>(&key) {
                change(&mut summaries.orders);
                view.put(&key, &summaries);
            }
        }
    }
}

/// Move a customer's oldest [`PAGE`] recent orders to a new page, linked from the document.
fn move_oldest_to_a_page(view: &mut View<'_>, customer: &mut CustomerOrders, recent: &mut Vec<String>) {
    let page = customer.earlier_orders / PAGE as u64 + 1;
    let mut moved = OrderPage {
        customer_id: customer.id.clone(),
        page,
        orders: BTreeMap::new(),
        earlier_page: customer.earlier_page.take(),
    };
    for order_id in recent.drain(..PAGE.min(recent.len())) {
        if let Some(summary) = customer.orders.remove(&order_id) {
            moved.orders.insert(order_id.clone(), summary);
            view.put(
                &index_key(&order_id),
                &OrderOwner { customer_id: customer.id.clone(), page: Some(page) },
            );
        }
    }
    customer.earlier_orders += moved.orders.len() as u64;
    let key = page_key(&customer.id, page);
    view.put(&key, &moved);
    customer.earlier_page = Some(key);
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
