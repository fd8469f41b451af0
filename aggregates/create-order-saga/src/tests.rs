//! The orchestrator's state machine as given/when/then. Every scenario runs natively and on
//! `create_order_saga.wasm`.

use super::*;
use SagaCommand::*;
use SagaEvent::*;
use cairn_guest::testing::envelope;
use cairn_testkit::{given, given_no_events, reactions};

fn started(total: i64) -> SagaEvent {
    CreateOrderSagaStarted { order_id: "o1".into(), customer_id: "c1".into(), order_total: total }
}

fn order_created() -> SagaEvent {
    OrderCreationRecorded { order_id: "o1".into(), customer_id: "c1".into(), order_total: 123400 }
}

fn state_is(expected: SagaState) -> impl Fn(&CreateOrderSaga) {
    move |saga| assert_eq!(saga.state, expected)
}

fn refused(command: &str, target: &str, code: &str) -> CommandRejected {
    CommandRejected {
        command_type: command.into(),
        target_type: target.into(),
        target_id: "x".into(),
        code: code.into(),
        message: "refused".into(),
    }
}

#[derive(Serialize)]
struct NoFields {}

#[test]
fn a_started_saga_creates_its_order() {
    given_no_events::<CreateOrderSagaAggregate>()
        .when(StartCreateOrder { order_id: "o1".into(), customer_id: "c1".into(), order_total: 123400 })
        .then_events([started(123400)])
        .then_state(state_is(SagaState::CREATING_ORDER));
    given::<CreateOrderSagaAggregate>([started(1)])
        .when(StartCreateOrder { order_id: "o1".into(), customer_id: "c1".into(), order_total: 1 })
        .then_rejected("saga_already_exists");
    given_no_events::<CreateOrderSagaAggregate>()
        .when(StartCreateOrder { order_id: "o1".into(), customer_id: "c/1".into(), order_total: 1 })
        .then_rejected("invalid_id");
    given_no_events::<CreateOrderSagaAggregate>()
        .when(StartCreateOrder { order_id: "o1".into(), customer_id: "c1".into(), order_total: 0 })
        .then_rejected("invalid_amount");
}

#[test]
fn the_happy_path_ends_approved_one_step_at_a_time() {
    given::<CreateOrderSagaAggregate>([started(123400)])
        .when(RecordOrderCreated)
        .then_events([order_created()])
        .then_state(state_is(SagaState::RESERVING_CREDIT));
    given::<CreateOrderSagaAggregate>([started(123400), order_created()])
        .when(RecordCreditReserved)
        .then_events([CreditReservationRecorded { order_id: "o1".into() }])
        .then_state(state_is(SagaState::APPROVING));
    given::<CreateOrderSagaAggregate>([
        started(123400),
        order_created(),
        CreditReservationRecorded { order_id: "o1".into() },
    ])
    .when(RecordOrderApproved)
    .then_events([CreateOrderSagaApproved { order_id: "o1".into() }])
    .then_state(state_is(SagaState::APPROVED));
}

#[test]
fn refused_credit_rejects_the_order_and_ends_rejected_with_the_reason() {
    let refusal =
        CreditRefusalRecorded { order_id: "o1".into(), rejection_reason: INSUFFICIENT_CREDIT.into() };
    given::<CreateOrderSagaAggregate>([started(123400), order_created()])
        .when(RecordCreditRefused)
        .then_events([refusal.clone()])
        .then_state(state_is(SagaState::REJECTING));
    given::<CreateOrderSagaAggregate>([started(123400), order_created(), refusal])
        .when(RecordOrderRejected)
        .then_events([CreateOrderSagaRejected {
            order_id: "o1".into(),
            rejection_reason: INSUFFICIENT_CREDIT.into(),
        }])
        .then_state(|saga| {
            assert_eq!(saga.state, SagaState::REJECTED);
            assert_eq!(saga.rejection_reason.as_deref(), Some(INSUFFICIENT_CREDIT));
        });
}

