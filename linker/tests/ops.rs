//! The ops endpoints of every process: `/ready` answers 200 naming each engine the role uses
//! once they answer, embedded and split, and 503 naming the one that went away (Redis behind a
//! relay the test cuts, on its own processor; the shared engines are never stopped), then 200
//! again; `/metrics` shows the traffic it saw.

use std::path::Path;

use serde_json::{Value, json};
use testkit::{Client, Deployment, Embedded, Split, http_get, metric, unique_user};

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

/// `/metrics` of `addr` once `name{labels}` is at least `at_least` (a bounded poll: counters
/// of the processor move after the client saw the frame).
async fn metrics_once(addr: &str, name: &str, labels: &[&str], at_least: f64) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(addr, "/metrics").await.unwrap().1;
        if metric(&text, name, labels) >= at_least {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name}{labels:?} never reached {at_least}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_auths_frames_latency_stores_and_fetches() {
    let d = Embedded::start(bin()).await.unwrap();
    let url = d.ws_url(0);
    let (a_id, b_id, c_id) = (unique_user(), unique_user(), unique_user());
    let mut a = Client::login(&url, &a_id).await.unwrap();
    let mut b = Client::login(&url, &b_id).await.unwrap();
    let mut refused = Client::connect(&url).await.unwrap();
    let reply = refused.auth(&unique_user(), "wrong-app-id").await.unwrap();
    assert_eq!(reply["data"]["isAuthenticated"], false);

    a.message(&b_id, "hi", "RELIABLE", None).await.unwrap();
    b.expect("MESSAGE").await.unwrap();
    a.message(&b_id, "fast hi", "FAST", None).await.unwrap();
    b.expect("MESSAGE").await.unwrap();
    // To an offline user: stored, then fetched.
    a.message(&c_id, "later", "RELIABLE", None).await.unwrap();
    a.sync().await.unwrap();
    let mut c = Client::login(&url, &c_id).await.unwrap();
    c.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
        .await
        .unwrap();
    c.expect("MESSAGE").await.unwrap();
    c.expect("FETCH_MISSING_MESSAGES_COMPLETE").await.unwrap();

    let addr = d.page_addr();
    let text = metrics_once(&addr, "linker_fetched_total", &[], 1.0).await;
    let at_least = |name: &str, labels: &[&str], n: f64| {
        let v = metric(&text, name, labels);
        assert!(
            v >= n,
            "{name}{labels:?} = {v}, expected at least {n}:\n{text}"
        );
    };
    at_least("linker_connector_connections", &[], 3.0);
    at_least("linker_connector_auths_total", &["result=\"ok\""], 3.0);
    at_least("linker_connector_auths_total", &["result=\"failed\""], 1.0);
    let reliable_message = ["type=\"MESSAGE\"", "feature=\"reliable\""];
    at_least("linker_connector_frames_in_total", &reliable_message, 2.0);
    at_least("linker_connector_frames_out_total", &reliable_message, 2.0);
    let fast_message = ["type=\"MESSAGE\"", "feature=\"fast\""];
    at_least("linker_connector_frames_in_total", &fast_message, 1.0);
    at_least("linker_connector_frames_out_total", &fast_message, 1.0);
    at_least(
        "linker_connector_frames_out_total",
        &["type=\"AUTH_CLIENT_REPLY\""],
        4.0,
    );
    at_least(
        "linker_delivery_latency_seconds_count",
        &["feature=\"reliable\""],
        1.0,
    );
    at_least(
        "linker_delivery_latency_seconds_count",
        &["feature=\"fast\""],
        1.0,
    );
    assert!(
        text.contains("linker_delivery_latency_seconds_bucket"),
        "{text}"
    );
    at_least("linker_stored_total", &[], 1.0);
    // Present from the start, at 0 while the bus takes every frame.
    assert!(
        text.contains("linker_bus_publish_errors_total{feature=\"reliable\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_processor_reports_its_kafka_consumer_lag() {
    let d = Split::start(bin()).await.unwrap();
    // librdkafka reports every 5 s; each processor owns some partitions and reports its lag
    // (0 when idle), traffic or not.
    for p in &d.processors {
        let addr = p.ready("metrics").unwrap();
        let mut text = String::new();
        for _ in 0..150 {
            text = http_get(&addr, "/metrics").await.unwrap().1;
            if text.contains("linker_kafka_consumer_lag{") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            text.contains("linker_kafka_consumer_lag{processor="),
            "{text}"
        );
    }
}

/// A TCP relay to `target` on a port of its own; `stop` drops the listener and every relayed
/// connection, as if the engine behind it went away.
struct Relay {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    async fn start(port: u16, target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, tasks }
    }

    async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// `/ready` of `addr` until its status is `want` (a bounded poll); the last body.
async fn ready_becomes(addr: &str, want: u16) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, body) = ready(addr).await;
        if status == want {
            return body;
        }
        last = body;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/ready never answered {want}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_is_not_ready_while_redis_is_unreachable_and_ready_again_after() {
    let engines = testkit::split::Engines::from_env().unwrap();
    let redis = engines.redis.trim_start_matches("redis://").to_owned();
    let relay = Relay::start(0, redis.clone()).await;
    let port = relay.port;
    let dir = tempfile::tempdir().unwrap();
    let domain = format!("ready{}", std::process::id());
    let config = format!(
        "{network}\nlinker:\n  domain: {domain}\n  metrics_listen: 127.0.0.1:0\n  engines:\n    nats_url: {nats}\n    kafka_brokers: {kafka}\n    kafka_partitions: 1\n    redis_url: redis://127.0.0.1:{port}\n    mongo_url: {mongo}\n",
        network = testkit::deployment::TEST_NETWORK.replace("domain-01", &domain),
        nats = engines.nats,
        kafka = engines.kafka,
        mongo = engines.mongo,
    );
    let path = dir.path().join("linker.yaml");
    std::fs::write(&path, config).unwrap();
    let path = path.display().to_string();
    let args = ["processor", "--config", &path, "--name", "processor-01"];
    let p = testkit::process::LinkerProcess::start(bin(), &args, &dir.path().join("p.log"))
        .await
        .unwrap();
    let addr = p.ready("metrics").unwrap();
    ready_becomes(&addr, 200).await;

    relay.stop().await;
    let body = ready_becomes(&addr, 503).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["not_ready"], json!(["presence"]), "{body}");
    assert_eq!(body["engines"]["bus"], "ok", "{body}");
    assert_eq!(body["engines"]["store"], "ok", "{body}");

    // Redis is back on the same address: the process is ready again, without a restart.
    let _relay = Relay::start(port, redis).await;
    ready_becomes(&addr, 200).await;
}

#[test]
fn environment_variables_override_settings_and_bad_ones_are_refused() {
    let check = |vars: &[(&str, &str)]| {
        let mut command = std::process::Command::new(bin());
        command.args(["domain", "--check-config"]);
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    assert!(check(&[]).status.success(), "the built-in config is fine");
    let out = check(&[("LINKER_CONNECTOR__READ_BUFFER_BYTES", "abc")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.to_lowercase().contains("connector.read_buffer_bytes"),
        "names the key: {err}"
    );
    // A command-line option read from the environment: refused as a usage error (exit 2).
    let out = check(&[("LINKER_LOG_FORMAT", "xml")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("xml"), "names the value: {err}");
    let out = check(&[("LINKER_PROCESSOR__WORKERS", "3")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
