//! The end-to-end scenarios that run a second time with the host's store on PostgreSQL
//! (a server the run starts itself, `tests/support/postgres.rs`): sagas, views, idempotency,
//! kill -9 storms, the crash checker, dead letters, deploys and temporal reads. The rest run
//! on the embedded store only, to keep the CI run short; what they check does not depend
//! on the store, or the store TCK checks it on both.

macro_rules! on_postgres {
    ($($module:ident::$test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                crate::harness::on_postgres(crate::$module::$test)
            }
        )*
    };
}

on_postgres!(
    sagas::money_transfer_completes_and_moves_the_money,
    sagas::a_transfer_to_a_missing_or_closed_account_is_compensated,
    sagas::orders_reserve_credit_and_cancelling_releases_it,
    sagas::three_hundred_concurrent_random_transfers_conserve_money,
    sagas::a_kill_9_in_the_middle_of_the_storm_loses_nothing_and_doubles_nothing_in_the_log_or_the_views,
    sagas::a_forced_redelivery_has_no_second_effect,
    views::account_info_shows_the_transfer_on_both_sides_and_reads_its_own_writes,
    views::customer_orders_follow_the_order_saga_across_two_aggregate_types,
    views::a_rebuild_gives_the_same_documents_and_readers_keep_the_old_generation_until_it_switches,
    commands::an_idempotent_retry_returns_the_first_answer_and_stores_once,
    commands::idempotency_keys_survive_a_restart,
    commands::idempotency_keys_are_forgotten_after_the_retention_window,
    commands::four_hundred_concurrent_credits_to_one_account_are_all_kept,
    commands::if_match_appends_only_at_that_version,
    durability::kill_9_under_load_loses_no_acknowledged_command,
    durability::snapshots_and_passivation_rebuild_the_same_state,
    durability::a_failed_commit_costs_its_commands_an_error_stores_nothing_and_readyz_tells,
    crash::sigkill_at_random_moments_loses_nothing_acknowledged,
    delivery::a_trapping_reaction_parks_its_stream_in_order_while_a_thousand_transfers_complete,
    orchestration::the_orchestrator_runs_the_seeds_figures_to_their_ends,
    deploys::a_changed_rule_is_reported_followed_and_rolled_back_and_versions_survive_kill_9,
    deploys::a_subscriber_deployed_later_reacts_to_new_events_unless_asked_for_history,
    reads::temporal_reads_across_snapshots_answer_the_state_at_that_version,
    reads::the_global_log_is_in_position_order_across_streams,
);