#[test]
fn a_step_out_of_turn_changes_nothing() {
    given::<CreateOrderSagaAggregate>([started(1)]).when(RecordOrderApproved).then_no_events();
    given::<CreateOrderSagaAggregate>([started(1), order_created()])
        .when(RecordOrderCreated)
        .then_no_events();
    given_no_events::<CreateOrderSagaAggregate>().when(RecordOrderCreated).then_rejected("saga_not_found");
}

#[test]
fn participants_that_refuse_a_step_end_the_saga() {
    // The order cannot be created (its id is taken): the saga ends.
    given::<CreateOrderSagaAggregate>([started(1)])
        .when_rejected(refused("CreateOrder", "order", "order_already_exists"))
        .then_events([CreateOrderSagaRejected {
            order_id: "o1".into(),
            rejection_reason: "ORDER_ALREADY_EXISTS".into(),
        }]);
    // No such customer: the order is rejected, as the choreography rejects it.
    given::<CreateOrderSagaAggregate>([started(1), order_created()])
        .when_rejected(refused("ReserveCredit", "customer", "customer_not_found"))
        .then_events([CreditRefusalRecorded {
            order_id: "o1".into(),
            rejection_reason: UNKNOWN_CUSTOMER.into(),
        }]);
}

#[test]
fn an_order_that_refuses_its_approval_ends_the_saga_and_releases_the_credit() {
    let reserved = CreditReservationRecorded { order_id: "o1".into() };
    let release = CreditReleaseRequested {
        order_id: "o1".into(),
        customer_id: "c1".into(),
        rejection_reason: "ORDER_NOT_FOUND".into(),
    };
    given::<CreateOrderSagaAggregate>([started(123400), order_created(), reserved])
        .when_rejected(refused("ApproveOrder", "order", "order_not_found"))
        .then_events([release.clone()])
        .then_state(|saga| {
            assert_eq!(saga.state, SagaState::REJECTED);
            assert_eq!(saga.rejection_reason.as_deref(), Some("ORDER_NOT_FOUND"));
        });
    #[derive(Serialize)]
    struct Release<'a> {
        order_id: &'a str,
    }
    assert_eq!(
        reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "o1", 4, &release)),
        vec![OutgoingCommand::new("customer", "c1", "ReleaseCredit", &Release { order_id: "o1" })]
    );
    // The customer takes the release from the saga.
    let customer = cairn_testkit::describe::<customer::CustomerAggregate>();
    assert!(customer.internal("ReleaseCredit").unwrap().allows_source(TYPE));
    // A customer that refuses it leaves the credit reserved, and the saga says so.
    let refused_release = CreditReleaseRefused {
        order_id: "o1".into(),
        customer_id: "c1".into(),
        code: "internal_command".into(),
    };
    let reserved = CreditReservationRecorded { order_id: "o1".into() };
    given::<CreateOrderSagaAggregate>([started(123400), order_created(), reserved, release])
        .when_rejected(refused("ReleaseCredit", "customer", "internal_command"))
        .then_events([refused_release])
        .then_state(|saga| {
            assert_eq!(saga.state, SagaState::REJECTED);
            assert_eq!(saga.release_refused.as_deref(), Some("internal_command"));
        });
}

#[test]
fn an_order_that_refuses_its_rejection_ends_the_saga_with_nothing_to_release() {
    let refusal =
        CreditRefusalRecorded { order_id: "o1".into(), rejection_reason: INSUFFICIENT_CREDIT.into() };
    given::<CreateOrderSagaAggregate>([started(1), order_created(), refusal.clone()])
        .when_rejected(refused("RejectOrder", "order", "order_not_found"))
        .then_events([CreateOrderSagaRejected {
            order_id: "o1".into(),
            rejection_reason: "ORDER_NOT_FOUND".into(),
        }]);
    // The rejection carries the saga's reason to the order.
    #[derive(Serialize)]
    struct RejectOrder<'a> {
        rejection_reason: &'a str,
    }
    assert_eq!(
        reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "o1", 3, &refusal)),
        vec![OutgoingCommand::new(
            "order",
            "o1",
            "RejectOrder",
            &RejectOrder { rejection_reason: INSUFFICIENT_CREDIT }
        )]
    );
}

