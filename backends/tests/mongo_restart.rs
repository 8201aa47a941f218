//! `MongoStore` across a stop and start of the MongoDB-protocol server of
//! `scripts/services.sh`: calls fail with `Unavailable` within a bound while it is down, and
//! the same handle works again once it is back, with what was stored before still there. Its
//! own test binary, so the stop does not disturb the other MongoDB tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use backends::MongoStore;
use common::envelope::StoredMessage;
use common::ids::MessageId;
use common::store::{Store, StoreError};
use testkit::contracts::fresh_user;

fn mongo_url() -> String {
    testkit::engine::test_url("LINKER_TEST_MONGO_URL")
}

fn services(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let status = Command::new("bash")
        .arg(&script)
        .args([action, "mongo"])
        .status()
        .expect("scripts/services.sh runs");
    assert!(
        status.success(),
        "scripts/services.sh {action} mongo failed"
    );
}

/// Starts the server again however the test ends, so no later test finds it stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        services("start");
    }
}

#[tokio::test]
async fn a_stopped_mongo_gives_unavailable_and_the_same_handle_works_after_restart() {
    let database = format!(
        "linker_test_restart_{}_{}",
        std::process::id(),
        common::now_millis()
    );
    let store = MongoStore::connect(&mongo_url(), &database)
        .await
        .expect("MongoDB of scripts/services.sh answers");
    let user = fresh_user();
    let message = |frame: &str| StoredMessage {
        id: MessageId::new(),
        to: user.clone(),
        created_at: common::now_millis(),
        frame: frame.to_owned(),
        confirm: None,
    };
    let before = message("before");
    store.persist(&before, 1000).await.unwrap();

    let restart = RestartOnDrop;
    services("stop");
    for call in ["fetch", "persist", "remove"] {
        let start = Instant::now();
        let result = match call {
            "fetch" => store.fetch(&user, 0, 10).await.map(drop),
            "persist" => store.persist(&message("while down"), 1000).await.map(drop),
            _ => store.remove(&user, before.id).await,
        };
        let took = start.elapsed();
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{call} with MongoDB down: {result:?}"
        );
        assert!(
            took < Duration::from_secs(6),
            "{call} took {took:?} to fail"
        );
        eprintln!("{call} with MongoDB down failed after {took:?}: {result:?}");
    }

    drop(restart);
    // Same handle, no reconnect by hand: it works again within a bounded time.
    let back = Instant::now();
    let after = message("after");
    loop {
        match store.persist(&after, 1000).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "still failing {:?} after restart: {e}",
                    back.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("working again {:?} after the restart", back.elapsed());
    let f = store.fetch(&user, 0, 10).await.unwrap();
    let frames: Vec<_> = f
        .messages
        .iter()
        .map(|m| m.message.frame.as_str())
        .collect();
    assert_eq!(
        frames,
        ["before", "after"],
        "stored data outlives the restart"
    );
    store.remove(&user, before.id).await.unwrap();
    store.remove(&user, after.id).await.unwrap();
    if let Ok(client) = mongodb::Client::with_uri_str(mongo_url()).await {
        let _ = client.database(&database).drop().await;
    }
}
