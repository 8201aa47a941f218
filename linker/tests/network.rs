//! The domain network on the 4-domain ring of seed 004 (domain-01..04, links 1-2, 2-3, 3-4,
//! 1-4), each domain a `linker domain` process with its own loopback ports, plus one
//! `linker meta-server`: every message kind between every pair of domains, presence events
//! and CLOSE_CONNECTION across domains, fetch of what was kept for an offline user of another
//! domain, the wrong-domain login, failover when a domain is SIGKILLed, the outbox when every
//! path is cut, a config reload that adds a domain, and bad network files. Messages carry
//! unique contents and are counted; waits are bounded.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use testkit::network::DomainNet;
use testkit::{Client, Deployment, http_get};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

/// The next `n` frames of `c`.
async fn frames(c: &mut Client, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.next().await?);
    }
    Ok(out)
}

/// Logs a user in at their home domain `i`.
async fn login(net: &DomainNet, i: usize) -> anyhow::Result<Client> {
    Client::login(&net.ws_url(i), &net.user(i)).await
}

/// Sends FAST probes from `a` to `to` until `b` gets one: the path between them works.
async fn path_works(a: &mut Client, b: &mut Client, to: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut k = 0;
    loop {
        k += 1;
        let probe = format!("probe-{k}");
        a.message(to, &probe, "FAST", None).await?;
        let got = tokio::time::timeout(Duration::from_millis(500), b.next()).await;
        if let Ok(Ok(f)) = got
            && f["type"] == "MESSAGE"
            && f["data"]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("probe-"))
        {
            // Later probes may still be on their way; a barrier clears them.
            b.sync().await?;
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no path from {} to {to}", a.user);
    }
}

/// A user on domain-01 and one on domain-03 (two hops away) once messages flow between them;
/// and the second one's id.
async fn linked_pair(net: &DomainNet) -> anyhow::Result<(Client, Client, String)> {
    let mut a = login(net, 0).await?;
    let mut b = login(net, 2).await?;
    let to = b.user.clone();
    path_works(&mut a, &mut b, &to).await?;
    Ok((a, b, to))
}

