//! The protocol scenarios, written once and run against every deployment.
//!
//! Each is `async fn(&dyn Deployment) -> anyhow::Result<()>` and uses only what a client sees:
//! frames on real sockets, and `/metrics` where the deployment has it. Users get unique ids,
//! and clients of one user are spread over connectors where there are several.
//! [`scenario_tests!`](crate::scenario_tests) turns a list of them into `#[tokio::test]`s.

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::client::{Client, Ended};
use crate::deployment::Deployment;
use crate::{http_get, metric, unique_user};

/// The master user of app ANZ in every test network.
pub const MASTER: &str = "ANZ-123223";

/// Generates one `#[tokio::test]` per scenario, each on a fresh deployment from `$start`.
#[macro_export]
macro_rules! scenario_tests {
    ($start:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let d = $start.await.expect("the deployment starts");
                if let Err(e) = $crate::scenarios::$name(&d).await {
                    panic!("{e:#}\n{}", $crate::Deployment::diagnostics(&d));
                }
            }
        )*
    };
}

/// Every protocol scenario as `#[tokio::test]`s on the deployments `$start` makes: the one
/// list each deployment's test file uses, so a new scenario runs everywhere.
#[macro_export]
macro_rules! every_scenario {
    ($start:expr) => {
        $crate::scenario_tests!($start;
    two_users_exchange_fast_and_reliable,
    each_senders_fast_messages_arrive_in_order,
    a_client_close_is_answered_with_a_close_frame,
    confirmation_arrives_once_with_two_target_sockets,
    no_confirmation_without_reference_or_when_disabled,
    reliable_message_to_offline_user_is_stored_and_fetched_once,
    fast_message_to_offline_user_is_dropped_and_counted,
    group_message_reaches_online_members_and_is_stored_for_offline,
    fast_group_message_reaches_online_members_and_counts_the_offline_one,
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
    acking_client_gets_unacknowledged_messages_again_on_another_connector_in_order,
    an_acknowledged_message_is_never_sent_again,
    a_retried_reference_is_accepted_again_but_delivered_once,
    ack_needs_an_acking_socket,
    an_acking_fetch_keeps_messages_until_acknowledged,
    what_was_kept_comes_before_anything_new_on_an_acking_login,
    channel_members_on_two_connectors_get_every_post,
    leaving_or_closing_ends_channel_membership,
    channels_of_another_app_and_bad_names_are_refused,
    managed_channels_admit_only_the_users_the_master_added,
    only_the_apps_master_chooses_managed_members,
    a_removed_member_no_longer_receives_nor_posts,
    a_plain_text_client_joins_and_posts_by_url,
    a_subscription_without_echo_does_not_get_its_own_posts,
    channel_history_is_replayed_then_live_posts_follow_without_gap_or_duplicate,
        );
    };
}

fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn fetch(c: &mut Client, count: i64) -> anyhow::Result<(Vec<Value>, u64)> {
    c.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":count}}))
        .await?;
    let mut got = Vec::new();
    loop {
        let f = c.next().await?;
        if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
            let left = f["data"]["leftMissingCount"]
                .as_u64()
                .context("leftMissingCount is a number")?;
            return Ok((got, left));
        }
        got.push(f);
    }
}

async fn fast_dropped(d: &dyn Deployment) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for addr in d.metrics_addrs() {
        let (status, body) = http_get(&addr, "/metrics").await?;
        ensure!(status == 200, "/metrics on {addr} answered {status}");
        total += metric(&body, "linker_fast_dropped_total", &["reason=\"offline\""]);
    }
    Ok(total)
}

/// A client that closes with 1000 gets the server's close frame back (the closing handshake
/// of RFC 6455), so a browser reports a clean close, not 1006.
pub async fn a_client_close_is_answered_with_a_close_frame(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let c = Client::login(&d.ws_url(0), &unique_user()).await?;
    let frame = c.close_cleanly().await?;
    ensure!(u16::from(frame.code) == 1000, "closed with {frame:?}");
    Ok(())
}

/// Several senders each send FAST messages to a receiver of their own (on another connector
/// where there are several), at a modest pace: every receiver gets its sender's messages in
/// the order sent and, the system being quiet, all of them.
pub async fn each_senders_fast_messages_arrive_in_order(d: &dyn Deployment) -> anyhow::Result<()> {
    fast_messages_keep_each_senders_order(d, 6, 100).await
}

/// `pairs` senders send `each` FAST messages to a receiver each; fails on a message out of
/// order or missing, printing the counts.
pub async fn fast_messages_keep_each_senders_order(
    d: &dyn Deployment,
    pairs: usize,
    each: usize,
) -> anyhow::Result<()> {
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..pairs {
        let (from, to) = (unique_user(), unique_user());
        let sender = Client::login(&d.ws_url(i), &from).await?;
        let mut receiver = Client::login(&d.ws_url(i + 1), &to).await?;
        let sent_by = json!(from);
        receivers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < each {
                // Nothing more within the client's wait: the rest was lost.
                let Ok(f) = receiver.next().await else { break };
                if f["type"] == "MESSAGE" && f["data"]["from"] == sent_by {
                    got.push(f["data"]["content"].as_str().unwrap_or_default().to_owned());
                }
            }
            got
        }));
        senders.push((sender, to));
    }
    let sending = senders.into_iter().map(|(mut c, to)| {
        tokio::spawn(async move {
            for n in 0..each {
                c.message(&to, &format!("f{n:05}"), "FAST", None).await?;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            anyhow::Ok(c)
        })
    });
    let mut clients = Vec::new();
    for s in sending.collect::<Vec<_>>() {
        clients.push(s.await??);
    }
    let mut problems = Vec::new();
    for (i, r) in receivers.into_iter().enumerate() {
        let got = r.await?;
        let in_order = got.windows(2).all(|w| w[0] < w[1]);
        println!(
            "fast order: pair {i}: sent {each}, received {}, in order {in_order}",
            got.len()
        );
        if !in_order {
            problems.push(format!("pair {i} out of order: {got:?}"));
        }
        if got.len() != each {
            problems.push(format!("pair {i} received {} of {each}", got.len()));
        }
    }
    drop(clients);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

pub async fn two_users_exchange_fast_and_reliable(d: &dyn Deployment) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    a.message(&b_id, "hello", "RELIABLE", None).await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(
        m == json!({"type":"MESSAGE","data":{"from":a_id,"content":"hello"}}),
        "{m}"
    );
    b.message(&a_id, "fast hi", "FAST", Some("r1")).await?;
    let m = a.expect("MESSAGE").await?;
    ensure!(
        m == json!({"type":"MESSAGE","data":{"from":b_id,"content":"fast hi"},"reference":"r1"}),
        "{m}"
    );
    let c = b.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(
        c == json!({"type":"MESSAGE_CONFIRMATION","data":{"reference":"r1"}}),
        "{c}"
    );
    // Structured content passes through unchanged.
    let content = json!({"text":"hi","n":[1,2,3]});
    a.send(&json!({"type":"MESSAGE","data":{"to":b_id,"content":content}}))
        .await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(m["data"]["content"] == content, "{m}");
    Ok(())
}

pub async fn confirmation_arrives_once_with_two_target_sockets(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b1 = Client::login(&d.ws_url(0), &b_id).await?;
    let mut b2 = Client::login(&d.ws_url(1), &b_id).await?;
    a.message(&b_id, "to both", "RELIABLE", Some("ref-1"))
        .await?;
    for b in [&mut b1, &mut b2] {
        let m = b.expect("MESSAGE").await?;
        ensure!(
            m["reference"] == "ref-1" && m["data"]["content"] == "to both",
            "{m}"
        );
    }
    let c = a.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(c["data"]["reference"] == "ref-1", "{c}");
    let later = a.sync().await?;
    ensure!(
        !types(&later).contains(&"MESSAGE_CONFIRMATION".to_owned()),
        "a second confirmation arrived: {later:?}"
    );
    Ok(())
}

