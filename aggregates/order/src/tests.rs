//! Order rules as given/when/then. Every scenario runs natively and on `order.wasm`.

use super::*;
use OrderCommand::*;
use OrderEvent::*;
use cairn_guest::testing::envelope;
use cairn_testkit::{given, given_no_events, reactions};

fn created(total: i64) -> OrderEvent {
    OrderCreated { customer_id: "c1".into(), order_total: total }
}

fn state_is(expected: OrderState) -> impl Fn(&Order) {
    move |o| assert_eq!(o.state, expected)
}

fn customer_rejected(code: &str) -> CommandRejected {
    CommandRejected {
        command_type: "ReserveCredit".into(),
        target_type: "customer".into(),
        target_id: "c1".into(),
        code: code.into(),
        message: "refused".into(),
    }
}

#[test]
fn create_order_is_pending() {
    given_no_events::<OrderAggregate>()
        .when(CreateOrder { customer_id: "c1".into(), order_total: 123400 })
        .then_events([created(123400)])
        .then_state(state_is(OrderState::PENDING));
}

#[test]
fn create_twice_is_rejected() {
    given::<OrderAggregate>([created(1)])
        .when(CreateOrder { customer_id: "c1".into(), order_total: 1 })
        .then_rejected("order_already_exists");
}

#[test]
fn a_non_positive_total_or_empty_customer_is_rejected() {
    given_no_events::<OrderAggregate>()
        .when(CreateOrder { customer_id: "c1".into(), order_total: 0 })
        .then_rejected("invalid_amount");
    given_no_events::<OrderAggregate>()
        .when(CreateOrder { customer_id: " ".into(), order_total: 10 })
        .then_rejected("invalid_command");
}

#[test]
fn a_customer_id_that_can_never_name_a_customer_is_refused_at_creation() {
    for customer_id in ["c/1".to_owned(), "c".repeat(300)] {
        given_no_events::<OrderAggregate>()
            .when(CreateOrder { customer_id, order_total: 10 })
            .then_rejected("invalid_customer_id");
    }
}

#[test]
fn approved_when_credit_is_reserved() {
    given::<OrderAggregate>([created(123400)])
        .when(ApproveOrder)
        .then_events([OrderApproved])
        .then_state(state_is(OrderState::APPROVED));
}

#[test]
fn rejected_for_insufficient_credit() {
    given::<OrderAggregate>([created(176600)])
        .when(RejectOrder { rejection_reason: INSUFFICIENT_CREDIT.into() })
        .then_events([OrderRejected { rejection_reason: INSUFFICIENT_CREDIT.into() }])
        .then_state(|o| assert_eq!(o.rejection_reason.as_deref(), Some(INSUFFICIENT_CREDIT)));
}

#[test]
fn rejected_as_unknown_customer_when_the_customer_refuses_the_reservation() {
    given::<OrderAggregate>([created(5)])
        .when_rejected(customer_rejected("customer_not_found"))
        .then_events([OrderRejected { rejection_reason: UNKNOWN_CUSTOMER.into() }])
        .then_state(state_is(OrderState::REJECTED));
}

#[test]
fn rejected_as_unknown_customer_when_the_customer_can_never_exist() {
    for code in ["invalid_target", "unknown_type"] {
        given::<OrderAggregate>([created(5)])
            .when_rejected(customer_rejected(code))
            .then_events([OrderRejected { rejection_reason: UNKNOWN_CUSTOMER.into() }]);
    }
}

#[test]
fn cancel_an_approved_order() {
    given::<OrderAggregate>([created(123400), OrderApproved])
        .when(CancelOrder)
        .then_events([OrderCancelled { customer_id: "c1".into(), order_total: 123400 }])
        .then_state(state_is(OrderState::CANCELLED));
}

#[test]
fn cancelling_a_pending_rejected_or_cancelled_order_is_refused() {
    given::<OrderAggregate>([created(1)]).when(CancelOrder).then_rejected("order_not_cancellable");
    given::<OrderAggregate>([created(1), OrderRejected { rejection_reason: INSUFFICIENT_CREDIT.into() }])
        .when(CancelOrder)
        .then_rejected("order_not_cancellable");
    given::<OrderAggregate>([
        created(1),
        OrderApproved,
        OrderCancelled { customer_id: "c1".into(), order_total: 1 },
    ])
    .when(CancelOrder)
    .then_rejected("order_not_cancellable");
}

#[test]
fn commands_to_a_missing_order_are_rejected() {
    given_no_events::<OrderAggregate>().when(CancelOrder).then_rejected("order_not_found");
    given_no_events::<OrderAggregate>().when(ApproveOrder).then_rejected("order_not_found");
}

#[test]
fn late_decisions_change_nothing() {
    given::<OrderAggregate>([created(1), OrderApproved]).when(ApproveOrder).then_no_events();
    given::<OrderAggregate>([created(1), OrderApproved])
        .when(RejectOrder { rejection_reason: INSUFFICIENT_CREDIT.into() })
        .then_no_events();
    given::<OrderAggregate>([created(1), OrderApproved])
        .when_rejected(customer_rejected("customer_not_found"))
        .then_no_events();
}

/// Another aggregate's events, mirrored by field name (event names are domain words).
#[derive(serde::Serialize)]
#[allow(clippy::enum_variant_names)]
enum CustomerEvent {
    CustomerCreditReserved { order_id: String, order_total: i64 },
    CustomerCreditReservationFailed { order_id: String, order_total: i64 },
}

#[test]
fn the_credit_decision_approves_or_rejects_the_order() {
    let ok = CustomerEvent::CustomerCreditReserved { order_id: "o1".into(), order_total: 1 };
    let sent = reactions::<OrderAggregate>(&envelope("customer", "c1", 2, &ok));
    #[derive(serde::Serialize)]
    struct NoFields {}
    assert_eq!(sent, vec![OutgoingCommand::new("order", "o1", "ApproveOrder", &NoFields {})]);
    let refused = CustomerEvent::CustomerCreditReservationFailed { order_id: "o2".into(), order_total: 1 };
    let sent = reactions::<OrderAggregate>(&envelope("customer", "c1", 3, &refused));
    #[derive(serde::Serialize)]
    struct Reject {
        rejection_reason: &'static str,
    }
    assert_eq!(
        sent,
        vec![OutgoingCommand::new(
            "order",
            "o2",
            "RejectOrder",
            &Reject { rejection_reason: INSUFFICIENT_CREDIT }
        )]
    );
}
