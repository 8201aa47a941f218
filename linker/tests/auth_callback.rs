//! The client app's auth callback, against a real HTTP endpoint started by the test: every
//! answer the endpoint can give maps to a clear `AUTH_CLIENT_REPLY`, and none leaves a socket
//! stuck in "authenticating"; the channel URL form asks it the same way.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use testkit::client::Ended;
use testkit::{Client, Deployment, Embedded, EmbeddedOptions};

/// The endpoint answers by the user's number: each number is one behaviour.
async fn auth(calls: Arc<AtomicUsize>, Json(req): Json<Value>) -> Response {
    calls.fetch_add(1, Ordering::SeqCst);
    let user = req["userId"].as_str().unwrap_or_default().to_owned();
    let app = req["appId"].clone();
    let token = req["token"].as_str().unwrap_or_default();
    let number = user.split('-').nth(1).unwrap_or_default();
    let yes = json!({"appId": app, "userId": user, "isAuthenticated": true});
    match number {
        "1" if token == "good" => Json(yes).into_response(),
        "1" => {
            Json(json!({"appId": app, "userId": user, "isAuthenticated": false})).into_response()
        }
        "2" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(yes).into_response()
        }
        "3" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "4" => "this is not json".into_response(),
        "5" => Json(json!({"appId": app, "userId": "CBA-999", "isAuthenticated": true}))
            .into_response(),
        "6" => Json(json!({"appId": app, "userId": user, "isAuthenticated": null})).into_response(),
        "7" => Json(json!({"appId": app, "userId": user})).into_response(),
        _ => Json(yes).into_response(),
    }
}

fn network(auth_port: u16, dead_port: u16) -> String {
    format!(
        r#"
domains:
  - name: domain-01
    urls: [ws://127.0.0.1:8088]
clientApps:
  - appName: CBA
    appId: cba-1
    masterUserId: CBA-100
    authEnabled: true
    authUrl: http://127.0.0.1:{auth_port}/auth
    channels: {{policy: open}}
  - appName: CACHED
    appId: cached-1
    authEnabled: true
    authCacheSeconds: 60
    authUrl: http://127.0.0.1:{auth_port}/auth
  - appName: DEAD
    appId: dead-1
    authEnabled: true
    authUrl: http://127.0.0.1:{dead_port}/auth
"#
    )
}

/// The auth endpoint (counting its calls) and a domain whose apps use it.
async fn domain_with_callback() -> (Embedded, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route("/auth", post(move |body| auth(c.clone(), body)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);

    let options = EmbeddedOptions {
        network_yaml: Some(network(port, dead_port)),
        extra_connector_yaml: "    auth_callback_timeout_ms: 800\n".into(),
        auth_deadline_ms: 10_000,
        ..EmbeddedOptions::default()
    };
    let d = Embedded::start_with(Path::new(env!("CARGO_BIN_EXE_linker")), options)
        .await
        .unwrap();
    (d, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_url_form_asks_the_callback_with_its_token() {
    use testkit::plain_client::{PlainClient, plain_url};
    let (d, calls) = domain_with_callback().await;
    let url = |token: &str| {
        let path = format!("/channels/room/users/CBA-1?appId=cba-1&token={token}");
        plain_url(&d.ws_url(0), &path)
    };
    let mut refused = PlainClient::connect(&url("bad")).await.unwrap();
    let (frame, _) = refused.closed().await.unwrap();
    let frame = frame.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(frame.reason.contains("AUTH_REJECTED"), "{frame:?}");
    let mut p = PlainClient::connect(&url("good")).await.unwrap();
    p.send("in").await.unwrap();
    assert_eq!(p.next().await.unwrap(), "in", "joined CBA/room and posted");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one callback per login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_callback_answer_gives_a_clear_auth_reply() {
    let (d, calls) = domain_with_callback().await;

    let cases = [
        ("cba-1", "CBA-1", "good", true, None),
        ("cba-1", "CBA-1", "bad", false, Some("AUTH_REJECTED")),
        ("cba-1", "CBA-2", "t", false, Some("AUTH_CALLBACK_TIMEOUT")),
        ("cba-1", "CBA-3", "t", false, Some("AUTH_CALLBACK_STATUS")),
        (
            "cba-1",
            "CBA-4",
            "t",
            false,
            Some("AUTH_CALLBACK_BAD_REPLY"),
        ),
        (
            "cba-1",
            "CBA-5",
            "t",
            false,
            Some("AUTH_CALLBACK_BAD_REPLY"),
        ),
        (
            "cba-1",
            "CBA-6",
            "t",
            false,
            Some("AUTH_CALLBACK_BAD_REPLY"),
        ),
        (
            "cba-1",
            "CBA-7",
            "t",
            false,
            Some("AUTH_CALLBACK_BAD_REPLY"),
        ),
        (
            "dead-1",
            "DEAD-1",
            "t",
            false,
            Some("AUTH_CALLBACK_UNREACHABLE"),
        ),
        // The static checks come first: no callback for a wrong appId.
        ("wrong", "CBA-1", "good", false, Some("APP_ID_MISMATCH")),
    ];
    for (app_id, user, token, ok, reason) in cases {
        let mut c = Client::connect(&d.ws_url(0)).await.unwrap();
        c.send(&json!({"type":"AUTH_CLIENT","data":{"appId":app_id,"userId":user,"token":token}}))
            .await
            .unwrap();
        let r = c.expect("AUTH_CLIENT_REPLY").await.unwrap();
        assert_eq!(
            r["data"]["isAuthenticated"],
            json!(ok),
            "{user} {token}: {r}"
        );
        assert_eq!(r["data"]["reason"].as_str(), reason, "{user} {token}: {r}");
        if !ok {
            assert!(
                matches!(c.ended().await.unwrap(), (Ended::Closed(Some(_)), _)),
                "{user}: a refused socket is closed"
            );
        }
    }

    // A cached "yes" is reused for the same user and token.
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        Client::login_app(&d.ws_url(0), "CACHED-5000", "cached-1")
            .await
            .unwrap()
            .close()
            .await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        1,
        "one call for three logins"
    );
}