pub async fn no_confirmation_without_reference_or_when_disabled(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    a.message(&b_id, "no ref", "RELIABLE", None).await?;
    b.expect("MESSAGE").await?;
    a.send(
        &json!({"type":"MESSAGE","reference":"r2","confirmationEnabled":false,
        "data":{"to":b_id,"content":"disabled"}}),
    )
    .await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(m["reference"] == "r2", "{m}");
    let later = a.sync().await?;
    ensure!(later.is_empty(), "unexpected frames: {later:?}");
    Ok(())
}

pub async fn reliable_message_to_offline_user_is_stored_and_fetched_once(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    a.message(&b_id, "while you were away", "RELIABLE", Some("ref-off"))
        .await?;
    let early = a.sync().await?;
    ensure!(
        early.is_empty(),
        "nothing is confirmed before delivery: {early:?}"
    );
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    let (got, left) = fetch(&mut b, 10).await?;
    ensure!(left == 0, "left {left}");
    ensure!(
        got == vec![
            json!({"type":"MESSAGE","data":{"from":a_id,"content":"while you were away"},"reference":"ref-off"})
        ],
        "{got:?}"
    );
    // Delivered now, so the sender gets its confirmation.
    let c = a.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(c["data"]["reference"] == "ref-off", "{c}");
    let (again, left) = fetch(&mut b, 10).await?;
    ensure!(again.is_empty() && left == 0, "fetched twice: {again:?}");
    Ok(())
}

pub async fn fast_message_to_offline_user_is_dropped_and_counted(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let before = fast_dropped(d).await?;
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    a.message(&b_id, "gone", "FAST", None).await?;
    a.sync().await?;
    if !d.metrics_addrs().is_empty() {
        let after = fast_dropped(d).await?;
        ensure!(after == before + 1.0, "dropped count {before} -> {after}");
    }
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    let (got, left) = fetch(&mut b, 10).await?;
    ensure!(
        got.is_empty() && left == 0,
        "a FAST message was stored: {got:?}"
    );
    Ok(())
}

pub async fn group_message_reaches_online_members_and_is_stored_for_offline(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id, c_id, off_id) = (unique_user(), unique_user(), unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(0), &b_id).await?;
    let mut c = Client::login(&d.ws_url(1), &c_id).await?;
    a.send(&json!({"type":"GROUP_MESSAGE","reference":"g1",
        "data":{"to":[b_id, c_id, off_id, b_id],"content":"to the group"}}))
        .await?;
    let expected =
        json!({"type":"MESSAGE","data":{"from":a_id,"content":"to the group"},"reference":"g1"});
    for member in [&mut b, &mut c] {
        let m = member.expect("MESSAGE").await?;
        ensure!(m == expected, "{m}");
        let extra = member.sync().await?;
        ensure!(extra.is_empty(), "listed twice, received twice: {extra:?}");
    }
    let later = a.sync().await?;
    ensure!(
        later.is_empty(),
        "group messages are not confirmed: {later:?}"
    );
    let mut off = Client::login(&d.ws_url(1), &off_id).await?;
    let (got, left) = fetch(&mut off, 10).await?;
    ensure!(got == vec![expected] && left == 0, "{got:?}");
    Ok(())
}

pub async fn fast_group_message_reaches_online_members_and_counts_the_offline_one(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id, c_id, off_id) = (unique_user(), unique_user(), unique_user(), unique_user());
    let before = fast_dropped(d).await?;
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(0), &b_id).await?;
    let mut c = Client::login(&d.ws_url(1), &c_id).await?;
    // b has a second socket, on the other connector: each socket gets it once.
    let mut b2 = Client::login(&d.ws_url(1), &b_id).await?;
    a.send(&json!({"type":"GROUP_MESSAGE","feature":"FAST",
        "data":{"to":[b_id, off_id, c_id, b_id],"content":"fast to the group"}}))
        .await?;
    let expected = json!({"type":"MESSAGE","data":{"from":a_id,"content":"fast to the group"}});
    for member in [&mut b, &mut b2, &mut c] {
        let m = member.expect("MESSAGE").await?;
        ensure!(m == expected, "{m}");
        let extra = member.sync().await?;
        ensure!(extra.is_empty(), "received twice: {extra:?}");
    }
    a.sync().await?;
    if !d.metrics_addrs().is_empty() {
        let after = fast_dropped(d).await?;
        ensure!(
            after == before + 1.0,
            "one offline member: dropped count {before} -> {after}"
        );
    }
    let mut off = Client::login(&d.ws_url(1), &off_id).await?;
    let (got, left) = fetch(&mut off, 10).await?;
    ensure!(
        got.is_empty() && left == 0,
        "a FAST group message was stored: {got:?}"
    );
    Ok(())
}