async fn ring_carries_every_kind(net: &DomainNet) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = login(net, i).await?;
        clients.push(c);
    }
    let users: Vec<String> = clients.iter().map(|c| c.user.clone()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for j in (0..4).filter(|j| *j != i) {
            for feature in ["RELIABLE", "FAST"] {
                let text = format!("{feature} {i}->{j}");
                let r = format!("{feature}-{i}{j}");
                c.message(&users[j], &text, feature, Some(&r)).await?;
            }
        }
    }
    // Each user gets 3 RELIABLE and 3 FAST messages, and 6 confirmations of their own.
    for (j, c) in clients.iter_mut().enumerate() {
        let got = frames(c, 12).await?;
        let mut messages = Vec::new();
        let mut confirmed = Vec::new();
        for f in &got {
            match f["type"].as_str() {
                Some("MESSAGE") => messages.push((
                    f["data"]["from"].as_str().unwrap_or_default().to_owned(),
                    f["data"]["content"].as_str().unwrap_or_default().to_owned(),
                    f["reference"].as_str().unwrap_or_default().to_owned(),
                )),
                Some("MESSAGE_CONFIRMATION") => confirmed.push(
                    f["data"]["reference"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                _ => anyhow::bail!("unexpected frame at {j}: {f}"),
            }
        }
        let mut want_messages = Vec::new();
        let mut want_confirmed = Vec::new();
        for i in (0..4).filter(|i| *i != j) {
            for feature in ["RELIABLE", "FAST"] {
                want_messages.push((
                    users[i].clone(),
                    format!("{feature} {i}->{j}"),
                    format!("{feature}-{i}{j}"),
                ));
                want_confirmed.push(format!("{feature}-{j}{i}"));
            }
        }
        messages.sort();
        want_messages.sort();
        confirmed.sort();
        want_confirmed.sort();
        ensure!(messages == want_messages, "at {j}: {messages:?}");
        ensure!(confirmed == want_confirmed, "at {j}: {confirmed:?}");
    }
    // A group message from domain-01 to members on the three other domains keeps its
    // reference everywhere.
    let group = json!({"type":"GROUP_MESSAGE","reference":"g-1",
        "data":{"to":[users[1], users[2], users[3]],"content":"to all"}});
    clients[0].send(&group).await?;
    for c in clients.iter_mut().skip(1) {
        let m = c.expect("MESSAGE").await?;
        ensure!(
            m == json!({"type":"MESSAGE","data":{"from":users[0],"content":"to all"},"reference":"g-1"}),
            "{m}"
        );
    }
    for c in clients.iter_mut() {
        let extra = c.sync().await?;
        ensure!(extra.is_empty(), "{}: unexpected {extra:?}", c.user);
    }
    Ok(())
}

async fn master_acts_across_domains(net: &DomainNet) -> anyhow::Result<()> {
    // The master of ANZ lives on domain-01; its user on domain-03 is two hops away.
    let mut master = Client::login(&net.ws_url(0), "ANZ-123223").await?;
    let far = net.user(2);
    let mut user = Client::login(&net.ws_url(2), &far).await?;
    let event = next_about(&mut master, &far).await?;
    ensure!(
        event == json!({"type":"USER_CONNECTED","data":{"userId":far}}),
        "{event}"
    );
    master
        .send(&json!({"type":"CLOSE_CONNECTION","data":{"userId":far}}))
        .await?;
    let (ended, _) = user.ended().await?;
    ensure!(
        matches!(ended, testkit::client::Ended::Closed(Some(_))),
        "{ended:?}"
    );
    let event = next_about(&mut master, &far).await?;
    ensure!(
        event == json!({"type":"USER_DISCONNECTED","data":{"userId":far}}),
        "{event}"
    );
    Ok(())
}

/// The next frame of `master` about `user` (other tests' users come and go too).
async fn next_about(master: &mut Client, user: &str) -> anyhow::Result<Value> {
    loop {
        let f = master.next().await?;
        if f["data"]["userId"] == json!(user) {
            return Ok(f);
        }
    }
}

async fn offline_user_of_another_domain_fetches(net: &DomainNet) -> anyhow::Result<()> {
    let mut a = login(net, 0).await?;
    let b_id = net.user(2);
    a.message(&b_id, "kept on domain-03", "RELIABLE", Some("off-1"))
        .await?;
    let early = a.sync().await?;
    ensure!(early.is_empty(), "confirmed before delivery: {early:?}");
    // Stored at the user's home domain once the relay got there: poll with fetches.
    let mut b = Client::login(&net.ws_url(2), &b_id).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
            .await?;
        let mut got = Vec::new();
        loop {
            let f = b.next().await?;
            if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
                ensure!(f["data"]["leftMissingCount"] == 0, "{f}");
                break;
            }
            got.push(f);
        }
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        got == vec![
            json!({"type":"MESSAGE","data":{"from":a.user,"content":"kept on domain-03"},"reference":"off-1"})
        ],
        "{got:?}"
    );
    let c = a.expect("MESSAGE_CONFIRMATION").await?;
    ensure!(c["data"]["reference"] == "off-1", "{c}");
    Ok(())
}

async fn wrong_domain_login_names_the_home_url(net: &DomainNet) -> anyhow::Result<()> {
    let far = net.user(2);
    let mut c = Client::connect(&net.ws_url(0)).await?;
    let reply = c.auth(&far, "app-id-343").await?;
    let home_url = net.ws_url(2).trim_end_matches("/ws").to_owned();
    ensure!(
        reply
            == json!({"type":"AUTH_CLIENT_REPLY","data":{"appId":"app-id-343","userId":far,
                "isAuthenticated":false,"reason":"WRONG_DOMAIN","homeDomain":net.name(2),
                "homeUrl":home_url}}),
        "{reply}"
    );
    // A domain's link identity is not a WebSocket user.
    let app = common::config::domain_app_name(net.name(1));
    let mut c = Client::connect(&net.ws_url(0)).await?;
    let reply = c.auth(&format!("{app}-1"), &app).await?;
    ensure!(reply["data"]["reason"] == "DOMAIN_APP", "{reply}");
    Ok(())
}

