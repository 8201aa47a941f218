//! Crash tests of a split deployment under a steady RELIABLE load: a processor SIGKILLed
//! mid-stream loses nothing and duplicates nothing; a SIGKILLed connector's users get what
//! was sent to them once they reconnect elsewhere; a crash matrix (processor SIGKILL,
//! connector SIGKILL, processor SIGTERM, each restarted, and the meta-server every process
//! follows SIGKILLed and restarted; NATS and MongoDB each stopped and started again), where
//! acking receivers get every message, never twice on one socket, in each sender's order, and
//! an original-protocol receiver gets every message at least once; and the same checks with
//! careful senders, which resend with the same reference what was not accepted: a rolling
//! restart (every connector, then every processor, SIGTERM and start again), and Kafka, then
//! Redis, stopped and started again. Every message is counted. A test that stops an
//! engine runs alone (`ENGINES`): the others would see it go.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use testkit::{Client, Deployment, Split, SplitOptions, StoppedEngine, unique_user};

/// Taken for writing by a test that stops engines, for reading by the others.
static ENGINES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_loses_and_duplicates_nothing() {
    let _engines = ENGINES.read().await;
    let mut d = Split::start(bin()).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    let mut b = Client::login(&d.ws_url(1), &b_id).await.unwrap();
    const TOTAL: usize = 300;
    let receiver = tokio::spawn(async move {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        while seen.len() < TOTAL {
            let f = match b.next().await {
                Ok(f) => f,
                Err(_) => break, // nothing more within the wait
            };
            if f["type"] == "MESSAGE" {
                let c = f["data"]["content"].as_str().unwrap_or_default().to_owned();
                order.push(c.clone());
                *seen.entry(c).or_default() += 1;
            }
        }
        // Anything late (a duplicate) would show up in a barrier round trip.
        let extra = b.sync().await.unwrap_or_default();
        (seen, order, extra)
    });
    for i in 0..TOTAL {
        a.message(&b_id, &format!("m{i:04}"), "RELIABLE", None)
            .await
            .unwrap();
        if i == TOTAL / 3 {
            d.processors[0].kill().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (seen, order, extra) = receiver.await.unwrap();
    let lost: Vec<_> = (0..TOTAL)
        .map(|i| format!("m{i:04}"))
        .filter(|c| !seen.contains_key(c))
        .collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "sent {TOTAL}, received {}, lost {}, duplicated {}",
        order.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}\n{}", d.diagnostics());
    assert!(duplicated.is_empty(), "duplicated {duplicated:?}");
    assert!(extra.iter().all(|f| f["type"] != "MESSAGE"), "{extra:?}");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "one sender's messages arrive in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connectors_users_fetch_what_was_sent_to_them_elsewhere() {
    let _engines = ENGINES.read().await;
    let options = SplitOptions {
        presence_ttl_ms: 2_000,
        ..SplitOptions::default()
    };
    let mut d = Split::start_with(bin(), options).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    let _b = Client::login(&d.ws_url(1), &b_id).await.unwrap();
    d.connectors[1].kill().await.unwrap();
    for i in 0..20 {
        a.message(&b_id, &format!("k{i:02}"), "RELIABLE", None)
            .await
            .unwrap();
    }
    a.sync().await.unwrap();
    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":100}}))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
            assert_eq!(f["data"]["leftMissingCount"], 0);
            break;
        }
        got.push(f["data"]["content"].as_str().unwrap_or_default().to_owned());
    }
    let expected: Vec<_> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(got, expected, "{}", d.diagnostics());
}

/// What one receiver saw: every MESSAGE content in arrival order, and how many times a content
/// came again on the same socket (never allowed) or after a reconnect.
#[derive(Default, Debug)]
struct Seen {
    first: Vec<String>,
    count: HashMap<String, usize>,
    ids: HashMap<String, String>,
    again_same_socket: usize,
    again_after_reconnect: usize,
    reconnects: usize,
    /// What went wrong at the end, if anything (reported after the counts).
    end: Option<String>,
}