pub async fn fetch_returns_oldest_first_in_pages(d: &dyn Deployment) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    for i in 1..=5 {
        a.message(&b_id, &format!("m{i}"), "RELIABLE", None).await?;
    }
    a.sync().await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    let contents = |frames: &[Value]| -> Vec<String> {
        frames
            .iter()
            .map(|f| f["data"]["content"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let (got, left) = fetch(&mut b, 3).await?;
    ensure!(contents(&got) == ["m1", "m2", "m3"], "{got:?}");
    ensure!(left == 2, "leftMissingCount {left}");
    let (got, left) = fetch(&mut b, 3).await?;
    ensure!(
        contents(&got) == ["m4", "m5"] && left == 0,
        "{got:?} left {left}"
    );
    Ok(())
}

pub async fn master_gets_user_connected_and_disconnected(d: &dyn Deployment) -> anyhow::Result<()> {
    let mut master = Client::login(&d.ws_url(0), MASTER).await?;
    let u_id = unique_user();
    let u = Client::login(&d.ws_url(1), &u_id).await?;
    let f = master.expect("USER_CONNECTED").await?;
    ensure!(
        f == json!({"type":"USER_CONNECTED","data":{"userId":u_id}}),
        "{f}"
    );
    u.close().await;
    let f = master.expect("USER_DISCONNECTED").await?;
    ensure!(
        f == json!({"type":"USER_DISCONNECTED","data":{"userId":u_id}}),
        "{f}"
    );
    // The master's own sockets generate no events.
    let second = Client::login(&d.ws_url(1), MASTER).await?;
    second.close().await;
    let later = master.sync().await?;
    ensure!(
        later.is_empty(),
        "events about the master itself: {later:?}"
    );
    Ok(())
}

pub async fn master_events_wait_for_an_offline_master(d: &dyn Deployment) -> anyhow::Result<()> {
    let u_id = unique_user();
    Client::login(&d.ws_url(0), &u_id).await?.close().await;
    let mut master = Client::login(&d.ws_url(1), MASTER).await?;
    // The disconnect is published as the socket closes: poll, bounded, until both are stored.
    let mut seen = Vec::new();
    for _ in 0..50 {
        let (got, _) = fetch(&mut master, 10).await?;
        seen.extend(got);
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // If the master logs in before the disconnect is handled, that one arrives live, ahead
    // of the stored connect: each arrives once, in either order.
    seen.extend(master.sync().await?);
    seen.sort_by_key(|f| f["type"].to_string());
    ensure!(
        seen == vec![
            json!({"type":"USER_CONNECTED","data":{"userId":u_id}}),
            json!({"type":"USER_DISCONNECTED","data":{"userId":u_id}}),
        ],
        "{seen:?}"
    );
    Ok(())
}

pub async fn close_connection_by_master_closes_every_socket_of_the_user(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let mut master = Client::login(&d.ws_url(0), MASTER).await?;
    let u_id = unique_user();
    let mut u1 = Client::login(&d.ws_url(0), &u_id).await?;
    let mut u2 = Client::login(&d.ws_url(1), &u_id).await?;
    master.expect("USER_CONNECTED").await?;
    master.expect("USER_CONNECTED").await?;
    master
        .send(&json!({"type":"CLOSE_CONNECTION","data":{"userId":u_id}}))
        .await?;
    for u in [&mut u1, &mut u2] {
        match u.ended().await? {
            (Ended::Closed(Some(f)), _) => {
                ensure!(u16::from(f.code) == 4000, "close code {}", f.code)
            }
            other => bail!("expected a close frame with code 4000, got {other:?}"),
        }
    }
    let f = master.expect("USER_DISCONNECTED").await?;
    ensure!(f["data"]["userId"] == json!(u_id), "{f}");
    Ok(())
}

pub async fn close_connection_from_non_master_is_refused(d: &dyn Deployment) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    a.send(&json!({"type":"CLOSE_CONNECTION","reference":"c1","data":{"userId":b_id}}))
        .await?;
    let f = a.expect("INVALID_MESSAGE").await?;
    ensure!(
        f["data"]["reason"] == "NOT_MASTER" && f["reference"] == "c1",
        "{f}"
    );
    let later = b.sync().await?;
    ensure!(later.is_empty(), "{later:?}");
    Ok(())
}

pub async fn close_connection_for_offline_user_is_not_stored(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let mut master = Client::login(&d.ws_url(0), MASTER).await?;
    let u_id = unique_user();
    master
        .send(&json!({"type":"CLOSE_CONNECTION","data":{"userId":u_id}}))
        .await?;
    master.sync().await?;
    let mut u = Client::login(&d.ws_url(1), &u_id).await?;
    let (got, left) = fetch(&mut u, 10).await?;
    ensure!(got.is_empty() && left == 0, "{got:?}");
    let later = u.sync().await?;
    ensure!(later.is_empty(), "{later:?}");
    Ok(())
}

pub async fn auth_failures_reply_false_with_a_reason_then_close(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let cases = [
        ("app-id-343", "ANZ", "INVALID_USER_ID"),
        ("app-id-343", "XYZ-12", "UNKNOWN_APP"),
        ("wrong-id", "ANZ-12", "APP_ID_MISMATCH"),
        ("app-id-343", "SYSTEM-1", "RESERVED_ID"),
        ("app-id-343", "Connector-01", "RESERVED_ID"),
    ];
    for (app_id, user, reason) in cases {
        let mut c = Client::connect(&d.ws_url(0)).await?;
        let r = c.auth(user, app_id).await?;
        ensure!(
            r == json!({"type":"AUTH_CLIENT_REPLY","data":{"appId":app_id,"userId":user,
                "isAuthenticated":false,"reason":reason}}),
            "{user}: {r}"
        );
        match c.ended().await? {
            (Ended::Closed(Some(f)), _) => ensure!(u16::from(f.code) == 1008, "{f:?}"),
            other => bail!("{user}: expected a policy close, got {other:?}"),
        }
    }
    // Missing fields in AUTH_CLIENT are bad input, not a stuck "authenticating" socket.
    let mut c = Client::connect(&d.ws_url(0)).await?;
    c.send(&json!({"type":"AUTH_CLIENT","data":{"appId":"app-id-343"}}))
        .await?;
    let f = c.expect("INVALID_MESSAGE").await?;
    ensure!(
        f["data"]["reason"] == "MISSING_FIELD" && f["data"]["field"] == "userId",
        "{f}"
    );
    let ok = c.auth(&unique_user(), "app-id-343").await?;
    ensure!(ok["data"]["isAuthenticated"] == true, "{ok}");
    Ok(())
}

pub async fn frames_before_auth_get_auth_required(d: &dyn Deployment) -> anyhow::Result<()> {
    let mut c = Client::connect(&d.ws_url(0)).await?;
    c.send(&json!({"type":"MESSAGE","reference":"early","data":{"to":"ANZ-1","content":"x"}}))
        .await?;
    let f = c.expect("AUTH_REQUIRED").await?;
    ensure!(
        f == json!({"type":"AUTH_REQUIRED","data":{},"reference":"early"}),
        "{f}"
    );
    let user = unique_user();
    let r = c.auth(&user, "app-id-343").await?;
    ensure!(r["data"]["isAuthenticated"] == true, "{r}");
    c.send(&json!({"type":"AUTH_CLIENT","data":{"appId":"app-id-343","userId":user,"token":"t"}}))
        .await?;
    let f = c.expect("INVALID_MESSAGE").await?;
    ensure!(f["data"]["reason"] == "ALREADY_AUTHENTICATED", "{f}");
    Ok(())
}

pub async fn unauthenticated_socket_is_closed_at_the_deadline(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let mut c = Client::connect(&d.ws_url(0)).await?;
    match c.ended().await? {
        (Ended::Closed(Some(f)), _) => {
            ensure!(u16::from(f.code) == 1008, "{f:?}");
            ensure!(f.reason.contains("deadline"), "{f:?}");
        }
        other => bail!("expected a policy close, got {other:?}"),
    }
    Ok(())
}

pub async fn every_bad_input_gets_invalid_message_and_the_socket_stays_usable(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let user = unique_user();
    let mut c = Client::login(&d.ws_url(0), &user).await?;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "INVALID_JSON"),
        ("[1,2,3]".into(), "INVALID_FIELD"),
        (r#"{"data":{}}"#.into(), "MISSING_FIELD"),
        (r#"{"type":"NOPE","data":{}}"#.into(), "UNKNOWN_TYPE"),
        (
            r#"{"type":"INTERNAL_MESSAGE","data":{}}"#.into(),
            "FORBIDDEN_TYPE",
        ),
        (
            r#"{"type":"MESSAGE_STATE_CHANGED","data":{}}"#.into(),
            "FORBIDDEN_TYPE",
        ),
        (
            r#"{"type":"USER_DISCONNECTED","data":{"userId":"ANZ-1"}}"#.into(),
            "FORBIDDEN_TYPE",
        ),
        (r#"{"type":"MESSAGE"}"#.into(), "MISSING_FIELD"),
        (
            r#"{"type":"MESSAGE","data":{"to":"ANZ-1"}}"#.into(),
            "MISSING_FIELD",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":5,"content":"x"}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":"","content":"x"}}"#.into(),
            "INVALID_USER_ID",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":"Connector-01","content":"x"}}"#.into(),
            "RESERVED_ID",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":"SYSTEM-1","content":"x"}}"#.into(),
            "RESERVED_ID",
        ),
        (
            r#"{"type":"MESSAGE","feature":"SLOW","data":{"to":"ANZ-1","content":"x"}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"MESSAGE","reference":7,"data":{"to":"ANZ-1","content":"x"}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"GROUP_MESSAGE","data":{"to":[],"content":"x"}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"GROUP_MESSAGE","data":{"to":"ANZ-1","content":"x"}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":0}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":-3}}"#.into(),
            "INVALID_FIELD",
        ),
        (
            r#"{"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{}}"#.into(),
            "MISSING_FIELD",
        ),
        (
            r#"{"type":"CLOSE_CONNECTION","data":{"userId":"processor-1"}}"#.into(),
            "RESERVED_ID",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":"XYZ-1","content":"x"}}"#.into(),
            "UNKNOWN_APP",
        ),
        (
            r#"{"type":"MESSAGE","data":{"to":"BNZ-1","content":"x"}}"#.into(),
            "CROSS_APP_FORBIDDEN",
        ),
    ];
    for (text, reason) in &cases {
        c.send_text(text).await?;
        let f = c.expect("INVALID_MESSAGE").await.context(text.clone())?;
        ensure!(f["data"]["reason"] == *reason, "{text}: {f}");
        ensure!(f["data"]["detail"].is_string(), "{text}: no detail: {f}");
        // Still usable: a valid frame round-trips.
        let extra = c.sync().await?;
        ensure!(extra.is_empty(), "{text}: {extra:?}");
    }
    c.send_binary(vec![1, 2, 3]).await?;
    let f = c.expect("INVALID_MESSAGE").await?;
    ensure!(f["data"]["reason"] == "BINARY_FRAME", "{f}");
    // An error echoes the frame's reference.
    c.send_text(r#"{"type":"NOPE","reference":"bad-1","data":{}}"#)
        .await?;
    let f = c.expect("INVALID_MESSAGE").await?;
    ensure!(f["reference"] == "bad-1", "{f}");
    c.sync().await?;
    Ok(())
}

pub async fn nothing_a_client_sends_changes_from(d: &dyn Deployment) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    a.send(&json!({"type":"MESSAGE","from":MASTER,
        "data":{"to":b_id,"content":"hi","from":MASTER}}))
        .await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(m["data"]["from"] == json!(a_id), "{m}");
    a.send(&json!({"type":"GROUP_MESSAGE","data":{"to":[b_id],"content":"g","from":MASTER}}))
        .await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(m["data"]["from"] == json!(a_id), "{m}");
    Ok(())
}

pub async fn oversized_frame_closes_with_1009(d: &dyn Deployment) -> anyhow::Result<()> {
    let mut c = Client::login(&d.ws_url(0), &unique_user()).await?;
    let big = "x".repeat(70 * 1024);
    let frame = json!({"type":"MESSAGE","data":{"to":c.user,"content":big}});
    c.send(&frame).await?;
    match c.ended().await? {
        (Ended::Closed(Some(f)), seen) => {
            ensure!(u16::from(f.code) == 1009, "{f:?}");
            ensure!(f.reason.contains("limit"), "{f:?}");
            ensure!(
                seen.len() == 1 && seen[0]["data"]["reason"] == "FRAME_TOO_LARGE",
                "told why before the close: {seen:?}"
            );
        }
        other => bail!("expected close 1009, got {other:?}"),
    }
    Ok(())
}

pub async fn repeated_bad_frames_close_with_1008(d: &dyn Deployment) -> anyhow::Result<()> {
    let mut c = Client::login(&d.ws_url(0), &unique_user()).await?;
    for _ in 0..30 {
        if c.send_text("{not json").await.is_err() {
            break;
        }
    }
    match c.ended().await? {
        (Ended::Closed(Some(f)), seen) => {
            ensure!(u16::from(f.code) == 1008, "{f:?}");
            ensure!(
                seen.iter().all(|s| s["type"] == "INVALID_MESSAGE"),
                "{seen:?}"
            );
            ensure!(
                seen.len() > 1,
                "each bad frame is answered before the close"
            );
        }
        other => bail!("expected close 1008, got {other:?}"),
    }
    Ok(())
}

pub async fn websocket_is_served_at_ws_only(d: &dyn Deployment) -> anyhow::Result<()> {
    let url = d.ws_url(0).replace("/ws", "/other");
    ensure!(
        Client::connect(&url).await.is_err(),
        "a WebSocket opened at /other"
    );
    Ok(())
}

pub async fn a_master_acts_only_on_its_own_apps_users(d: &dyn Deployment) -> anyhow::Result<()> {
    // BNZ's master may not close an ANZ user, nor message one, nor reach one in a group.
    let mut bnz_master = Client::login_app(&d.ws_url(0), "BNZ-453432", "bnz-344").await?;
    let anz_id = unique_user();
    let mut anz = Client::login(&d.ws_url(1), &anz_id).await?;
    bnz_master
        .send(&json!({"type":"CLOSE_CONNECTION","data":{"userId":anz_id}}))
        .await?;
    let f = bnz_master.expect("INVALID_MESSAGE").await?;
    ensure!(f["data"]["reason"] == "NOT_MASTER", "{f}");
    bnz_master.message(&anz_id, "hi", "RELIABLE", None).await?;
    let f = bnz_master.expect("INVALID_MESSAGE").await?;
    ensure!(f["data"]["reason"] == "CROSS_APP_FORBIDDEN", "{f}");
    bnz_master
        .send(&json!({"type":"GROUP_MESSAGE","data":{"to":["BNZ-1", anz_id],"content":"x"}}))
        .await?;
    let f = bnz_master.expect("INVALID_MESSAGE").await?;
    ensure!(f["data"]["reason"] == "CROSS_APP_FORBIDDEN", "{f}");
    let later = anz.sync().await?;
    ensure!(later.is_empty(), "the ANZ user saw: {later:?}");
    Ok(())
}

/// The numbered MESSAGE frames among `frames`, with their content, number and id.
fn numbered(frames: &[Value]) -> anyhow::Result<Vec<(String, u64, String)>> {
    frames
        .iter()
        .filter(|f| f["type"] == "MESSAGE")
        .map(|f| {
            Ok((
                f["data"]["content"].as_str().unwrap_or_default().to_owned(),
                f["seq"].as_u64().with_context(|| format!("no seq: {f}"))?,
                f["id"]
                    .as_str()
                    .with_context(|| format!("no id: {f}"))?
                    .to_owned(),
            ))
        })
        .collect()
}

/// Frames up to and including RESUME_COMPLETE; its `resent` count.
async fn resumed(c: &mut Client) -> anyhow::Result<(Vec<Value>, u64)> {
    let mut got = Vec::new();
    loop {
        let f = c.next().await?;
        if f["type"] == "RESUME_COMPLETE" {
            let resent = f["data"]["resent"].as_u64().context("resent is a number")?;
            return Ok((got, resent));
        }
        got.push(f);
    }
}

pub async fn acking_client_gets_unacknowledged_messages_again_on_another_connector_in_order(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login_ack(&d.ws_url(0), &b_id).await?;
    let (nothing, resent) = resumed(&mut b).await?;
    ensure!(nothing.is_empty() && resent == 0, "{nothing:?}");
    for i in 0..3 {
        a.message(&b_id, &format!("m{i}"), "RELIABLE", None).await?;
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(b.expect("MESSAGE").await?);
    }
    let live = numbered(&live)?;
    let contents: Vec<_> = live.iter().map(|m| m.0.as_str()).collect();
    ensure!(contents == ["m0", "m1", "m2"], "{live:?}");
    ensure!(
        live.windows(2).all(|w| w[0].1 < w[1].1),
        "numbers grow: {live:?}"
    );
    // Only the first is acknowledged, by number.
    b.send(&json!({"type":"ACK","data":{"upTo":live[0].1}}))
        .await?;
    b.sync().await?;
    // Closing cleanly: the server answers the close once the ACKs it read are handed on, so
    // the next login's resume cannot overtake them (protocol.md 10.2).
    b.close_cleanly().await?;
    a.message(&b_id, "m3", "RELIABLE", None).await?;
    a.sync().await?;
    // Back on another connector: what was not acknowledged comes first, in order, with the
    // same numbers and ids, then what was kept while away.
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await?;
    let (again, resent) = resumed(&mut b).await?;
    let again = numbered(&again)?;
    let contents: Vec<_> = again.iter().map(|m| m.0.as_str()).collect();
    ensure!(contents == ["m1", "m2", "m3"], "{again:?}");
    ensure!(resent == 3, "resent {resent}");
    ensure!(
        again[..2] == live[1..],
        "same numbers and ids: {again:?} {live:?}"
    );
    ensure!(again[2].1 > again[1].1, "{again:?}");
    // The original-protocol sender saw nothing new.
    let extra = a.sync().await?;
    ensure!(extra.is_empty(), "{extra:?}");
    Ok(())
}

pub async fn an_acknowledged_message_is_never_sent_again(d: &dyn Deployment) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    a.message(&b_id, "while away", "RELIABLE", Some("w1"))
        .await?;
    a.sync().await?;
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await?;
    let (got, resent) = resumed(&mut b).await?;
    ensure!(resent == 1 && got.len() == 1, "{got:?}");
    ensure!(
        got[0]["reference"] == "w1" && got[0]["data"]["content"] == "while away",
        "{got:?}"
    );
    // Delivered: the sender is confirmed now.
    let c = a.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(c["data"]["reference"] == "w1", "{c}");
    b.ack(&[&got[0]]).await?;
    b.sync().await?;
    b.close_cleanly().await?;
    let mut b = Client::login_ack(&d.ws_url(0), &b_id).await?;
    let (got, resent) = resumed(&mut b).await?;
    ensure!(got.is_empty() && resent == 0, "sent again: {got:?}");
    let (fetched, left) = fetch(&mut b, 10).await?;
    ensure!(
        fetched.is_empty() && left == 0,
        "fetched again: {fetched:?}"
    );
    // Nor confirmed twice.
    let later = a.sync().await?;
    ensure!(later.is_empty(), "{later:?}");
    Ok(())
}

