//! The ops endpoints of every process: `/ready` answers 200 naming each engine the role uses
//! once they answer, embedded and split; `/metrics` shows the traffic it saw.

use std::path::Path;

use serde_json::Value;
use testkit::{Embedded, Split, http_get};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

/// `GET /ready` on `addr`: the status and the JSON body.
async fn ready(addr: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, "/ready").await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_domain_is_ready_with_its_in_process_engines() {
    let d = Embedded::start(bin()).await.unwrap();
    let (status, body) = ready(&d.page_addr()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    for engine in ["bus", "presence", "store"] {
        assert_eq!(body["engines"][engine], "ok", "{body}");
    }
    assert_eq!(http_get(&d.page_addr(), "/health").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_processes_are_ready_once_their_engines_answer() {
    let d = Split::start(bin()).await.unwrap();
    for c in &d.connectors {
        let (status, body) = ready(&c.ready("metrics").unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["engines"]["bus"], "ok", "{body}");
        assert_eq!(body["engines"]["presence"], "ok", "{body}");
        // A connector keeps nothing: it does not use the store.
        assert!(body["engines"].get("store").is_none(), "{body}");
    }
    for p in &d.processors {
        let (status, body) = ready(&p.ready("metrics").unwrap()).await;
        assert_eq!(status, 200, "{body}");
        for engine in ["bus", "presence", "store"] {
            assert_eq!(body["engines"][engine], "ok", "{body}");
        }
    }
}
