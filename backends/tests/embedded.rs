//! The backend contracts on the embedded defaults.

use std::sync::Arc;

use backends::{EmbeddedStore, MemoryBus, MemoryPresence};
use testkit::contracts;

#[tokio::test]
async fn memory_bus_keeps_the_bus_contract() {
    contracts::bus_contract(Arc::new(MemoryBus::default()), "connector-01")
        .await
        .unwrap();
}

#[tokio::test]
async fn embedded_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    contracts::store_contract(&store).await.unwrap();
}

#[tokio::test]
async fn embedded_store_keeps_the_channel_history_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    contracts::channel_history_contract(&store, &store)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_presence_keeps_the_presence_contract() {
    contracts::presence_contract(&MemoryPresence::new(), true)
        .await
        .unwrap();
}