pub async fn a_retried_reference_is_accepted_again_but_delivered_once(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    let mut a = Client::login_ack(&d.ws_url(0), &a_id).await?;
    resumed(&mut a).await?;
    let frame = json!({"type":"MESSAGE","reference":"retry-1","data":{"to":b_id,"content":"once"}});
    a.send(&frame).await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(
        m["data"]["content"] == "once" && m.get("seq").is_none(),
        "{m}"
    );
    // The acking sender gets the confirmation numbered, then MESSAGE_ACCEPTED.
    let c = a.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(
        c["data"]["reference"] == "retry-1" && c["seq"].is_u64(),
        "{c}"
    );
    let acc = a.expect("MESSAGE_ACCEPTED").await?;
    ensure!(
        acc == json!({"type":"MESSAGE_ACCEPTED","data":{"reference":"retry-1"}}),
        "{acc}"
    );
    a.close().await;
    // The sender did not trust it and retries from a new socket on another connector; the
    // unacknowledged confirmation comes back first.
    let mut a = Client::login_ack(&d.ws_url(1), &a_id).await?;
    let (again, _) = resumed(&mut a).await?;
    ensure!(
        again.len() == 1 && again[0]["id"] == c["id"],
        "the confirmation is resent: {again:?}"
    );
    a.ack(&[&again[0]]).await?;
    a.send(&frame).await?;
    let acc = a.expect("MESSAGE_ACCEPTED").await?;
    ensure!(acc["data"]["reference"] == "retry-1", "{acc}");
    let later = b.sync().await?;
    ensure!(later.is_empty(), "delivered twice: {later:?}");
    let later = a.sync().await?;
    ensure!(later.is_empty(), "confirmed twice: {later:?}");
    // Another reference is a new message.
    a.message(&b_id, "twice", "RELIABLE", Some("retry-2"))
        .await?;
    let m = b.expect("MESSAGE").await?;
    ensure!(m["data"]["content"] == "twice", "{m}");
    Ok(())
}

