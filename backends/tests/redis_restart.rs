//! `RedisPresence` across a stop and start of the Redis of `scripts/services.sh`: calls fail
//! with `Unavailable` within a bound while it is down, and the same handle works again once
//! it is back. Its own test binary, so the stop does not disturb the other Redis tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use backends::RedisPresence;
use common::ids::{ConnectorName, MessageId, SocketAddress};
use common::presence::{Presence, PresenceError};
use testkit::contracts::fresh_user;

fn redis_url() -> String {
    testkit::engine::test_url("LINKER_TEST_REDIS_URL")
}

fn services(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let status = Command::new("bash")
        .arg(&script)
        .args([action, "redis"])
        .status()
        .expect("scripts/services.sh runs");
    assert!(
        status.success(),
        "scripts/services.sh {action} redis failed"
    );
}

/// Starts Redis again however the test ends, so no later test finds it stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        services("start");
    }
}

#[tokio::test]
async fn a_stopped_redis_gives_unavailable_and_the_same_handle_works_after_restart() {
    let ns = format!(
        "test-restart-{}-{}",
        std::process::id(),
        common::now_millis()
    );
    let p = RedisPresence::connect(&redis_url(), &ns, Duration::from_secs(30))
        .await
        .expect("Redis of scripts/services.sh answers");
    let user = fresh_user();
    let socket = SocketAddress {
        connector: ConnectorName::new("connector-01"),
        socket: 1,
    };
    p.add(&user, &socket).await.unwrap();

    let restart = RestartOnDrop;
    services("stop");
    for call in ["lookup", "add", "lock", "is_processed"] {
        let start = Instant::now();
        let result = match call {
            "lookup" => p.lookup(&user).await.map(drop),
            "add" => p.add(&user, &socket).await,
            "lock" => p
                .lock(&user, Duration::from_secs(5), Duration::from_secs(1))
                .await
                .map(drop),
            _ => p.is_processed(MessageId::new()).await.map(drop),
        };
        let took = start.elapsed();
        assert!(
            matches!(result, Err(PresenceError::Unavailable(_))),
            "{call} with Redis down: {result:?}"
        );
        assert!(
            took < Duration::from_secs(4),
            "{call} took {took:?} to fail"
        );
        eprintln!("{call} with Redis down failed after {took:?}: {result:?}");
    }

    drop(restart);
    // Same handle, no reconnect by hand: it works again within a bounded time.
    let back = Instant::now();
    loop {
        match p.add(&user, &socket).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(20),
                    "still failing {:?} after restart: {e}",
                    back.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("working again {:?} after the restart", back.elapsed());
    assert_eq!(p.lookup(&user).await.unwrap(), vec![socket]);
    let id = MessageId::new();
    p.mark_processed(id).await.unwrap();
    assert!(p.is_processed(id).await.unwrap());
}
