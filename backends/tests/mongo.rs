//! `MongoStore` against the real MongoDB-protocol server that `scripts/services.sh` starts
//! (FerretDB): the shared store contract, durability across clients, and per-user order
//! when several handles (processes) write. The stop/start test lives in `mongo_restart.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use backends::MongoStore;
use common::envelope::{Confirm, StoredMessage};
use common::ids::{MessageId, UserId};
use common::store::Store;
use testkit::contracts::{self, fresh_user};

fn mongo_url() -> String {
    testkit::engine::test_url("LINKER_TEST_MONGO_URL")
}

/// A database of its own for one test; dropped when the test is done with it.
struct Database(String);

impl Database {
    fn fresh(test: &str) -> Database {
        Database(format!(
            "linker_test_{test}_{}_{}",
            std::process::id(),
            common::now_millis()
        ))
    }

    async fn store(&self) -> MongoStore {
        MongoStore::connect(&mongo_url(), &self.0)
            .await
            .expect("MongoDB of scripts/services.sh answers")
    }

    async fn drop(self) {
        if let Ok(client) = mongodb::Client::with_uri_str(mongo_url()).await {
            let _ = client.database(&self.0).drop().await;
        }
    }
}

fn message(to: &UserId, id: MessageId, created_at: u64, frame: &str) -> StoredMessage {
    StoredMessage {
        id,
        to: to.clone(),
        created_at,
        frame: frame.to_owned(),
        confirm: None,
    }
}

async fn frames(store: &MongoStore, user: &UserId) -> Vec<String> {
    let f = store.fetch(user, 0, 10_000).await.unwrap();
    assert_eq!(f.total as usize, f.messages.len());
    f.messages.into_iter().map(|m| m.message.frame).collect()
}