pub async fn ack_needs_an_acking_socket(d: &dyn Deployment) -> anyhow::Result<()> {
    let mut a = Client::login(&d.ws_url(0), &unique_user()).await?;
    a.send(&json!({"type":"ACK","reference":"k","data":{"upTo":3}}))
        .await?;
    let e = a.expect("INVALID_MESSAGE").await?;
    ensure!(
        e["data"]["reason"] == "ACK_NOT_ENABLED" && e["reference"] == "k",
        "{e}"
    );
    a.send(&json!({"type":"ACK","data":{"ids":["not-an-id"]}}))
        .await?;
    let e = a.expect("INVALID_MESSAGE").await?;
    ensure!(
        e["data"]["reason"] == "INVALID_FIELD" && e["data"]["field"] == "ids",
        "{e}"
    );
    Ok(())
}

pub async fn an_acking_fetch_keeps_messages_until_acknowledged(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    for i in 0..3 {
        a.message(&b_id, &format!("f{i}"), "RELIABLE", None).await?;
    }
    a.sync().await?;
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await?;
    let (got, _) = resumed(&mut b).await?;
    let got = numbered(&got)?;
    ensure!(got.len() == 3, "{got:?}");
    // A fetch on the same socket sends nothing it was already sent.
    let (fetched, left) = fetch(&mut b, 10).await?;
    ensure!(fetched.is_empty() && left == 0, "{fetched:?} left {left}");
    b.send(&json!({"type":"ACK","data":{"upTo":got[1].1}}))
        .await?;
    b.sync().await?;
    // Acknowledged ones left the store; the third is still kept, and an old-protocol device
    // of the same user fetches it as before (plain, and that delivery removes it).
    let mut old = Client::login(&d.ws_url(0), &b_id).await?;
    let (fetched, left) = fetch(&mut old, 10).await?;
    ensure!(
        fetched == vec![json!({"type":"MESSAGE","data":{"from":a_id,"content":"f2"}})] && left == 0,
        "{fetched:?} left {left}"
    );
    b.close_cleanly().await?;
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await?;
    let (again, resent) = resumed(&mut b).await?;
    ensure!(again.is_empty() && resent == 0, "{again:?}");
    Ok(())
}

pub async fn what_was_kept_comes_before_anything_new_on_an_acking_login(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    const KEPT: usize = 100;
    const NEW: usize = 20;
    for i in 0..KEPT {
        a.message(&b_id, &format!("n{i:03}"), "RELIABLE", None)
            .await?;
    }
    a.sync().await?;
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await?;
    // New messages while the resume runs: they must wait for it.
    for i in KEPT..KEPT + NEW {
        a.message(&b_id, &format!("n{i:03}"), "RELIABLE", None)
            .await?;
    }
    let mut order = Vec::new();
    let mut complete_at = None;
    while order.len() < KEPT + NEW {
        let f = b.next().await?;
        if f["type"] == "RESUME_COMPLETE" {
            complete_at = Some(order.len());
            continue;
        }
        ensure!(f["type"] == "MESSAGE" && f["seq"].is_u64(), "{f}");
        order.push(f["data"]["content"].as_str().unwrap_or_default().to_owned());
        b.ack(&[&f]).await?;
    }
    let complete_at = match complete_at {
        Some(at) => at,
        None => {
            b.expect("RESUME_COMPLETE").await?;
            order.len()
        }
    };
    ensure!(
        complete_at >= KEPT,
        "RESUME_COMPLETE after the kept ones: {complete_at}"
    );
    let mut sorted = order.clone();
    sorted.sort();
    ensure!(
        order == sorted,
        "kept first, then new, each in order: {order:?}"
    );
    Ok(())
}

/// A channel of app ANZ no other test (nor an earlier run on the same engines) uses.
fn unique_channel() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "ANZ/room-{}-{nanos}",
        unique_user().trim_start_matches("ANZ-")
    )
}

async fn subscribe(c: &mut Client, channel: &str) -> anyhow::Result<()> {
    c.send(&json!({"type":"SUBSCRIBE","reference":"s","data":{"channel":channel}}))
        .await?;
    let f = c.expect("SUBSCRIBED").await?;
    ensure!(
        f == json!({"type":"SUBSCRIBED","data":{"channel":channel},"reference":"s"}),
        "{f}"
    );
    Ok(())
}

async fn channel_members(c: &mut Client, channel: &str) -> anyhow::Result<Value> {
    c.send(&json!({"type":"CHANNEL_PRESENCE","data":{"channel":channel}}))
        .await?;
    let f = c.expect("CHANNEL_PRESENCE").await?;
    ensure!(f["data"]["channel"] == json!(channel), "{f}");
    Ok(f["data"]["members"].clone())
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

pub async fn channel_members_on_two_connectors_get_every_post(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let channel = unique_channel();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    // Membership belongs to a socket: a's second socket does not join.
    let mut a2 = Client::login(&d.ws_url(1), &a_id).await?;
    subscribe(&mut a, &channel).await?;
    subscribe(&mut b, &channel).await?;
    let members = channel_members(&mut a, &channel).await?;
    ensure!(
        members == json!(sorted(vec![a_id.clone(), b_id.clone()])),
        "{members}"
    );

    let post = json!({"type":"CHANNEL_MESSAGE","reference":"r1","data":{"channel":channel,"content":{"text":"hi"}}});
    a.send(&post).await?;
    let expected = json!({"type":"CHANNEL_MESSAGE","data":{"channel":channel,"from":a_id,"content":{"text":"hi"},"seq":1},"reference":"r1"});
    let m = b.expect("CHANNEL_MESSAGE").await?;
    ensure!(m == expected, "{m}");
    // The sender gets its own post with its reference, and one confirmation.
    let mine = [a.next().await?, a.next().await?];
    ensure!(mine.contains(&expected), "{mine:?}");
    ensure!(
        mine.contains(&json!({"type":"MESSAGE_CONFIRMATION","data":{"reference":"r1"}})),
        "{mine:?}"
    );

    b.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"fast"}}))
        .await?;
    for c in [&mut a, &mut b] {
        let m = c.expect("CHANNEL_MESSAGE").await?;
        ensure!(
            m["data"]["from"] == json!(b_id) && m["data"]["content"] == "fast",
            "{m}"
        );
    }
    for c in [&mut a, &mut b] {
        let later = c.sync().await?;
        ensure!(later.is_empty(), "each post came once: {later:?}");
    }
    // The confirmation goes to every socket of the sender, as for MESSAGE; posts do not.
    let later = a2.sync().await?;
    ensure!(
        types(&later) == ["MESSAGE_CONFIRMATION"],
        "a socket that did not join got: {later:?}"
    );
    Ok(())
}

