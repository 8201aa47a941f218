//! `RedisPresence` against the real Redis that `scripts/services.sh` starts: the shared
//! presence contract, expiry of sockets that are not refreshed, and what two handles (two
//! processes) see of each other. The stop/start test lives in `redis_restart.rs`.

use std::time::{Duration, Instant};

use backends::RedisPresence;
use common::ids::{ConnectorName, MessageId, SocketAddress, UserId};
use common::presence::{Presence, PresenceError};
use testkit::contracts::{self, fresh_user};

fn redis_url() -> String {
    testkit::engine::test_url("LINKER_TEST_REDIS_URL")
}

/// A namespace no other test or run shares.
fn namespace(test: &str) -> String {
    format!(
        "test-{test}-{}-{}",
        std::process::id(),
        common::now_millis()
    )
}

async fn connect(ns: &str, ttl: Duration) -> RedisPresence {
    RedisPresence::connect(&redis_url(), ns, ttl)
        .await
        .expect("Redis of scripts/services.sh answers")
}

fn socket(connector: &str, n: u64) -> SocketAddress {
    SocketAddress {
        connector: ConnectorName::new(connector),
        socket: n,
    }
}

/// Polls `lookup` until it is empty, for at most `limit`; returns how long that took.
async fn until_gone(p: &RedisPresence, user: &UserId, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if p.lookup(user).await.unwrap().is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{user} still present after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_presence_keeps_the_presence_contract() {
    let p = connect(&namespace("contract"), Duration::from_secs(30)).await;
    contracts::presence_contract(&p, true).await.unwrap();
}

#[tokio::test]
async fn a_socket_not_refreshed_disappears_after_the_presence_ttl() {
    let ttl = Duration::from_secs(1);
    let p = connect(&namespace("expiry"), ttl).await;
    let user = fresh_user();
    let added = Instant::now();
    p.add(&user, &socket("connector-01", 1)).await.unwrap();
    assert_eq!(
        p.lookup(&user).await.unwrap(),
        vec![socket("connector-01", 1)]
    );
    until_gone(&p, &user, Duration::from_secs(5)).await;
    assert!(
        added.elapsed() >= ttl - Duration::from_millis(100),
        "gone after {:?}, before the ttl of {ttl:?}",
        added.elapsed()
    );
}

#[tokio::test]
async fn a_refreshed_socket_stays_past_the_ttl_and_goes_once_refreshing_stops() {
    let ttl = Duration::from_secs(1);
    let p = connect(&namespace("refresh"), ttl).await;
    let user = fresh_user();
    let mine = [
        (user.clone(), socket("connector-01", 1)),
        (user.clone(), socket("connector-01", 2)),
    ];
    p.add(&user, &mine[0].1).await.unwrap();
    p.add(&user, &mine[1].1).await.unwrap();
    let start = Instant::now();
    while start.elapsed() < ttl * 3 {
        tokio::time::sleep(ttl / 4).await;
        assert!(
            p.refresh(&mine).await.unwrap().is_empty(),
            "a socket refreshed in time was never missing"
        );
        let mut found = p.lookup(&user).await.unwrap();
        found.sort_by_key(|s| s.socket);
        assert_eq!(found, vec![mine[0].1.clone(), mine[1].1.clone()]);
    }
    // This connector "crashes": nobody refreshes any more.
    until_gone(&p, &user, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refresh_reports_the_sockets_it_had_to_add_again() {
    let ttl = Duration::from_secs(1);
    let p = connect(&namespace("readded"), ttl).await;
    let (kept, lost) = (fresh_user(), fresh_user());
    let mine = [
        (kept.clone(), socket("connector-01", 1)),
        (lost.clone(), socket("connector-01", 2)),
    ];
    p.add(&kept, &mine[0].1).await.unwrap();
    p.add(&lost, &mine[1].1).await.unwrap();
    assert!(p.refresh(&mine).await.unwrap().is_empty());
    // The second entry disappears (as when Redis loses its data, or stays down past the ttl).
    p.remove(&lost, &mine[1].1).await.unwrap();
    assert_eq!(p.refresh(&mine).await.unwrap(), vec![1]);
    assert_eq!(p.lookup(&lost).await.unwrap(), vec![mine[1].1.clone()]);
    assert!(p.refresh(&mine).await.unwrap().is_empty());
    // Expired entries count as missing too.
    until_gone(&p, &kept, Duration::from_secs(5)).await;
    until_gone(&p, &lost, Duration::from_secs(5)).await;
    assert_eq!(p.refresh(&mine).await.unwrap(), vec![0, 1]);
}

#[tokio::test]
async fn a_crashed_connectors_channel_memberships_end_with_its_presence() {
    let ttl = Duration::from_secs(1);
    let p = connect(&namespace("crashed-members"), ttl).await;
    let (gone, stays) = (fresh_user(), fresh_user());
    let channel = common::channel::Channel::parse("ANZ/crashed").unwrap();
    let (dead, live) = (socket("connector-01", 1), socket("connector-02", 2));
    p.add(&gone, &dead).await.unwrap();
    p.add(&stays, &live).await.unwrap();
    p.join(&channel, &gone, &dead).await.unwrap();
    p.join(&channel, &stays, &live).await.unwrap();
    assert_eq!(p.members(&channel).await.unwrap().len(), 2);
    // connector-01 "crashes": it neither leaves the channel nor refreshes; connector-02 does.
    let start = Instant::now();
    while start.elapsed() < ttl * 2 {
        tokio::time::sleep(ttl / 4).await;
        p.refresh(&[(stays.clone(), live.clone())]).await.unwrap();
    }
    assert_eq!(
        p.members(&channel).await.unwrap(),
        vec![(stays.clone(), live.clone())],
        "only the refreshed socket is still a member"
    );
    // The stale entry was taken out: the socket coming back (same address) is no member.
    p.add(&gone, &dead).await.unwrap();
    assert_eq!(
        p.members(&channel).await.unwrap(),
        vec![(stays.clone(), live.clone())]
    );
}

#[tokio::test]
async fn two_handles_share_presence_and_exclude_each_other_on_the_lock() {
    let ns = namespace("two-handles");
    let ttl = Duration::from_secs(30);
    let (a, b) = (connect(&ns, ttl).await, connect(&ns, ttl).await);
    let user = fresh_user();

    a.add(&user, &socket("connector-01", 1)).await.unwrap();
    b.add(&user, &socket("connector-02", 7)).await.unwrap();
    let mut seen = b.lookup(&user).await.unwrap();
    seen.sort_by_key(|s| s.socket);
    assert_eq!(
        seen,
        vec![socket("connector-01", 1), socket("connector-02", 7)]
    );
    a.remove(&user, &socket("connector-02", 7)).await.unwrap();
    assert_eq!(
        b.lookup(&user).await.unwrap(),
        vec![socket("connector-01", 1)]
    );

    let lock_ttl = Duration::from_secs(10);
    let held = a.lock(&user, lock_ttl, Duration::ZERO).await.unwrap();
    match b.lock(&user, lock_ttl, Duration::from_millis(300)).await {
        Err(PresenceError::LockTimeout(..)) => {}
        other => panic!("a lock held by another handle must exclude: {other:?}"),
    }
    // b waits; a releases after a moment; b gets it well before a's ttl would run out.
    let waiting = Instant::now();
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.unlock(&user, held.clone()).await.unwrap();
    };
    let (taken, ()) = tokio::join!(b.lock(&user, lock_ttl, Duration::from_secs(5)), release);
    let taken = taken.expect("b takes the lock once a releases it");
    assert!(waiting.elapsed() < Duration::from_secs(3));
    // a's old token no longer releases anything: b still holds the lock.
    a.unlock(&user, held).await.unwrap();
    assert!(a.lock(&user, lock_ttl, Duration::ZERO).await.is_err());
    b.unlock(&user, taken).await.unwrap();
    assert!(a.lock(&user, lock_ttl, Duration::ZERO).await.is_ok());
}

#[tokio::test]
async fn a_lock_taken_over_after_expiry_is_left_alone_by_the_old_holder() {
    let ns = namespace("takeover");
    let ttl = Duration::from_secs(30);
    let (a, b) = (connect(&ns, ttl).await, connect(&ns, ttl).await);
    let user = fresh_user();
    let old = a
        .lock(&user, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    let new = b
        .lock(&user, Duration::from_secs(10), Duration::from_secs(3))
        .await
        .expect("the lock expires after its ttl");
    a.unlock(&user, old).await.unwrap();
    assert!(
        a.lock(&user, Duration::from_secs(10), Duration::ZERO)
            .await
            .is_err(),
        "the old holder's unlock must not release the new holder's lock"
    );
    b.unlock(&user, new).await.unwrap();
}

#[tokio::test]
async fn processed_marks_are_seen_by_a_second_handle() {
    let ns = namespace("marks");
    let ttl = Duration::from_secs(30);
    let (a, b) = (connect(&ns, ttl).await, connect(&ns, ttl).await);
    let id = MessageId::new();
    assert!(!b.is_processed(id).await.unwrap());
    a.mark_processed(id).await.unwrap();
    assert!(b.is_processed(id).await.unwrap());
    assert!(!b.is_processed(MessageId::new()).await.unwrap());
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let ttl = Duration::from_secs(30);
    let a = connect(&namespace("ns-a"), ttl).await;
    let b = connect(&namespace("ns-b"), ttl).await;
    let user = fresh_user();
    a.add(&user, &socket("connector-01", 1)).await.unwrap();
    assert!(b.lookup(&user).await.unwrap().is_empty());
    let id = MessageId::new();
    a.mark_processed(id).await.unwrap();
    assert!(!b.is_processed(id).await.unwrap());
}