#[tokio::test]
async fn mongo_store_keeps_the_channel_history_contract() {
    let db = Database::fresh("channels");
    let (a, b) = (db.store().await, db.store().await);
    contracts::channel_history_contract(&a, &b).await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn mongo_store_keeps_the_store_contract() {
    let db = Database::fresh("contract");
    contracts::store_contract(&db.store().await).await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn stored_messages_survive_a_new_client() {
    let db = Database::fresh("durable");
    let user = fresh_user();
    let sender = fresh_user();
    let mut first = message(&user, MessageId::new(), 17, "first");
    first.confirm = Some(Confirm {
        to: sender.clone(),
        reference: "ref-1".into(),
    });
    let second = message(&user, MessageId::new(), 18, "second");
    {
        let store = db.store().await;
        store.persist(&first, 1000).await.unwrap();
        store.persist(&second, 1000).await.unwrap();
    }
    // A new client, as a restarted process would have.
    let store = db.store().await;
    let f = store.fetch(&user, 0, 10).await.unwrap();
    assert_eq!(f.total, 2);
    let back = &f.messages[0].message;
    assert_eq!(
        (back.id, &back.to, back.created_at, back.frame.as_str()),
        (first.id, &user, 17, "first")
    );
    let confirm = back.confirm.as_ref().expect("confirmation kept");
    assert_eq!(
        (&confirm.to, confirm.reference.as_str()),
        (&sender, "ref-1")
    );
    assert_eq!(f.messages[1].message.id, second.id);
    assert!(f.messages[1].message.confirm.is_none());
    db.drop().await;
}

#[tokio::test]
async fn order_holds_for_messages_persisted_in_the_same_millisecond_by_two_handles() {
    let db = Database::fresh("order");
    let (a, b) = (db.store().await, db.store().await);
    let user = fresh_user();
    // One timestamp for all, and ids that sort the opposite way: only the persist order may
    // decide the fetch order.
    let now = common::now_millis();
    let sent: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    for (i, frame) in sent.iter().enumerate() {
        let id = MessageId(uuid::Uuid::from_u128(u128::MAX - i as u128));
        let handle = if i % 2 == 0 { &a } else { &b };
        handle
            .persist(&message(&user, id, now, frame), 1000)
            .await
            .unwrap();
    }
    assert_eq!(frames(&a, &user).await, sent);
    assert_eq!(frames(&b, &user).await, sent);
    // Fetched in pages, removed as delivered, the rest keeps its order.
    let page = a.fetch(&user, 0, 5).await.unwrap();
    assert_eq!(page.total, 20);
    for m in &page.messages {
        b.remove(&user, m.message.id).await.unwrap();
    }
    assert_eq!(frames(&a, &user).await, sent[5..]);
    // New messages go after the ones still stored.
    b.persist(&message(&user, MessageId::new(), now, "late"), 1000)
        .await
        .unwrap();
    assert_eq!(
        frames(&a, &user).await.last().map(String::as_str),
        Some("late")
    );
    db.drop().await;
}

#[tokio::test]
async fn concurrent_writers_for_one_user_store_each_message_once_in_each_writers_order() {
    let db = Database::fresh("race");
    let user = fresh_user();
    let per_writer = 25;
    let mut writers = tokio::task::JoinSet::new();
    let mut redelivered = Vec::new();
    for w in 0..3 {
        let store = Arc::new(db.store().await);
        let messages: Vec<_> = (0..per_writer)
            .map(|i| message(&user, MessageId::new(), 0, &format!("w{w}-{i:02}")))
            .collect();
        redelivered.push((store.clone(), messages[per_writer / 2].clone()));
        writers.spawn(async move {
            for m in &messages {
                store.persist(m, 1000).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    // A redelivery through another handle is stored once.
    let (store, m) = &redelivered[0];
    redelivered[1].0.persist(m, 1000).await.unwrap();
    let all = frames(store, &user).await;
    assert_eq!(all.len(), 3 * per_writer, "each message once: {all:?}");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
    for w in 0..3 {
        let mine: Vec<_> = all
            .iter()
            .filter(|f| f.starts_with(&format!("w{w}-")))
            .cloned()
            .collect();
        let expected: Vec<_> = (0..per_writer).map(|i| format!("w{w}-{i:02}")).collect();
        assert_eq!(mine, expected, "writer {w}'s messages in its order");
    }
    db.drop().await;
}

#[tokio::test]
async fn a_fetch_with_limit_zero_returns_only_the_total() {
    let db = Database::fresh("limit0");
    let store = db.store().await;
    let user = fresh_user();
    for i in 0..3 {
        store
            .persist(&message(&user, MessageId::new(), i, "x"), 1000)
            .await
            .unwrap();
    }
    let f = store.fetch(&user, 0, 0).await.unwrap();
    assert_eq!((f.total, f.messages.len()), (3, 0));
    db.drop().await;
}

#[tokio::test]
async fn a_store_written_before_counters_numbers_past_its_highest_number() {
    let db = Database::fresh("upgrade");
    let store = db.store().await;
    let user = fresh_user();
    // What an earlier version left: messages 1 and 2 kept, and a tombstone holding number 5
    // (its highest message was acknowledged), with no counter document.
    let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
    let messages = client
        .database(&db.0)
        .collection::<mongodb::bson::Document>("messages");
    for (seq, gone) in [(1_i64, false), (2, false), (5, true)] {
        let id = MessageId::new();
        messages
            .insert_one(mongodb::bson::doc! {
                "_id": format!("{user}/{id}"), "to": user.as_str(), "seq": seq,
                "id": id.to_string(), "created_at": 1_i64,
                "frame": if gone { String::new() } else { format!("old-{seq}") }, "gone": gone,
            })
            .await
            .unwrap();
    }
    let kept = store
        .persist(&message(&user, MessageId::new(), 2, "new"), 3)
        .await
        .unwrap();
    assert_eq!(
        kept,
        common::store::Persisted::Kept(6),
        "past the tombstone's 5"
    );
    assert_eq!(frames(&store, &user).await, ["old-1", "old-2", "new"]);
    // The bound counts what the earlier version kept: 3 are kept, a fourth is refused.
    let full = store
        .persist(&message(&user, MessageId::new(), 3, "over"), 3)
        .await
        .unwrap();
    assert_eq!(full, common::store::Persisted::Full);
    db.drop().await;
}

#[tokio::test]
async fn a_counter_set_back_never_numbers_a_writers_next_message_lower() {
    // FerretDB's findAndModify is a read then a write: a writer with a stale read sets the
    // counter back. This sets it back on purpose, below numbers this handle gave and below
    // one another handle gave meanwhile, with free numbers below them (numbers drawn by
    // writers that then failed).
    let db = Database::fresh("setback");
    let (store, other) = (db.store().await, db.store().await);
    let user = fresh_user();
    let counters = mongodb::Client::with_uri_str(mongo_url())
        .await
        .unwrap()
        .database(&db.0)
        .collection::<mongodb::bson::Document>("message_counters");
    let set_counter = |seq: i64| {
        counters.update_one(
            mongodb::bson::doc! { "_id": user.as_str() },
            mongodb::bson::doc! { "$set": { "seq": seq } },
        )
    };
    let mut numbers = Vec::new();
    for i in 0..3 {
        if i == 2 {
            set_counter(10).await.unwrap(); // numbers 3 to 10 stay free
        }
        let kept = store
            .persist(&message(&user, MessageId::new(), i, &format!("a{i}")), 1000)
            .await
            .unwrap();
        numbers.push(kept);
    }
    let common::store::Persisted::Kept(third) = numbers[2] else {
        panic!("kept: {numbers:?}");
    };
    let taken = other
        .persist(&message(&user, MessageId::new(), 3, "b0"), 1000)
        .await
        .unwrap();
    assert_eq!(taken, common::store::Persisted::Kept(third + 1));
    set_counter(1).await.unwrap();
    let next = store
        .persist(&message(&user, MessageId::new(), 4, "a3"), 1000)
        .await
        .unwrap();
    assert_eq!(
        next,
        common::store::Persisted::Kept(third + 2),
        "past its own {third} and the other handle's {}",
        third + 1
    );
    assert_eq!(frames(&store, &user).await, ["a0", "a1", "a2", "b0", "a3"]);
    db.drop().await;
}