#[test]
fn a_refusal_out_of_turn_or_an_abandon_after_the_start_changes_nothing() {
    given::<CreateOrderSagaAggregate>([started(1), order_created()])
        .when_rejected(refused("ApproveOrder", "order", "order_not_found"))
        .then_no_events();
    given::<CreateOrderSagaAggregate>([started(1), order_created()])
        .when_rejected(refused("CreateOrder", "order", "order_already_exists"))
        .then_no_events();
    given::<CreateOrderSagaAggregate>([started(1), order_created()])
        .when(AbandonSaga { reason: "LATE".into() })
        .then_no_events();
}

#[test]
fn each_step_sends_the_next_command_and_replies_find_their_saga() {
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "o1", 1, &started(123400)));
    #[derive(Serialize)]
    struct CreateOrder<'a> {
        customer_id: &'a str,
        order_total: i64,
    }
    assert_eq!(
        sent,
        vec![OutgoingCommand::new(
            "order",
            "o1",
            "CreateOrder",
            &CreateOrder { customer_id: "c1", order_total: 123400 }
        )]
    );
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "o1", 2, &order_created()));
    #[derive(Serialize)]
    struct Reserve<'a> {
        order_id: &'a str,
        order_total: i64,
    }
    assert_eq!(
        sent,
        vec![OutgoingCommand::new(
            "customer",
            "c1",
            "ReserveCredit",
            &Reserve { order_id: "o1", order_total: 123400 }
        )]
    );
    let approved = CreditReservationRecorded { order_id: "o1".into() };
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "o1", 3, &approved));
    assert_eq!(sent, vec![OutgoingCommand::new("order", "o1", "ApproveOrder", &NoFields {})]);
    // Replies of the participants go to the saga of their order.
    let reserved = customer::CustomerEvent::CustomerCreditReserved { order_id: "o1".into(), order_total: 1 };
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope("customer", "c1", 2, &reserved));
    assert_eq!(sent, vec![OutgoingCommand::new(TYPE, "o1", "RecordCreditReserved", &NoFields {})]);
    let created = order::OrderEvent::OrderCreated { customer_id: "c1".into(), order_total: 1 };
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope("order", "o1", 1, &created));
    assert_eq!(sent, vec![OutgoingCommand::new(TYPE, "o1", "RecordOrderCreated", &NoFields {})]);
}

#[test]
fn a_start_whose_order_id_is_not_the_saga_id_is_abandoned() {
    let sent = reactions::<CreateOrderSagaAggregate>(&envelope(TYPE, "another", 1, &started(5)));
    #[derive(Serialize)]
    struct Abandon<'a> {
        reason: &'a str,
    }
    assert_eq!(
        sent,
        vec![OutgoingCommand::new(
            TYPE,
            "another",
            "AbandonSaga",
            &Abandon { reason: "ORDER_ID_IS_NOT_THE_SAGA_ID" }
        )]
    );
    given::<CreateOrderSagaAggregate>([started(5)])
        .when(AbandonSaga { reason: "ORDER_ID_IS_NOT_THE_SAGA_ID".into() })
        .then_state(state_is(SagaState::REJECTED));
}

#[test]
fn its_steps_are_internal_and_it_hears_only_replies() {
    let info = cairn_testkit::describe::<CreateOrderSagaAggregate>();
    for step in [
        "RecordOrderCreated",
        "RecordCreditReserved",
        "RecordCreditRefused",
        "RecordOrderApproved",
        "RecordOrderRejected",
        "AbandonSaga",
    ] {
        assert!(info.internal(step).is_some(), "{step} is internal");
    }
    assert!(info.internal("StartCreateOrder").is_none());
    assert!(info.internal("RecordCreditReserved").unwrap().allows_source("customer"));
    assert!(!info.internal("RecordCreditReserved").unwrap().allows_source("order"));
    assert!(
        !info.reacts_to("customer", "CustomerCreditReserved", false),
        "a credit decision it did not ask for"
    );
    assert!(info.reacts_to("customer", "CustomerCreditReserved", true));
    assert!(info.reacts_to(TYPE, "CreateOrderSagaStarted", false));
}