pub async fn leaving_or_closing_ends_channel_membership(d: &dyn Deployment) -> anyhow::Result<()> {
    let channel = unique_channel();
    let (a_id, b_id, c_id) = (unique_user(), unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    let mut c = Client::login(&d.ws_url(1), &c_id).await?;
    for client in [&mut a, &mut b, &mut c] {
        subscribe(client, &channel).await?;
    }
    b.send(&json!({"type":"UNSUBSCRIBE","data":{"channel":channel}}))
        .await?;
    let f = b.expect("UNSUBSCRIBED").await?;
    ensure!(f["data"]["channel"] == json!(channel), "{f}");
    c.close().await;
    // The close is carried out after the socket ends: poll, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = channel_members(&mut a, &channel).await?;
        if members == json!([a_id]) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "members still {members} after leave and close"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"after"}}))
        .await?;
    a.expect("CHANNEL_MESSAGE").await?;
    // An open channel takes posts from users of its app who are not members.
    b.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"outside"}}))
        .await?;
    let m = a.expect("CHANNEL_MESSAGE").await?;
    ensure!(
        m["data"]["from"] == json!(b_id) && m["data"]["content"] == "outside",
        "{m}"
    );
    let later = b.sync().await?;
    ensure!(later.is_empty(), "a socket that left still got: {later:?}");
    Ok(())
}

pub async fn channels_of_another_app_and_bad_names_are_refused(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let channel = unique_channel();
    let anz_id = unique_user();
    let mut anz = Client::login(&d.ws_url(0), &anz_id).await?;
    subscribe(&mut anz, &channel).await?;
    let mut bnz = Client::login_app(&d.ws_url(1), "BNZ-453432", "bnz-344").await?;
    for frame in [
        json!({"type":"SUBSCRIBE","reference":"x","data":{"channel":channel}}),
        json!({"type":"CHANNEL_MESSAGE","reference":"x","data":{"channel":channel,"content":"hi"}}),
        json!({"type":"CHANNEL_PRESENCE","reference":"x","data":{"channel":channel}}),
    ] {
        bnz.send(&frame).await?;
        let f = bnz.expect("INVALID_MESSAGE").await?;
        ensure!(
            f["data"]["reason"] == "CHANNEL_OF_OTHER_APP" && f["reference"] == "x",
            "{frame} -> {f}"
        );
    }
    for name in [
        json!("general"),
        json!("ANZ/"),
        json!("ANZ/a b"),
        json!(format!("ANZ/{}", "x".repeat(200))),
    ] {
        anz.send(&json!({"type":"SUBSCRIBE","data":{"channel":name}}))
            .await?;
        let f = anz.expect("INVALID_MESSAGE").await?;
        ensure!(
            f["data"]["reason"] == "INVALID_CHANNEL" && f["data"]["field"] == "channel",
            "{name} -> {f}"
        );
    }
    let later = anz.sync().await?;
    ensure!(later.is_empty(), "the ANZ member saw: {later:?}");
    let members = channel_members(&mut anz, &channel).await?;
    ensure!(members == json!([anz_id]), "{members}");
    Ok(())
}

/// The master user of app CNZ, whose channels are managed, in every test network.
pub const CNZ_MASTER: &str = "CNZ-1";
const CNZ_APP_ID: &str = "cnz-345";

/// A user of app CNZ no other test uses, and a managed channel of CNZ no other test uses.
fn unique_cnz() -> (String, String) {
    let user = unique_user().replacen("ANZ-", "CNZ-", 1);
    let channel = unique_channel().replacen("ANZ/", "CNZ/", 1);
    (user, channel)
}

/// Sends `frame` (with reference "x") and expects `INVALID_MESSAGE` with `reason` (past any
/// user events, for a master user).
async fn refused(c: &mut Client, frame: Value, reason: &str) -> anyhow::Result<()> {
    c.send(&frame).await?;
    let f = expect_past_events(c, "INVALID_MESSAGE").await?;
    ensure!(
        f["data"]["reason"] == reason && f["reference"] == "x",
        "{frame} -> {f}, expected {reason}"
    );
    Ok(())
}

/// The next frame of type `kind` for a master user, past the USER_CONNECTED and
/// USER_DISCONNECTED events of its app's users.
async fn expect_past_events(master: &mut Client, kind: &str) -> anyhow::Result<Value> {
    loop {
        let f = master.next().await?;
        if f["type"] != "USER_CONNECTED" && f["type"] != "USER_DISCONNECTED" {
            ensure!(f["type"] == kind, "expected {kind}, got {f}");
            return Ok(f);
        }
    }
}

/// `CHANNEL_ADD` (or `CHANNEL_REMOVE` if not `added`) from `master`, answered in kind.
async fn choose(master: &mut Client, added: bool, channel: &str, user: &str) -> anyhow::Result<()> {
    let (ask, answer) = if added {
        ("CHANNEL_ADD", "CHANNEL_ADDED")
    } else {
        ("CHANNEL_REMOVE", "CHANNEL_REMOVED")
    };
    master
        .send(&json!({"type":ask,"reference":"m","data":{"channel":channel,"userId":user}}))
        .await?;
    let f = expect_past_events(master, answer).await?;
    ensure!(
        f == json!({"type":answer,"data":{"channel":channel,"userId":user},"reference":"m"}),
        "{f}"
    );
    Ok(())
}

pub async fn managed_channels_admit_only_the_users_the_master_added(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, channel) = unique_cnz();
    let (b_id, _) = unique_cnz();
    let mut master = Client::login_app(&d.ws_url(0), CNZ_MASTER, CNZ_APP_ID).await?;
    let mut a = Client::login_app(&d.ws_url(0), &a_id, CNZ_APP_ID).await?;
    let mut b = Client::login_app(&d.ws_url(1), &b_id, CNZ_APP_ID).await?;
    // Not added yet: a user of the app may not join, post or list.
    for frame in [
        json!({"type":"SUBSCRIBE","reference":"x","data":{"channel":channel}}),
        json!({"type":"CHANNEL_MESSAGE","reference":"x","data":{"channel":channel,"content":"hi"}}),
        json!({"type":"CHANNEL_PRESENCE","reference":"x","data":{"channel":channel}}),
    ] {
        refused(&mut a, frame, "NOT_CHANNEL_MEMBER").await?;
    }
    choose(&mut master, true, &channel, &a_id).await?;
    choose(&mut master, true, &channel, &a_id).await?;
    choose(&mut master, true, &channel, &b_id).await?;
    subscribe(&mut a, &channel).await?;
    subscribe(&mut b, &channel).await?;
    // The master user may use its app's managed channels without being added.
    master
        .send(&json!({"type":"SUBSCRIBE","data":{"channel":channel}}))
        .await?;
    expect_past_events(&mut master, "SUBSCRIBED").await?;
    let members = channel_members(&mut b, &channel).await?;
    let expected = sorted(vec![a_id.clone(), b_id.clone(), CNZ_MASTER.to_owned()]);
    ensure!(members == json!(expected), "{members}");

    a.send(&json!({"type":"CHANNEL_MESSAGE","reference":"r1","data":{"channel":channel,"content":"hello"}}))
        .await?;
    let m = expect_past_events(&mut master, "CHANNEL_MESSAGE").await?;
    ensure!(m["data"]["from"] == json!(a_id), "{m}");
    for c in [&mut b, &mut a] {
        let m = c.expect("CHANNEL_MESSAGE").await?;
        ensure!(
            m["data"]["from"] == json!(a_id) && m["data"]["content"] == "hello",
            "{m}"
        );
    }
    // A user of the app who was not added still may not post, and nobody got anything.
    let (c_id, _) = unique_cnz();
    let mut c = Client::login_app(&d.ws_url(1), &c_id, CNZ_APP_ID).await?;
    let post = json!({"type":"CHANNEL_MESSAGE","reference":"x","data":{"channel":channel,"content":"spam"}});
    refused(&mut c, post, "NOT_CHANNEL_MEMBER").await?;
    let later = b.sync().await?;
    ensure!(
        later.iter().all(|f| f["data"]["content"] != "spam"),
        "{later:?}"
    );
    Ok(())
}

