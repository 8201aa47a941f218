//! `wss://`: the connector serves TLS itself with a certificate and key from its config.

use std::path::Path;

use serde_json::json;
use testkit::{Client, Deployment, Embedded, EmbeddedOptions, unique_user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_round_trips_over_wss_with_a_test_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let options = EmbeddedOptions {
        extra_connector_yaml: format!(
            "    tls:\n      cert_path: {}\n      key_path: {}\n",
            cert_path.display(),
            key_path.display()
        ),
        ..EmbeddedOptions::default()
    };
    let d = Embedded::start_with(Path::new(env!("CARGO_BIN_EXE_linker")), options)
        .await
        .unwrap();
    let url = d.ws_url(0).replace("ws://", "wss://");
    let root = cert.cert.der().to_vec();

    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::connect_tls(&url, &root).await.unwrap();
    let r = a.auth(&a_id, "app-id-343").await.unwrap();
    assert_eq!(r["data"]["isAuthenticated"], true);
    a.user = a_id.clone();
    let mut b = Client::connect_tls(&url, &root).await.unwrap();
    b.auth(&b_id, "app-id-343").await.unwrap();
    a.message(&b_id, "over tls", "RELIABLE", Some("t1"))
        .await
        .unwrap();
    let m = b.expect("MESSAGE").await.unwrap();
    assert_eq!(
        m,
        json!({"type":"MESSAGE","data":{"from":a_id,"content":"over tls"},"reference":"t1"})
    );
    a.expect("MESSAGE_CONFIRMATION").await.unwrap();

    // A plain ws:// client gets no WebSocket from a TLS port.
    assert!(Client::connect(&d.ws_url(0)).await.is_err());
}