/// Logs in to the first connector that takes the login, trying for up to 30 s.
async fn login_anywhere(
    urls: &std::sync::Mutex<Vec<String>>,
    user: &str,
    ack: bool,
) -> anyhow::Result<Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let candidates = urls.lock().expect("urls lock").clone();
        for url in candidates {
            let login = if ack {
                Client::login_ack(&url, user).await
            } else {
                Client::login(&url, user).await
            };
            if let Ok(c) = login {
                return Ok(c);
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{user} could not log in anywhere"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Receives until `expected` distinct messages came (or 240 s passed), reconnecting wherever it
/// can when its socket dies. An acking receiver acknowledges each numbered frame at once; an
/// original one fetches after each login and whenever nothing came for a second.
async fn receive(
    urls: Arc<std::sync::Mutex<Vec<String>>>,
    user: String,
    ack: bool,
    expected: usize,
) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    let mut on_socket: HashMap<String, ()> = HashMap::new();
    // Past the senders' own limit (a slow engine restart), so nothing still coming is missed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut c = login_anywhere(&urls, &user, ack).await?;
    let fetch = json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":2000}});
    if !ack {
        c.send(&fetch).await?;
    }
    while seen.first.len() < expected && tokio::time::Instant::now() < deadline {
        let frame = match tokio::time::timeout(Duration::from_secs(1), c.next()).await {
            Err(_) => {
                if !ack {
                    c.send(&fetch).await?;
                }
                continue;
            }
            Ok(Ok(f)) => f,
            Ok(Err(_)) => {
                seen.reconnects += 1;
                on_socket.clear();
                c = login_anywhere(&urls, &user, ack).await?;
                if !ack {
                    c.send(&fetch).await?;
                }
                continue;
            }
        };
        if frame["type"] != "MESSAGE" {
            continue;
        }
        let content = frame["data"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if ack {
            let id = frame["id"].as_str().unwrap_or_default().to_owned();
            anyhow::ensure!(
                !id.is_empty(),
                "an acking socket got an unnumbered frame: {frame}"
            );
            if let Some(before) = seen.ids.insert(content.clone(), id.clone()) {
                anyhow::ensure!(before == id, "{content} came with two ids");
            }
            c.ack(&[&frame]).await?;
        }
        let n = seen.count.entry(content.clone()).or_default();
        *n += 1;
        if *n == 1 {
            seen.first.push(content.clone());
        } else if on_socket.contains_key(&content) {
            seen.again_same_socket += 1;
        } else {
            seen.again_after_reconnect += 1;
        }
        on_socket.insert(content, ());
    }
    if ack && seen.first.len() == expected {
        // Everything was acknowledged: a new login resends no message (sync markers whose
        // acknowledgement was still on its way may come back).
        if let Err(e) = resends_nothing(c, &urls, &user).await {
            seen.end = Some(format!("{e:#}"));
        }
    }
    Ok(seen)
}

/// After a barrier, a new acking login of `user` gets no message again.
async fn resends_nothing(
    mut c: Client,
    urls: &std::sync::Mutex<Vec<String>>,
    user: &str,
) -> anyhow::Result<()> {
    {
        // Frames still on their way (a resume resends what an ACK lost with a dead connector
        // did not cover) are acknowledged, as a client would, until a barrier brings none.
        for _ in 0..10 {
            let late = c.sync().await?;
            let numbered: Vec<&serde_json::Value> =
                late.iter().filter(|f| f["id"].is_string()).collect();
            if numbered.is_empty() {
                break;
            }
            c.ack(&numbered).await?;
        }
        c.close().await;
        let mut again = login_anywhere(urls, user, true).await?;
        loop {
            let f = again.next().await?;
            if f["type"] == "RESUME_COMPLETE" {
                break;
            }
            let content = f["data"]["content"].as_str().unwrap_or_default();
            anyhow::ensure!(
                content.starts_with("sync-"),
                "{user}: an acknowledged message was resent: {f}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_acking_receivers_get_each_message_once_and_in_order() {
    let _engines = ENGINES.read().await;
    use Event::*;
    let events = [
        (20, KillProcessor(0)),
        (35, RestartProcessor(0)),
        (50, KillConnector(1)),
        (65, RestartConnector(1)),
        (80, TerminateProcessor(1)),
        (95, RestartProcessor(1)),
        // Down across a processor's and a connector's restart: they start without it.
        (30, KillMetaServer),
        (70, RestartMetaServer),
    ];
    let d = matrix(&events).await;
    // Every process follows the meta-server: each noticed it was gone.
    for p in d.processors.iter().chain(&d.connectors) {
        assert!(
            p.log().contains("meta-server unreachable"),
            "a process did not poll the meta-server:\n{}",
            p.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_mongodb_restarts_lose_repeat_and_reorder_nothing() {
    let _engines = ENGINES.write().await;
    use Event::*;
    let events = [
        (20, StopEngine("nats")),
        (40, StartEngine),
        (60, StopEngine("mongo")),
        (80, StartEngine),
    ];
    matrix(&events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_repeats_and_reorders_nothing() {
    let _engines = ENGINES.read().await;
    use Event::*;
    // One process after the other, each stopped with SIGTERM and started again, while the load
    // runs: both connectors, then both processors.
    let events = [
        (8, RollConnector(1)),
        (20, RollConnector(0)),
        (32, RollProcessor(0)),
        (44, RollProcessor(1)),
    ];
    careful(&events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_restart_loses_repeats_and_reorders_nothing() {
    let _engines = ENGINES.write().await;
    use Event::*;
    // While Kafka is down nothing RELIABLE is accepted: the senders are told and send again.
    careful(&[(10, StopEngine("kafka")), (20, StartEngine)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_repeats_and_reorders_nothing() {
    let _engines = ENGINES.write().await;
    use Event::*;
    // Redis stays down past the presence ttl: when it is back, the connected receivers look
    // offline until their connector's next refresh, which closes the acking ones (4005) so
    // they resume what was kept meanwhile.
    careful(&[(10, StopEngine("redis")), (20, StartEngine)]).await;
}

/// As `matrix`, with careful senders (`send_accepted`): each message waits for
/// `MESSAGE_ACCEPTED` and is sent again, with the same reference, when it was refused or its
/// connector went away. `events` happen when sender 0 reaches their round.
async fn careful(events: &[(usize, Event)]) {
    let options = SplitOptions {
        presence_ttl_ms: 2_000,
        ..SplitOptions::default()
    };
    let mut d = Split::start_with(bin(), options).await.unwrap();
    let urls = Arc::new(std::sync::Mutex::new(vec![d.ws_url(1), d.ws_url(0)]));
    let receivers = [
        (unique_user(), true),
        (unique_user(), true),
        (unique_user(), false),
    ];
    const PER_PAIR: usize = 60;
    let mut tasks = Vec::new();
    for (user, ack) in &receivers {
        tasks.push(tokio::spawn(receive(
            urls.clone(),
            user.clone(),
            *ack,
            2 * PER_PAIR,
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = receivers.iter().map(|(u, _)| u.clone()).collect();
    let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender_urls = Arc::new(std::sync::Mutex::new(vec![d.ws_url(0), d.ws_url(1)]));
    let sending: Vec<_> = (0..2)
        .map(|si| {
            let (urls, to, rounds) = (sender_urls.clone(), to.clone(), rounds.clone());
            tokio::spawn(send_accepted(urls, si, to, PER_PAIR, rounds))
        })
        .collect();
    let mut stopped = Vec::new();
    for &(at, event) in events {
        // While an engine is down the senders may not get far: it comes back after 3 s at most.
        let patience = tokio::time::Instant::now() + Duration::from_secs(3);
        while rounds.load(std::sync::atomic::Ordering::Relaxed) < at {
            if sending.iter().any(|s| s.is_finished()) {
                break; // one failed (reported below), or all is sent
            }
            if !stopped.is_empty() && tokio::time::Instant::now() > patience {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let round = rounds.load(std::sync::atomic::Ordering::Relaxed);
        println!("round {round} (planned {at}): {event:?}");
        apply(&mut d, event, &mut stopped, &[&urls, &sender_urls]).await;
    }
    for s in sending {
        let resent = s
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", d.diagnostics()));
        println!(
            "a sender sent {resent} messages again (refused, or not accepted before its socket died)"
        );
    }
    check(&d, &receivers, tasks, 2, PER_PAIR).await;
}

/// Sender `si` sends `s{si}-{n}` to each of `to`, n in 0..per_pair, RELIABLE with a reference,
/// one at a time: the next only once the server answered `MESSAGE_ACCEPTED`. When its socket
/// dies it logs in again (acking) on a connector in `urls` and sends the same message with
/// the same reference, which the server recognises if it had it already; refused because an
/// engine is unavailable, it sends it again a moment later. Counts the resends;
/// sender 0 counts the rounds in `rounds`.
async fn send_accepted(
    urls: Arc<std::sync::Mutex<Vec<String>>>,
    si: usize,
    to: Vec<String>,
    per_pair: usize,
    rounds: Arc<std::sync::atomic::AtomicUsize>,
) -> anyhow::Result<usize> {
    let user = unique_user();
    let mut c = login_anywhere(&urls, &user, true).await?;
    let mut resent = 0;
    for n in 0..per_pair {
        for r in &to {
            let content = format!("s{si}-{n:04}");
            let reference = format!("{r}-{content}");
            // An engine's restart can take a while (Kafka's, after a stop that hung, has taken
            // more than a minute): a sender keeps trying for longer than that.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
            'accepted: loop {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{content} to {r} never accepted"
                );
                if c.message(r, &content, "RELIABLE", Some(&reference))
                    .await
                    .is_ok()
                {
                    loop {
                        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
                            Ok(Ok(f)) if f["type"] == "MESSAGE_ACCEPTED" => {
                                if f["data"]["reference"] == reference.as_str() {
                                    break 'accepted;
                                }
                            }
                            Ok(Ok(f)) if f["type"] == "GENERAL_ERROR" => {
                                let reason = f["data"]["reason"].as_str().unwrap_or_default();
                                anyhow::ensure!(
                                    reason.ends_with("_UNAVAILABLE"),
                                    "{content} to {r} refused: {f}"
                                );
                                // An engine is down: the same message again, a moment later.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                resent += 1;
                                continue 'accepted;
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) | Err(_) => break,
                        }
                    }
                }
                resent += 1;
                c = login_anywhere(&urls, &user, true).await?;
            }
        }
        if si == 0 {
            rounds.store(n + 1, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(resent)
}

/// What happens to the deployment at a given round of the load.
#[derive(Debug, Clone, Copy)]
enum Event {
    KillProcessor(usize),
    TerminateProcessor(usize),
    RestartProcessor(usize),
    KillConnector(usize),
    RestartConnector(usize),
    /// Stops a test engine (the processes keep running and retry) ...
    StopEngine(&'static str),
    /// ... and starts the one stopped last.
    StartEngine,
    /// SIGKILLs the meta-server the processes poll for their network ...
    KillMetaServer,
    /// ... and starts it again on its port.
    RestartMetaServer,
    /// Stops a connector with SIGTERM (it must exit 0) and starts it again (on a new port).
    RollConnector(usize),
    /// Stops a processor with SIGTERM (it must exit 0) and starts it again.
    RollProcessor(usize),
}

/// Two senders on connector 0 send RELIABLE messages to two acking receivers and one of the
/// original protocol (all logged in first on connector 1), one round every 10 ms, while
/// `events` happen at their rounds. Then: every receiver got every message, acking ones
/// never twice on one socket, in each sender's order, and nothing acknowledged comes back.
/// Every process follows a meta-server. Returns the deployment, for more checks.
async fn matrix(events: &[(usize, Event)]) -> Split {
    let options = SplitOptions {
        presence_ttl_ms: 2_000,
        meta_server: true,
        ..SplitOptions::default()
    };
    let mut d = Split::start_with(bin(), options).await.unwrap();
    let urls = Arc::new(std::sync::Mutex::new(vec![d.ws_url(1), d.ws_url(0)]));
    let senders = [unique_user(), unique_user()];
    // Two acking receivers and one that speaks only the original protocol.
    let receivers = [
        (unique_user(), true),
        (unique_user(), true),
        (unique_user(), false),
    ];
    const PER_PAIR: usize = 120;
    let mut tasks = Vec::new();
    for (user, ack) in &receivers {
        // Log in first on connector 1 (the one that will be killed).
        let urls = urls.clone();
        let (user, ack) = (user.clone(), *ack);
        tasks.push(tokio::spawn(receive(
            urls,
            user,
            ack,
            senders.len() * PER_PAIR,
        )));
    }
    // Let the receivers log in before the load starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut clients = Vec::new();
    for s in &senders {
        clients.push(Client::login(&d.ws_url(0), s).await.unwrap());
    }
    let mut stopped: Vec<StoppedEngine> = Vec::new();
    for n in 0..PER_PAIR {
        for (si, sender) in clients.iter_mut().enumerate() {
            for (r, _) in &receivers {
                sender
                    .message(r, &format!("s{si}-{n:04}"), "RELIABLE", None)
                    .await
                    .unwrap();
            }
        }
        for (_, event) in events.iter().filter(|(at, _)| *at == n) {
            println!("round {n}: {event:?}");
            apply(&mut d, *event, &mut stopped, &[&urls]).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No barrier here: after the kills the group rebalances, and the receivers' own bounded
    // wait covers that.
    drop(clients);
    check(&d, &receivers, tasks, senders.len(), PER_PAIR).await;
    d
}

/// Carries `event` out on `d`. A restarted connector listens on a new port: its url is added
/// to each list of `urls`. A stopped engine is kept in `stopped` until `StartEngine`.
async fn apply(
    d: &mut Split,
    event: Event,
    stopped: &mut Vec<StoppedEngine>,
    urls: &[&std::sync::Mutex<Vec<String>>],
) {
    match event {
        Event::KillProcessor(i) => d.processors[i].kill().await.unwrap(),
        Event::TerminateProcessor(i) => {
            let code = d.processors[i].terminate().await.unwrap();
            assert_eq!(code, Some(0), "a processor stops cleanly on SIGTERM");
        }
        Event::RestartProcessor(i) => d.processors[i].restart().await.unwrap(),
        Event::KillConnector(i) => d.connectors[i].kill().await.unwrap(),
        Event::RestartConnector(i) => {
            d.connectors[i].restart().await.unwrap();
            for urls in urls {
                urls.lock().unwrap().push(d.ws_url(i));
            }
        }
        Event::StopEngine(engine) => {
            let guard = tokio::task::spawn_blocking(move || StoppedEngine::stop(engine))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("stop {engine}: {e:#}"));
            stopped.push(guard);
        }
        Event::StartEngine => {
            let guard = stopped.pop().expect("an engine was stopped");
            tokio::task::spawn_blocking(move || guard.start())
                .await
                .unwrap()
                .expect("the engine is back up");
        }
        Event::KillMetaServer => meta(d).kill().await.unwrap(),
        Event::RestartMetaServer => meta(d).restart().await.unwrap(),
        Event::RollConnector(i) => {
            let code = d.connectors[i].terminate().await.unwrap();
            assert_eq!(code, Some(0), "a connector stops cleanly on SIGTERM");
            d.connectors[i].restart().await.unwrap();
            for urls in urls {
                urls.lock().unwrap().push(d.ws_url(i));
            }
        }
        Event::RollProcessor(i) => {
            let code = d.processors[i].terminate().await.unwrap();
            assert_eq!(code, Some(0), "a processor stops cleanly on SIGTERM");
            d.processors[i].restart().await.unwrap();
        }
    }
}

fn meta(d: &mut Split) -> &mut testkit::process::LinkerProcess {
    d.meta.as_mut().expect("the matrix runs a meta-server")
}

/// Waits for the receivers and checks what they saw: every message of `senders` x `per_pair`,
/// acking receivers never twice on one socket and in each sender's order. Keeps the process
/// logs when something is missing.
async fn check(
    d: &Split,
    receivers: &[(String, bool)],
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Seen>>>,
    senders: usize,
    per_pair: usize,
) {
    let expected: Vec<String> = (0..senders)
        .flat_map(|s| (0..per_pair).map(move |n| format!("s{s}-{n:04}")))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let complete = |r: &anyhow::Result<Seen>| {
        r.as_ref().is_ok_and(|seen| {
            seen.end.is_none() && expected.iter().all(|c| seen.count.contains_key(c))
        })
    };
    if !results.iter().all(complete) {
        let to = std::env::temp_dir().join(format!("split-crash-{}", d.domain));
        match d.keep_logs(&to) {
            Ok(()) => eprintln!("process logs kept in {}", to.display()),
            Err(e) => eprintln!("process logs not kept: {e}"),
        }
    }
    for ((user, ack), seen) in receivers.iter().zip(results) {
        let seen = seen.unwrap_or_else(|e| panic!("{e:#}\n{}", d.diagnostics()));
        let lost: Vec<_> = expected
            .iter()
            .filter(|c| !seen.count.contains_key(*c))
            .collect();
        let repeated: usize = seen.count.values().map(|n| n - 1).sum();
        println!(
            "{user} (ack: {ack}): sent {}, received {} distinct, lost {}, repeated {} ({} on one socket, {} after a reconnect), reconnects {}",
            expected.len(),
            seen.count.len(),
            lost.len(),
            repeated,
            seen.again_same_socket,
            seen.again_after_reconnect,
            seen.reconnects,
        );
        assert!(lost.is_empty(), "{user} lost {lost:?}\n{}", d.diagnostics());
        assert!(seen.end.is_none(), "{user}: {:?}", seen.end);
        if *ack {
            assert_eq!(
                seen.again_same_socket, 0,
                "{user}: a frame came twice on one socket"
            );
            for s in 0..senders {
                let prefix = format!("s{s}-");
                let mine: Vec<_> = seen
                    .first
                    .iter()
                    .filter(|c| c.starts_with(&prefix))
                    .collect();
                let mut sorted = mine.clone();
                sorted.sort();
                assert_eq!(mine, sorted, "{user}: sender {s}'s messages out of order");
            }
        }
    }
}

/// Distinct MESSAGE contents, in the order first received.
#[derive(Default)]
struct Tally {
    got: HashMap<String, usize>,
    order: Vec<String>,
}

impl Tally {
    fn note(&mut self, f: &serde_json::Value) {
        if f["type"] == "MESSAGE" {
            let c = f["data"]["content"].as_str().unwrap_or_default().to_owned();
            if self.got.insert(c.clone(), 1).is_none() {
                self.order.push(c);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_stopped_with_sigterm_says_1001_and_its_acking_user_resumes_elsewhere() {
    let _engines = ENGINES.read().await;
    let mut d = Split::start(bin()).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    let mut b = Client::login_ack(&d.ws_url(1), &b_id).await.unwrap();
    b.expect("RESUME_COMPLETE").await.unwrap();
    const TOTAL: usize = 60;
    let mut t = Tally::default();
    for i in 0..TOTAL {
        a.message(&b_id, &format!("t{i:03}"), "RELIABLE", None)
            .await
            .unwrap();
        if i == TOTAL / 2 {
            // Read what came so far without acknowledging it, then stop the connector.
            while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_millis(200), b.next()).await {
                t.note(&f);
            }
            let code = d.connectors[1].terminate().await.unwrap();
            assert_eq!(code, Some(0), "{}", d.diagnostics());
        }
    }
    let (ended, frames) = b.ended().await.unwrap();
    frames.iter().for_each(|f| t.note(f));
    match ended {
        testkit::client::Ended::Closed(Some(f)) => {
            assert_eq!(u16::from(f.code), 1001);
            assert_eq!(f.reason.as_str(), "server shutting down; reconnect");
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    let before = t.got.len();
    // Resume on the other connector: the unacknowledged ones and the rest, in order.
    let mut b = Client::login_ack(&d.ws_url(0), &b_id).await.unwrap();
    let mut resent = Vec::new();
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "RESUME_COMPLETE" {
            break;
        }
        resent.push(f["data"]["content"].as_str().unwrap_or_default().to_owned());
        t.note(&f);
    }
    while t.got.len() < TOTAL {
        let f = b.next().await.unwrap();
        t.note(&f);
    }
    println!(
        "sent {TOTAL}, before SIGTERM {before}, resent at login {}, received {} distinct",
        resent.len(),
        t.got.len()
    );
    let mut sorted = resent.clone();
    sorted.sort();
    assert_eq!(resent, sorted, "resent in order");
    let mut sorted = t.order.clone();
    sorted.sort();
    assert_eq!(t.order, sorted, "first receipts in the order sent");
    assert!(
        resent.len() >= before,
        "every unacknowledged one came again"
    );
}
