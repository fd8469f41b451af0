//! The customer-orders view as given/then. Every scenario runs natively and on
//! `customer_orders.wasm`.

use super::CustomerOrdersProjection;
use cairn::testkit::projection::given;
use cairn_guest::EventEnvelope;
use cairn_guest::serde_json::json;
use cairn_guest::testing::envelope;
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
    .then_keys(["_order/o1", "_order/o2", "_order/o3", "c1"])
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
