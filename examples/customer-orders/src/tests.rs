//! The customer-orders view as given/then. Every scenario runs natively and on
//! `customer_orders.wasm`.

use super::CustomerOrdersProjection;
use cairn_guest::EventEnvelope;
use cairn_guest::serde_json::json;
use cairn_guest::testing::envelope;
use cairn_testkit::projection::given;
use customer::CustomerEvent::*;
use order::OrderEvent::*;

fn customer(version: u64, event: customer::CustomerEvent) -> EventEnvelope {
    envelope("customer", "c1", version, &event)
}

fn order(id: &str, version: u64, event: order::OrderEvent) -> EventEnvelope {
    envelope("order", id, version, &event)
}

fn created(total: i64) -> order::OrderEvent {
    OrderCreated { customer_id: "c1".into(), order_total: total }
}

fn fred() -> EventEnvelope {
    customer(1, CustomerCreated { name: "Fred".into(), credit_limit: 200000 })
}

#[test]
fn an_approved_order_takes_credit_and_cancelling_gives_it_back() {
    let approved = [
        fred(),
        order("o1", 1, created(123400)),
        customer(2, CustomerCreditReserved { order_id: "o1".into(), order_total: 123400 }),
        order("o1", 2, OrderApproved),
    ];
    given::<CustomerOrdersProjection>(approved.clone()).then_view(
        "c1",
        json!({"id": "c1", "name": "Fred", "credit_limit": 200000, "available_credit": 76600,
               "orders": {"o1": {"state": "APPROVED", "order_total": 123400}}}),
    );
    let cancelled = approved.into_iter().chain([
        order("o1", 3, OrderCancelled { customer_id: "c1".into(), order_total: 123400 }),
        customer(3, CustomerCreditReleased { order_id: "o1".into(), order_total: 123400 }),
    ]);
    given::<CustomerOrdersProjection>(cancelled).then_view(
        "c1",
        json!({"id": "c1", "name": "Fred", "credit_limit": 200000, "available_credit": 200000,
               "orders": {"o1": {"state": "CANCELLED", "order_total": 123400}}}),
    );
}

#[test]
fn an_order_beyond_the_credit_is_rejected_and_takes_nothing() {
    given::<CustomerOrdersProjection>([
        fred(),
        order("o1", 1, created(123400)),
        customer(2, CustomerCreditReserved { order_id: "o1".into(), order_total: 123400 }),
        order("o1", 2, OrderApproved),
        order("o2", 1, created(100000)),
        customer(3, CustomerCreditReservationFailed { order_id: "o2".into(), order_total: 100000 }),
        order("o2", 2, OrderRejected { rejection_reason: "INSUFFICIENT_CREDIT".into() }),
        order("o3", 1, created(500)),
    ])
    .then_keys(["_order/o1", "_order/o2", "_order/o3", "_recent/c1", "c1"])
    .then_view(
        "c1",
        json!({"id": "c1", "name": "Fred", "credit_limit": 200000, "available_credit": 76600, "orders": {
            "o1": {"state": "APPROVED", "order_total": 123400},
            "o2": {"state": "REJECTED", "order_total": 100000},
            "o3": {"state": "PENDING", "order_total": 500}
        }}),
    );
}

#[test]
fn an_order_for_an_unknown_customer_makes_no_customer_document() {
    given::<CustomerOrdersProjection>([
        envelope("order", "o9", 1, &OrderCreated { customer_id: "nobody".into(), order_total: 10 }),
        order("o9", 2, OrderRejected { rejection_reason: "UNKNOWN_CUSTOMER".into() }),
    ])
    .then_keys(["_order/o9"])
    .then_no_view("nobody");
}

/// However many orders a customer has, its document holds the recent ones and links the
/// pages of the older ones; an order that moved to a page still changes state there.
#[test]
fn older_orders_move_to_linked_pages_and_still_change_state_there() {
    let mut events = vec![fred()];
    for n in 1..=250 {
        events.push(order(&format!("o{n:03}"), 1, created(n)));
    }
    // o005 moved to the first page (at the 200th order); it is approved afterwards.
    events.push(order("o005", 2, OrderApproved));
    events.push(order("o240", 2, OrderRejected { rejection_reason: "INSUFFICIENT_CREDIT".into() }));
    let pending =
        |from: i64, to: i64| -> cairn_guest::serde_json::Map<String, cairn_guest::serde_json::Value> {
            (from..=to).map(|n| (format!("o{n:03}"), json!({"state": "PENDING", "order_total": n}))).collect()
        };
    let mut first_page = pending(1, 100);
    first_page["o005"] = json!({"state": "APPROVED", "order_total": 5});
    let mut recent = pending(101, 250);
    recent["o240"] = json!({"state": "REJECTED", "order_total": 240});
    given::<CustomerOrdersProjection>(events)
        .then_view(
            "c1",
            json!({"id": "c1", "name": "Fred", "credit_limit": 200000, "available_credit": 200000,
                   "orders": recent, "earlier_orders": 100, "earlier_page": "c1/orders/1"}),
        )
        .then_view("c1/orders/1", json!({"customer_id": "c1", "page": 1, "orders": first_page}));
}