/// Every kind of message between every pair of domains, presence events and
/// CLOSE_CONNECTION by a master two hops away, fetch of a message kept for an offline user
/// of another domain, and the wrong-domain login: one ring, scenario after scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_carries_every_protocol_feature_between_domains() {
    every_feature(DomainNet::ring(bin()).await.unwrap()).await;
}

/// The same with domain-03 (two hops from the master's domain) in split mode on the real
/// engines: NATS and Kafka behind its link listener, MongoDB keeping what its offline users
/// are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_with_a_split_domain_carries_every_protocol_feature() {
    every_feature(DomainNet::ring_with_split(bin(), 2).await.unwrap()).await;
}

async fn every_feature(net: DomainNet) {
    if let Err(e) = warm_up(&net).await {
        panic!("warm-up: {e:#}\n{}", net.diagnostics());
    }
    let steps: [(&str, _); 5] = [
        (
            "every kind, every pair",
            ring_carries_every_kind(&net).await,
        ),
        (
            "master across domains",
            master_acts_across_domains(&net).await,
        ),
        (
            "offline fetch",
            offline_user_of_another_domain_fetches(&net).await,
        ),
        (
            "wrong domain",
            wrong_domain_login_names_the_home_url(&net).await,
        ),
        (
            "channels across domains",
            channel_members_on_other_domains_get_posts(&net).await,
        ),
    ];
    for (name, result) in steps {
        if let Err(e) = result {
            panic!("{name}: {e:#}\n{}", net.diagnostics());
        }
    }
}

/// Subscribes `c` to `channel`.
async fn join_channel(c: &mut Client, channel: &str) -> anyhow::Result<()> {
    c.send(&json!({"type":"SUBSCRIBE","data":{"channel":channel}}))
        .await?;
    c.expect("SUBSCRIBED").await?;
    Ok(())
}

/// The next CHANNEL_MESSAGE of `c`, within the client's wait; confirmations on the way are
/// counted in `confirmed`.
async fn next_post(c: &mut Client, confirmed: &mut usize) -> anyhow::Result<Value> {
    loop {
        let f = c.next().await?;
        if f["type"] == "CHANNEL_MESSAGE" {
            return Ok(f);
        }
        ensure!(f["type"] == "MESSAGE_CONFIRMATION", "{}: got {f}", c.user);
        *confirmed += 1;
    }
}

/// Members of one channel on domain-01, domain-02 and domain-03 (two hops away) each get the
/// RELIABLE posts of the others once, numbered, with the sender's reference; the sender is
/// confirmed once.
async fn channel_members_on_other_domains_get_posts(net: &DomainNet) -> anyhow::Result<()> {
    let channel = format!("ANZ/ring-{}", common::now_millis());
    let mut members = Vec::new();
    for i in [0, 1, 2] {
        let mut c = login(net, i).await?;
        join_channel(&mut c, &channel).await?;
        members.push(c);
    }
    let mut confirmed = vec![0usize; members.len()];
    for sender in 0..members.len() {
        let reference = format!("r{sender}");
        let post = json!({"type":"CHANNEL_MESSAGE","reference":reference,"data":{"channel":channel,"content":{"from":sender}}});
        members[sender].send(&post).await?;
        let from = members[sender].user.clone();
        for (c, confirmed) in members.iter_mut().zip(confirmed.iter_mut()) {
            let f = next_post(c, confirmed).await?;
            ensure!(
                f["data"]["from"] == json!(from)
                    && f["data"]["content"] == json!({"from":sender})
                    && f["reference"] == json!(reference)
                    && f["data"]["seq"].is_u64(),
                "{} got {f}",
                c.user
            );
        }
    }
    for (c, confirmed) in members.iter_mut().zip(confirmed) {
        let later = c.sync().await?;
        let confirmations = later
            .iter()
            .filter(|f| f["type"] == "MESSAGE_CONFIRMATION")
            .count();
        ensure!(
            later.len() == confirmations && confirmed + confirmations == 1,
            "{}: one confirmation, no other post; got {confirmed} then {later:?}",
            c.user
        );
    }
    Ok(())
}