pub async fn only_the_apps_master_chooses_managed_members(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, channel) = unique_cnz();
    let mut a = Client::login_app(&d.ws_url(0), &a_id, CNZ_APP_ID).await?;
    let mut bnz_master = Client::login_app(&d.ws_url(1), "BNZ-453432", "bnz-344").await?;
    let mut anz_master = Client::login(&d.ws_url(0), MASTER).await?;
    let mut master = Client::login_app(&d.ws_url(1), CNZ_MASTER, CNZ_APP_ID).await?;
    let add = |channel: &str, user: &str| json!({"type":"CHANNEL_ADD","reference":"x","data":{"channel":channel,"userId":user}});
    // A user may not add themself; another app's master may not add to this app's channel.
    refused(&mut a, add(&channel, &a_id), "NOT_MASTER").await?;
    refused(&mut bnz_master, add(&channel, &a_id), "NOT_MASTER").await?;
    refused(&mut anz_master, add(&channel, &a_id), "NOT_MASTER").await?;
    let remove =
        json!({"type":"CHANNEL_REMOVE","reference":"x","data":{"channel":channel,"userId":a_id}});
    refused(&mut bnz_master, remove, "NOT_MASTER").await?;
    // The app's master may not add another app's user, and an open app's channels take none.
    let anz_user = unique_user();
    refused(
        &mut master,
        add(&channel, &anz_user),
        "CHANNEL_OF_OTHER_APP",
    )
    .await?;
    let open = unique_channel();
    refused(
        &mut anz_master,
        add(&open, &anz_user),
        "CHANNEL_NOT_MANAGED",
    )
    .await?;
    // Nothing the refused frames asked for happened.
    let join = json!({"type":"SUBSCRIBE","reference":"x","data":{"channel":channel}});
    refused(&mut a, join, "NOT_CHANNEL_MEMBER").await?;
    choose(&mut master, true, &channel, &a_id).await?;
    subscribe(&mut a, &channel).await?;
    Ok(())
}

pub async fn a_removed_member_no_longer_receives_nor_posts(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let (a_id, channel) = unique_cnz();
    let (b_id, _) = unique_cnz();
    let mut master = Client::login_app(&d.ws_url(0), CNZ_MASTER, CNZ_APP_ID).await?;
    let mut a = Client::login_app(&d.ws_url(0), &a_id, CNZ_APP_ID).await?;
    let mut b = Client::login_app(&d.ws_url(1), &b_id, CNZ_APP_ID).await?;
    choose(&mut master, true, &channel, &a_id).await?;
    choose(&mut master, true, &channel, &b_id).await?;
    subscribe(&mut a, &channel).await?;
    subscribe(&mut b, &channel).await?;
    // b is on another connector than the master: the membership ends there too.
    choose(&mut master, false, &channel, &b_id).await?;
    let members = channel_members(&mut a, &channel).await?;
    ensure!(members == json!([a_id]), "{members}");
    a.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"after"}}))
        .await?;
    let m = a.expect("CHANNEL_MESSAGE").await?;
    ensure!(m["data"]["content"] == "after", "{m}");
    let later = b.sync().await?;
    ensure!(later.is_empty(), "a removed member still got: {later:?}");
    let post =
        json!({"type":"CHANNEL_MESSAGE","reference":"x","data":{"channel":channel,"content":"x"}});
    refused(&mut b, post, "NOT_CHANNEL_MEMBER").await?;
    let join = json!({"type":"SUBSCRIBE","reference":"x","data":{"channel":channel}});
    refused(&mut b, join, "NOT_CHANNEL_MEMBER").await?;
    // Added again, the same socket joins again.
    choose(&mut master, true, &channel, &b_id).await?;
    subscribe(&mut b, &channel).await?;
    a.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"back"}}))
        .await?;
    let m = b.expect("CHANNEL_MESSAGE").await?;
    ensure!(m["data"]["content"] == "back", "{m}");
    Ok(())
}

/// The path of the URL form for `user` of app ANZ in `channel` (a short name), with the app id.
fn plain_path(channel: &str, user: &str, app_id: &str) -> String {
    format!("/channels/{channel}/users/{user}?appId={app_id}")
}

