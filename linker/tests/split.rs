//! Every protocol scenario against a split deployment: two `linker connector` and two
//! `linker processor` processes on the real NATS, Kafka, Redis and MongoDB that
//! `scripts/services.sh` runs. Clients of one scenario are spread over both connectors.

use std::path::Path;

use testkit::Split;

async fn split() -> anyhow::Result<Split> {
    Split::start(Path::new(env!("CARGO_BIN_EXE_linker"))).await
}

testkit::scenario_tests!(split();
    two_users_exchange_fast_and_reliable,
    confirmation_arrives_once_with_two_target_sockets,
    no_confirmation_without_reference_or_when_disabled,
    reliable_message_to_offline_user_is_stored_and_fetched_once,
    fast_message_to_offline_user_is_dropped_and_counted,
    group_message_reaches_online_members_and_is_stored_for_offline,
    fetch_returns_oldest_first_in_pages,
    master_gets_user_connected_and_disconnected,
    master_events_wait_for_an_offline_master,
    close_connection_by_master_closes_every_socket_of_the_user,
    close_connection_from_non_master_is_refused,
    close_connection_for_offline_user_is_not_stored,
    auth_failures_reply_false_with_a_reason_then_close,
    frames_before_auth_get_auth_required,
    unauthenticated_socket_is_closed_at_the_deadline,
    every_bad_input_gets_invalid_message_and_the_socket_stays_usable,
    nothing_a_client_sends_changes_from,
    oversized_frame_closes_with_1009,
    repeated_bad_frames_close_with_1008,
    websocket_is_served_at_ws_only,
    a_master_acts_only_on_its_own_apps_users,
);