/// One RELIABLE message from domain-01 to every other domain, waited for generously: the
/// first one into a fresh split domain waits for its Kafka consumer to get its partitions.
async fn warm_up(net: &DomainNet) -> anyhow::Result<()> {
    let mut a = login(net, 0).await?;
    for i in 1..4 {
        let mut b = login(net, i).await?;
        a.message(&b.user, "warm-up", "RELIABLE", None).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout(Duration::from_secs(1), b.next()).await {
                Ok(Ok(f)) if f["data"]["content"] == "warm-up" => break,
                Ok(Err(e)) => return Err(e),
                _ => ensure!(Instant::now() < deadline, "{} got nothing", b.user),
            }
        }
    }
    Ok(())
}

/// Sends `total` numbered RELIABLE messages from `a` to `to`, calling `midway` after
/// `at` of them; returns what `b` received: content -> times.
async fn stream_through<F, Fut>(
    a: &mut Client,
    b: Client,
    to: &str,
    total: usize,
    at: usize,
    midway: F,
) -> anyhow::Result<(BTreeMap<usize, usize>, Vec<usize>, Duration)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let receiver = tokio::spawn(async move {
        let mut b = b;
        let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut order = Vec::new();
        let mut last: Option<Instant> = None;
        let mut longest_gap = Duration::ZERO;
        while seen.len() < total {
            let Ok(f) = b.next().await else { break };
            let now = Instant::now();
            if let Some(l) = last {
                longest_gap = longest_gap.max(now - l);
            }
            last = Some(now);
            if f["type"] != "MESSAGE" {
                continue;
            }
            let Some(n) = f["data"]["content"]
                .as_str()
                .and_then(|c| c.strip_prefix("m-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            order.push(n);
            *seen.entry(n).or_default() += 1;
        }
        // A duplicate arriving late would show before this barrier comes back.
        for f in b.sync().await.unwrap_or_default() {
            if let Some(n) = f["data"]["content"]
                .as_str()
                .and_then(|c| c.strip_prefix("m-"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                *seen.entry(n).or_default() += 1;
            }
        }
        (seen, order, longest_gap)
    });
    let mut midway = Some(midway);
    for n in 0..total {
        if n == at
            && let Some(f) = midway.take()
        {
            f().await?;
        }
        a.message(to, &format!("m-{n}"), "RELIABLE", None).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(receiver.await?)
}

/// Checks that every message arrived exactly once; `late_allowed` is how many may arrive
/// after a message sent later than them.
fn check_counts(
    seen: &BTreeMap<usize, usize>,
    order: &[usize],
    total: usize,
    late_allowed: usize,
) -> anyhow::Result<()> {
    let lost: Vec<_> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    let dup: Vec<_> = seen
        .iter()
        .filter(|(_, k)| **k > 1)
        .map(|(n, _)| *n)
        .collect();
    let mut highest = None;
    let mut late = Vec::new();
    for n in order {
        if highest.is_some_and(|h| h > *n) {
            late.push(*n);
        }
        highest = highest.max(Some(*n));
    }
    println!(
        "sent {total}, received {}, lost {}, duplicated {}, arrived after later ones: {late:?}",
        seen.len(),
        lost.len(),
        dup.len()
    );
    ensure!(lost.is_empty(), "lost {lost:?}");
    ensure!(dup.is_empty(), "duplicated {dup:?}");
    ensure!(late.len() <= late_allowed, "order broken: {order:?}");
    Ok(())
}

/// SIGKILL of domain-02 while domain-01 streams RELIABLE messages to domain-03 through it
/// (of the two equally short ways, the one through the lower name is taken): traffic takes
/// the other way round, through domain-04, and domain-02 stays down. Nothing is lost or
/// duplicated: what domain-02 held when it died is sent again by domain-01 when no receipt
/// comes, so those few arrive late; all else arrives in order. Prints the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_domain_is_routed_around_with_nothing_lost() {
    let mut net = DomainNet::ring(bin()).await.unwrap();
    let result = async {
        let (mut a, mut b, to) = linked_pair(&net).await?;
        let relayed = |i: usize| {
            let page = net.page_addr(i);
            async move {
                let (_, text) = http_get(&page, "/metrics").await?;
                anyhow::Ok(testkit::metric(
                    &text,
                    "linker_link_envelopes_in_total",
                    &[],
                ))
            }
        };
        ensure!(
            relayed(1).await? > 0.0,
            "domain-02 carried nothing before it was killed"
        );
        let hop0 = latency(&mut a, &mut login(&net, 0).await?).await?;
        let hop1 = latency(&mut a, &mut login(&net, 1).await?).await?;
        let hop2 = latency(&mut a, &mut b).await?;
        println!("median round trip (message + confirmation): same domain {hop0:?}, 1 hop {hop1:?}, 2 hops {hop2:?}");
        const TOTAL: usize = 300;
        let net_ref = &mut net;
        let (seen, order, gap) = stream_through(&mut a, b, &to, TOTAL, 100, || async move {
            net_ref.kill(1).await
        })
        .await?;
        println!("longest gap between two arrivals (the switch to the other path): {gap:?}");
        // At most one outbox window of relays can be held by domain-02 when it dies.
        check_counts(&seen, &order, TOTAL, 64)?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", net.diagnostics());
    }
}

/// Median round trip of a RELIABLE message from `a` to `b` and back as a confirmation.
async fn latency(a: &mut Client, b: &mut Client) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for k in 0..21 {
        let t = Instant::now();
        a.message(&b.user, "ping", "RELIABLE", Some(&format!("lat-{k}")))
            .await?;
        b.expect("MESSAGE").await?;
        a.expect("MESSAGE_CONFIRMATION").await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Every path to domain-03 cut (domain-02 and domain-04 killed): RELIABLE messages from
/// domain-01 wait in its outbox, and all arrive once, in order, when a path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_path_cut_messages_wait_and_arrive_once() {
    let mut net = DomainNet::ring(bin()).await.unwrap();
    let result = async {
        let (mut a, mut b, to) = linked_pair(&net).await?;
        net.kill(1).await?;
        net.kill(3).await?;
        const TOTAL: usize = 50;
        for n in 0..TOTAL {
            a.message(
                &to,
                &format!("m-{n}"),
                "RELIABLE",
                Some(&format!("cut-{n}")),
            )
            .await?;
        }
        // Nothing can arrive while the paths are cut.
        let early = tokio::time::timeout(Duration::from_secs(2), b.next()).await;
        ensure!(early.is_err(), "arrived with every path cut: {early:?}");
        let restored = Instant::now();
        net.restart(3).await?;
        let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut order = Vec::new();
        while seen.len() < TOTAL {
            let f = b.expect("MESSAGE").await?;
            let n: usize = f["data"]["content"]
                .as_str()
                .and_then(|c| c.strip_prefix("m-"))
                .and_then(|n| n.parse().ok())
                .context("numbered content")?;
            order.push(n);
            *seen.entry(n).or_default() += 1;
        }
        println!(
            "all {TOTAL} arrived {:?} after the path came back",
            restored.elapsed()
        );
        for f in b.sync().await? {
            if let Some(n) = f["data"]["content"]
                .as_str()
                .and_then(|c| c.strip_prefix("m-"))
            {
                *seen.entry(n.parse()?).or_default() += 1;
            }
        }
        check_counts(&seen, &order, TOTAL, 0)?;
        // And each sender reference is confirmed once.
        let mut confirmed: HashMap<String, usize> = HashMap::new();
        while confirmed.len() < TOTAL {
            let c = a.expect("MESSAGE_CONFIRMATION").await?;
            *confirmed
                .entry(c["data"]["reference"].as_str().unwrap_or_default().into())
                .or_default() += 1;
        }
        ensure!(confirmed.values().all(|k| *k == 1), "{confirmed:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", net.diagnostics());
    }
}

/// A reload that adds domain-05 (linked to domain-04) and its user range: the running
/// domains and the meta-server take it without a restart, and domain-01 reaches the new
/// domain's users through domain-04. A bad file meanwhile is refused and the old network
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_domain_that_is_used_without_restarts() {
    let mut net = DomainNet::ring(bin()).await.unwrap();
    let result = async {
        let meta = net.meta_addr();
        // A bad file: the meta-server says why and keeps the old network.
        std::fs::write(
            net.meta_config(),
            "domains: [{name: a}]\ndomainLinks: [{n1: a, n2: b}]\n",
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !net.meta_log().contains("new network config refused") {
            ensure!(
                Instant::now() < deadline,
                "bad file not refused:\n{}",
                net.meta_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            net.meta_log().contains("links to unknown domain `b`"),
            "{}",
            net.meta_log()
        );
        let (_, domains) = http_get(&meta, "/domains").await?;
        ensure!(domains.matches("\"name\"").count() == 4, "{domains}");

        let (yaml, ws, link) = net.with_domain_05(&[3])?;
        net.write_network(&yaml)?;
        net.start_domain_05(&yaml, ws, link).await?;
        let mut a = login(&net, 0).await?;
        let mut e = login(&net, 4).await?;
        let to = e.user.clone();
        path_works(&mut a, &mut e, &to).await?;
        a.message(&to, "welcome, domain-05", "RELIABLE", Some("new-1"))
            .await?;
        let m = e.expect("MESSAGE").await?;
        ensure!(m["data"]["content"] == "welcome, domain-05", "{m}");
        let c = a.expect("MESSAGE_CONFIRMATION").await?;
        ensure!(c["data"]["reference"] == "new-1", "{c}");
        // The meta-server serves the new network too (it checks its file every second).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = http_get(&meta, &format!("/users/{to}/domain")).await?;
            if status == 200 && body.contains("domain-05") {
                break;
            }
            ensure!(Instant::now() < deadline, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", net.diagnostics());
    }
}

/// The meta-server refuses each kind of bad network file at start, naming the field and
/// the reason (exit code 64).
#[test]
fn the_meta_server_refuses_bad_network_files() {
    let good = "domains:\n  - name: domain-01\n    urls: [ws://127.0.0.1:1, tcp://127.0.0.1:2]\n  - name: domain-02\n    urls: [ws://127.0.0.1:3, tcp://127.0.0.1:4]\ndomainLinks:\n  - n1: domain-01\n    n2: domain-02\nclientApps:\n  - appName: domain1\n    appId: domain1\n  - appName: domain2\n    appId: domain2\n  - appName: ANZ\n    appId: app-id-343\nuserDistributions:\n  - domainName: domain-01\n    from: 0\n    to: 999\n  - domainName: domain-02\n    from: 1000\n";
    let cases = [
        (
            good.replace("n2: domain-02", "n2: domain-09"),
            "links to unknown domain",
        ),
        (good.replace("from: 1000", "from: 500"), "overlaps"),
        (
            good.replace("from: 1000\n", "from: 1000\n    to: 10\n"),
            "inverted",
        ),
        (
            good.replace("appName: ANZ", "appName: domain1"),
            "used twice",
        ),
        (
            good.replace("appId: app-id-343", "appId: domain1"),
            "used twice",
        ),
        (
            good.replace("tcp://127.0.0.1:4", "udp://127.0.0.1:4"),
            "has no tcp:// url",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network.yaml");
    std::fs::write(&path, good).unwrap();
    let check = |path: &Path| {
        std::process::Command::new(bin())
            .args(["meta-server", "--check-config", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(check(&path).status.success(), "the good file loads");
    for (text, reason) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = check(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}\n{err}");
        assert!(err.contains(reason), "expected `{reason}` in: {err}");
    }
}