/// Waits, bounded, until `user` is among the members `c` sees in `channel`.
async fn until_member(c: &mut Client, channel: &str, user: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = channel_members(c, channel).await?;
        if members.as_array().is_some_and(|m| m.contains(&json!(user))) {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{user} never joined {channel}: {members}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn a_plain_text_client_joins_and_posts_by_url(d: &dyn Deployment) -> anyhow::Result<()> {
    use crate::plain_client::{PlainClient, plain_url};
    let channel = unique_channel();
    let short = channel.trim_start_matches("ANZ/");
    let (a_id, p_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    subscribe(&mut a, &channel).await?;
    let url = plain_url(&d.ws_url(1), &plain_path(short, &p_id, "app-id-343"));
    let mut p = PlainClient::connect(&url).await?;
    until_member(&mut a, &channel, &p_id).await?;

    // A text frame is a post, as a JSON string, and comes back to the plain socket too.
    p.send("hello \"all\"").await?;
    let m = a.expect("CHANNEL_MESSAGE").await?;
    ensure!(
        m["data"]["from"] == json!(p_id) && m["data"]["content"] == "hello \"all\"",
        "{m}"
    );
    ensure!(p.next().await? == "hello \"all\"", "own post as text");
    // A string arrives as its text, anything else as its JSON; other frames not at all.
    a.message(&p_id, "direct", "FAST", None).await?;
    for content in [json!("plain"), json!({"n":[1,2]})] {
        a.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":content}}))
            .await?;
        a.expect("CHANNEL_MESSAGE").await?;
    }
    ensure!(p.next().await? == "plain");
    ensure!(p.next().await? == r#"{"n":[1,2]}"#);

    // Refusals close the socket with 1008 and the reason.
    let managed = unique_cnz().1;
    let cnz_user = unique_cnz().0;
    for (path, reason) in [
        (
            plain_path(short, &unique_user(), "wrong-id"),
            "authentication failed",
        ),
        (
            plain_path("a%20b", &unique_user(), "app-id-343"),
            "INVALID_CHANNEL",
        ),
        (
            format!("/channels/{short}/users/{}", unique_user()),
            "MISSING_FIELD",
        ),
        (
            plain_path(managed.trim_start_matches("CNZ/"), &cnz_user, "cnz-345"),
            "NOT_CHANNEL_MEMBER",
        ),
    ] {
        let mut refused = PlainClient::connect(&plain_url(&d.ws_url(0), &path)).await?;
        let (frame, seen) = refused.closed().await?;
        let frame = frame.with_context(|| format!("{path}: no close frame"))?;
        ensure!(
            u16::from(frame.code) == 1008 && frame.reason.contains(reason) && seen.is_empty(),
            "{path}: closed with {frame:?} after {seen:?}, expected {reason}"
        );
    }
    Ok(())
}
pub async fn a_subscription_without_echo_does_not_get_its_own_posts(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let channel = unique_channel();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut quiet = Client::login(&d.ws_url(0), &a_id).await?;
    let mut loud = Client::login(&d.ws_url(1), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    quiet
        .send(&json!({"type":"SUBSCRIBE","reference":"s","data":{"channel":channel,"echo":false}}))
        .await?;
    let f = quiet.expect("SUBSCRIBED").await?;
    ensure!(f["data"]["channel"] == json!(channel), "{f}");
    subscribe(&mut loud, &channel).await?;
    subscribe(&mut b, &channel).await?;

    let post = json!({"type":"CHANNEL_MESSAGE","reference":"r1","data":{"channel":channel,"content":"mine"}});
    quiet.send(&post).await?;
    let m = b.expect("CHANNEL_MESSAGE").await?;
    ensure!(
        m["data"]["from"] == json!(a_id) && m["data"]["content"] == "mine",
        "{m}"
    );
    // The user's other socket subscribed with echo (the default): it gets the post.
    let mine = [loud.next().await?, loud.next().await?];
    ensure!(
        types(&mine).contains(&"CHANNEL_MESSAGE".to_owned()),
        "the echoing socket got {mine:?}"
    );
    b.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"theirs"}}))
        .await?;
    // b's post travels on b's path, which quiet's sync markers do not: b syncs first, so the
    // post has reached quiet's connector before quiet's markers (CI: the sync ended first).
    b.sync().await?;
    // Echo off hides only the socket's own user's posts; the confirmation still comes.
    // (FAST and RELIABLE travel apart, so the two may come in either order.)
    let seen = quiet.sync().await?;
    ensure!(
        sorted(types(&seen)) == ["CHANNEL_MESSAGE", "MESSAGE_CONFIRMATION"],
        "the socket without echo got {seen:?}"
    );
    ensure!(
        seen.iter()
            .any(|f| f["type"] == "CHANNEL_MESSAGE" && f["data"]["content"] == "theirs"),
        "{seen:?}"
    );
    Ok(())
}

/// Posts `count` RELIABLE posts `{"n": first..}` to `channel` and waits for their
/// confirmations (so they are kept).
async fn post_kept(c: &mut Client, channel: &str, first: u64, count: u64) -> anyhow::Result<()> {
    for n in first..first + count {
        c.send(&json!({"type":"CHANNEL_MESSAGE","reference":format!("p{n}"),"data":{"channel":channel,"content":{"n":n}}}))
            .await?;
    }
    for _ in 0..count {
        c.expect("MESSAGE_CONFIRMATION").await?;
    }
    Ok(())
}

/// Reads a replay after SUBSCRIBED: the replayed posts, then CHANNEL_HISTORY_COMPLETE; any
/// live post that comes in between is an error (live posts wait for the end of the replay).
async fn replay(c: &mut Client) -> anyhow::Result<(Vec<Value>, Value)> {
    let mut posts = Vec::new();
    loop {
        let f = c.next().await?;
        match f["type"].as_str() {
            Some("CHANNEL_MESSAGE") => posts.push(f),
            Some("CHANNEL_HISTORY_COMPLETE") => return Ok((posts, f)),
            _ => bail!("during a replay: {f}"),
        }
    }
}

fn seqs(posts: &[Value]) -> Vec<u64> {
    posts
        .iter()
        .filter_map(|p| p["data"]["seq"].as_u64())
        .collect()
}

pub async fn channel_history_is_replayed_then_live_posts_follow_without_gap_or_duplicate(
    d: &dyn Deployment,
) -> anyhow::Result<()> {
    let channel = unique_channel();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await?;
    let mut b = Client::login(&d.ws_url(1), &b_id).await?;
    post_kept(&mut a, &channel, 1, 5).await?;

    // The newest three, oldest first, numbered, each with its sender's reference.
    b.send(&json!({"type":"SUBSCRIBE","reference":"h","data":{"channel":channel,"history":3}}))
        .await?;
    b.expect("SUBSCRIBED").await?;
    let (posts, end) = replay(&mut b).await?;
    ensure!(seqs(&posts) == [3, 4, 5], "{posts:?}");
    ensure!(
        posts[0]
            == json!({"type":"CHANNEL_MESSAGE","data":{"channel":channel,"from":a_id,"content":{"n":3},"seq":3},"reference":"p3"}),
        "{}",
        posts[0]
    );
    ensure!(
        end == json!({"type":"CHANNEL_HISTORY_COMPLETE","data":{"channel":channel,"replayed":3,"lastSeq":5},"reference":"h"}),
        "{end}"
    );

    // The join boundary under concurrent posting: two posters on two connectors post while
    // c joins with history; c must see every number exactly once.
    const EACH: u64 = 30;
    let mut p = Client::login(&d.ws_url(1), &unique_user()).await?;
    let other = {
        let channel = channel.clone();
        tokio::spawn(async move { post_kept(&mut p, &channel, 100, EACH).await })
    };
    for n in 200..200 + EACH / 2 {
        a.send(&json!({"type":"CHANNEL_MESSAGE","data":{"channel":channel,"content":{"n":n}}}))
            .await?;
    }
    let mut c = Client::login(&d.ws_url(0), &unique_user()).await?;
    c.send(&json!({"type":"SUBSCRIBE","data":{"channel":channel,"history":1000}}))
        .await?;
    post_kept(&mut a, &channel, 200 + EACH / 2, EACH - EACH / 2).await?;
    other.await??;
    let total = 5 + 2 * EACH;
    c.expect("SUBSCRIBED").await?;
    let (history, end) = replay(&mut c).await?;
    let replayed = seqs(&history);
    ensure!(
        replayed.windows(2).all(|w| w[0] < w[1]) && replayed.first() == Some(&1),
        "the replay is in order from the first post: {replayed:?}"
    );
    ensure!(
        end["data"]["lastSeq"] == json!(replayed.last())
            && end["data"]["replayed"] == json!(replayed.len()),
        "{end}"
    );
    let mut seen = replayed.clone();
    while (seen.len() as u64) < total {
        let f = c.expect("CHANNEL_MESSAGE").await?;
        seen.extend(seqs(std::slice::from_ref(&f)));
    }
    let late = c.sync().await?;
    ensure!(late.is_empty(), "more than every post: {late:?}");
    seen.sort_unstable();
    ensure!(
        seen == (1..=total).collect::<Vec<u64>>(),
        "every post once by number (replayed {}): {seen:?}",
        replayed.len()
    );

    // A resume from the last number seen: only what came after it.
    let mut r = Client::login(&d.ws_url(1), &unique_user()).await?;
    r.send(&json!({"type":"SUBSCRIBE","data":{"channel":channel,"after":total - 2}}))
        .await?;
    r.expect("SUBSCRIBED").await?;
    let (posts, end) = replay(&mut r).await?;
    ensure!(seqs(&posts) == [total - 1, total], "{posts:?}");
    ensure!(end["data"]["lastSeq"] == json!(total), "{end}");

    // FAST posts are neither numbered nor kept.
    b.send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"fast"}}))
        .await?;
    let f = r.expect("CHANNEL_MESSAGE").await?;
    ensure!(
        f["data"]["content"] == "fast" && f["data"].get("seq").is_none(),
        "{f}"
    );
    let mut s = Client::login(&d.ws_url(0), &unique_user()).await?;
    s.send(&json!({"type":"SUBSCRIBE","data":{"channel":channel,"history":1}}))
        .await?;
    s.expect("SUBSCRIBED").await?;
    let (posts, _) = replay(&mut s).await?;
    ensure!(seqs(&posts) == [total], "{posts:?}");
    Ok(())
}
