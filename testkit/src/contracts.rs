//! Contracts every backend must keep, written once and run against each engine (the
//! in-memory defaults and the real NATS, Kafka, Redis and MongoDB servers).
//!
//! Each takes a fresh backend (or a factory for a second handle on the same engine) and
//! fails with a message naming the broken promise.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::bus::{Bus, BusError};
use common::channel::Channel;
use common::envelope::{
    Body, Confirm, ConnectorCommand, DeliveryReport, Envelope, StoredMessage, Target,
};
use common::frame::Feature;
use common::ids::{ConnectorName, MessageId, SocketAddress, UserId};
use common::presence::Presence;
use common::store::{ChannelPost, Persisted, Retention, Store};
use serde_json::value::RawValue;

fn user(n: u64) -> UserId {
    UserId::parse(&format!("ANZ-{n}")).expect("valid test id")
}

/// A user id no other test run shares (the engines outlive one test).
pub fn fresh_user() -> UserId {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_000_000)
        .unwrap_or(0);
    user(n)
}

fn stored(to: &UserId, text: &str) -> StoredMessage {
    StoredMessage {
        id: MessageId::new(),
        to: to.clone(),
        created_at: common::now_millis(),
        frame: text.to_owned(),
        confirm: None,
    }
}

/// Persist, fetch oldest first with totals, idempotent persist, remove, per-user copies,
/// sequence numbers that grow and are never reused, fetch after a number, the per-user bound,
/// and forgetting a sent confirmation.
pub async fn store_contract(store: &dyn Store) -> anyhow::Result<()> {
    const MAX: u64 = 1000;
    let (a, b) = (fresh_user(), fresh_user());
    let messages: Vec<_> = (0..5).map(|i| stored(&a, &format!("m{i}"))).collect();
    let mut seqs = Vec::new();
    for m in &messages {
        match store.persist(m, MAX).await? {
            Persisted::Kept(seq) => seqs.push(seq),
            Persisted::Full => anyhow::bail!("not full yet"),
        }
    }
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "numbers grow: {seqs:?}"
    );
    ensure!(
        store.persist(&messages[0], MAX).await? == Persisted::Kept(seqs[0]),
        "a second persist of an id answers its number"
    );
    let mut shared = stored(&b, "shared");
    shared.id = messages[1].id;
    store.persist(&shared, MAX).await?;
    let f = store.fetch(&a, 0, 3).await?;
    ensure!(f.total == 5, "total counts each id once: {}", f.total);
    let frames: Vec<_> = f
        .messages
        .iter()
        .map(|m| m.message.frame.as_str())
        .collect();
    ensure!(frames == ["m0", "m1", "m2"], "oldest first: {frames:?}");
    let got: Vec<_> = f.messages.iter().map(|m| m.seq).collect();
    ensure!(
        got == seqs[..3],
        "fetch gives the numbers: {got:?} {seqs:?}"
    );
    let f = store.fetch(&a, seqs[2], 10).await?;
    let frames: Vec<_> = f
        .messages
        .iter()
        .map(|m| m.message.frame.as_str())
        .collect();
    ensure!(frames == ["m3", "m4"], "after a number: {frames:?}");
    store.remove(&a, messages[0].id).await?;
    store.remove(&a, messages[0].id).await?;
    let f = store.fetch(&a, 0, 10).await?;
    ensure!(
        f.total == 4 && f.messages.len() == 4,
        "after remove: {}",
        f.total
    );
    ensure!(f.messages[0].message.frame == "m1", "{:?}", f.messages[0]);
    let f = store.fetch(&b, 0, 10).await?;
    ensure!(
        f.total == 1 && f.messages[0].message.frame == "shared",
        "one copy per user"
    );
    let f = store.fetch(&fresh_user(), 0, 10).await?;
    ensure!(
        f.total == 0 && f.messages.is_empty(),
        "nothing for a stranger"
    );

    // Removing everything, the highest last, does not let a number be drawn again.
    for m in &messages {
        store.remove(&a, m.id).await?;
    }
    let f = store.fetch(&a, 0, 10).await?;
    ensure!(f.total == 0 && f.messages.is_empty(), "all removed: {f:?}");
    let next = stored(&a, "next");
    let Persisted::Kept(seq) = store.persist(&next, MAX).await? else {
        anyhow::bail!("not full");
    };
    ensure!(
        seq > seqs[4],
        "a number is never reused: {seq} after {seqs:?}"
    );

    // The bound: past it nothing is stored, but a kept id still answers its number.
    let c = fresh_user();
    let first = stored(&c, "c0");
    store.persist(&first, 2).await?;
    store.persist(&stored(&c, "c1"), 2).await?;
    ensure!(
        store.persist(&stored(&c, "c2"), 2).await? == Persisted::Full,
        "a third message is over a bound of 2"
    );
    ensure!(
        matches!(store.persist(&first, 2).await?, Persisted::Kept(_)),
        "a kept id is not refused"
    );
    ensure!(store.fetch(&c, 0, 10).await?.total == 2, "the bound holds");

    // A kept message forgets its pending confirmation once it was sent.
    let d = fresh_user();
    let mut owed = stored(&d, "owed");
    owed.confirm = Some(Confirm {
        to: a.clone(),
        reference: "ref".into(),
    });
    store.persist(&owed, MAX).await?;
    store.confirmed(&d, owed.id).await?;
    let f = store.fetch(&d, 0, 10).await?;
    ensure!(
        f.messages.len() == 1 && f.messages[0].message.confirm.is_none(),
        "confirmation forgotten: {f:?}"
    );
    Ok(())
}

/// A channel of app ANZ no other test run shares.
fn fresh_channel() -> Channel {
    Channel::parse(&format!(
        "ANZ/c{}",
        fresh_user().as_str().trim_start_matches("ANZ-")
    ))
    .expect("valid test channel")
}

fn channel_post(n: u32, created_at: u64) -> ChannelPost {
    ChannelPost {
        id: MessageId::new(),
        from: user(7),
        reference: n.is_multiple_of(2).then(|| format!("r{n}")),
        content: format!("{{\"n\":{n}}}"),
        created_at,
    }
}

const KEEP_ALL: Retention = Retention {
    keep: 1000,
    max_age_ms: 3_600_000,
};

/// Channel history: numbers 1, 2, 3... per channel, the same number for a redelivered post,
/// the newest posts oldest first (after a number, within a limit), retention by count and by
/// age that never drops the newest post, and distinct gapless numbers when two handles (`a`
/// and `b`, two processes where the engine is shared) post at once.
pub async fn channel_history_contract(a: &dyn Store, b: &dyn Store) -> anyhow::Result<()> {
    let now = common::now_millis();
    let channel = fresh_channel();
    let posts: Vec<_> = (1..=5).map(|n| channel_post(n, now)).collect();
    for (i, p) in posts.iter().enumerate() {
        let seq = a.post(&channel, p, KEEP_ALL, now).await?;
        ensure!(seq == i as u64 + 1, "post {i} got number {seq}");
    }
    ensure!(
        b.post(&channel, &posts[1], KEEP_ALL, now).await? == 2,
        "a redelivered post answers its first number"
    );
    let h = b.history(&channel, 0, 3, 0).await?;
    let seqs: Vec<u64> = h.iter().map(|n| n.seq).collect();
    ensure!(
        seqs == [3, 4, 5],
        "the newest three, oldest first: {seqs:?}"
    );
    ensure!(h[0].post == posts[2], "a kept post reads back as posted");
    let seqs: Vec<u64> = a
        .history(&channel, 3, 10, 0)
        .await?
        .iter()
        .map(|n| n.seq)
        .collect();
    ensure!(seqs == [4, 5], "after a number: {seqs:?}");
    ensure!(
        a.history(&fresh_channel(), 0, 10, 0).await?.is_empty(),
        "another channel has nothing"
    );

    // Retention by count: a post past `keep` drops the oldest.
    let three = Retention {
        keep: 3,
        max_age_ms: 3_600_000,
    };
    a.post(&channel, &channel_post(6, now), three, now).await?;
    let seqs: Vec<u64> = a
        .history(&channel, 0, 10, 0)
        .await?
        .iter()
        .map(|n| n.seq)
        .collect();
    ensure!(seqs == [4, 5, 6], "three kept: {seqs:?}");
    // By age: everything older goes, but never the newest, and numbers go on.
    let later = now + 10_000;
    let short = Retention {
        keep: 1000,
        max_age_ms: 1000,
    };
    let seq = a
        .post(&channel, &channel_post(7, later), short, later)
        .await?;
    ensure!(seq == 7, "numbers go on after a trim: {seq}");
    let seqs: Vec<u64> = a
        .history(&channel, 0, 10, 0)
        .await?
        .iter()
        .map(|n| n.seq)
        .collect();
    ensure!(seqs == [7], "only the fresh post is left: {seqs:?}");
    let old = Retention {
        keep: 1000,
        max_age_ms: 1,
    };
    let seq = a
        .post(&channel, &channel_post(8, now), old, later + 60_000)
        .await?;
    ensure!(seq == 8, "the newest is kept even when too old: {seq}");
    ensure!(
        a.history(&channel, 0, 10, later + 1).await?.is_empty(),
        "history reads nothing created before `since`"
    );

    // Two writers at once: every post its own number, none skipped.
    let busy = fresh_channel();
    let mut writes = Vec::new();
    for n in 0..40u32 {
        let store = if n % 2 == 0 { a } else { b };
        let post = channel_post(n, now);
        let busy = busy.clone();
        writes.push(async move { store.post(&busy, &post, KEEP_ALL, now).await });
    }
    let mut seqs = futures_util::future::try_join_all(writes).await?;
    seqs.sort_unstable();
    ensure!(
        seqs == (1..=40).collect::<Vec<u64>>(),
        "concurrent posts got {seqs:?}"
    );
    let kept = a.history(&busy, 0, 100, 0).await?;
    ensure!(kept.len() == 40, "all 40 kept, got {}", kept.len());
    Ok(())
}

fn addr(connector: &str, socket: u64) -> SocketAddress {
    SocketAddress {
        connector: ConnectorName::new(connector),
        socket,
    }
}

/// Channel members: each socket once, across connectors, gone when it leaves or is no longer
/// present.
async fn channel_membership(p: &dyn Presence, u: &UserId) -> anyhow::Result<()> {
    let channel = Channel::parse(&format!("ANZ/contract-{}", u.as_str().replace('-', "_")))?;
    let other = user(7);
    ensure!(
        p.members(&channel).await?.is_empty(),
        "a new channel is empty"
    );
    p.add(u, &addr("connector-01", 1)).await?;
    p.add(&other, &addr("connector-02", 2)).await?;
    p.add(&other, &addr("connector-02", 3)).await?;
    p.join(&channel, u, &addr("connector-01", 1)).await?;
    p.join(&channel, u, &addr("connector-01", 1)).await?;
    p.join(&channel, &other, &addr("connector-02", 2)).await?;
    p.join(&channel, &other, &addr("connector-02", 3)).await?;
    // A member socket that is no longer present (its connector crashed) is no member.
    p.remove(&other, &addr("connector-02", 3)).await?;
    let mut found = p.members(&channel).await?;
    found.sort_by_key(|(_, a)| a.socket);
    ensure!(
        found
            == vec![
                (u.clone(), addr("connector-01", 1)),
                (other.clone(), addr("connector-02", 2))
            ],
        "members on two connectors, each socket once: {found:?}"
    );
    p.leave(&channel, u, &addr("connector-01", 1)).await?;
    p.leave(&channel, u, &addr("connector-01", 1)).await?;
    ensure!(p.members(&channel).await? == vec![(other.clone(), addr("connector-02", 2))]);
    p.leave(&channel, &other, &addr("connector-02", 2)).await?;
    ensure!(
        p.members(&channel).await?.is_empty(),
        "the last member left"
    );
    p.remove(u, &addr("connector-01", 1)).await?;
    p.remove(&other, &addr("connector-02", 2)).await?;
    Ok(())
}

/// The users chosen for a managed channel: granted once, bounded, revoked, per channel.
async fn channel_grants(p: &dyn Presence, u: &UserId) -> anyhow::Result<()> {
    let name = u.as_str().replace('-', "_");
    let channel = Channel::parse(&format!("ANZ/managed-{name}"))?;
    let other_channel = Channel::parse(&format!("ANZ/managed2-{name}"))?;
    let other = user(8);
    ensure!(
        !p.is_granted(&channel, u).await?,
        "nobody is chosen at first"
    );
    ensure!(p.grant(&channel, u, 1).await?, "a first grant");
    ensure!(
        p.grant(&channel, u, 1).await?,
        "granted again at the bound: no change"
    );
    ensure!(
        !p.grant(&channel, &other, 1).await?,
        "a grant past the bound is refused"
    );
    ensure!(p.is_granted(&channel, u).await?);
    ensure!(
        !p.is_granted(&channel, &other).await?,
        "the refused grant left no trace"
    );
    ensure!(
        !p.is_granted(&other_channel, u).await?,
        "a grant is for one channel"
    );
    ensure!(p.grant(&channel, &other, 2).await?);
    p.revoke(&channel, u).await?;
    p.revoke(&channel, u).await?;
    ensure!(!p.is_granted(&channel, u).await?, "revoked");
    ensure!(
        p.is_granted(&channel, &other).await?,
        "the other user stays"
    );
    p.revoke(&channel, &other).await?;
    Ok(())
}

/// `lookup_all` answers what `lookup` answers for each user, in order, offline users
/// included, for a group larger than the largest GROUP_MESSAGE (1000 by default).
async fn lookup_all(p: &dyn Presence) -> anyhow::Result<()> {
    ensure!(p.lookup_all(&[]).await?.is_empty(), "no users, no answers");
    let base = fresh_user().as_str()["ANZ-".len()..].parse::<u64>()? * 10_000;
    let users: Vec<UserId> = (0..1500).map(|i| user(base + i)).collect();
    // Every third user is offline, every fifth holds a second socket on another connector.
    for (i, u) in users.iter().enumerate() {
        if i % 3 == 0 {
            continue;
        }
        p.add(u, &addr("connector-01", i as u64)).await?;
        if i % 5 == 0 {
            p.add(u, &addr("connector-02", 10_000 + i as u64)).await?;
        }
    }
    let expected = |i: usize| match (i % 3, i % 5) {
        (0, _) => vec![],
        (_, 0) => vec![
            addr("connector-01", i as u64),
            addr("connector-02", 10_000 + i as u64),
        ],
        _ => vec![addr("connector-01", i as u64)],
    };
    // The same user twice gets its sockets twice (a group may name a member twice).
    let order: Vec<usize> = (0..users.len()).chain([1]).collect();
    let asked: Vec<UserId> = order.iter().map(|i| users[*i].clone()).collect();
    let found = p.lookup_all(&asked).await?;
    ensure!(
        found.len() == asked.len(),
        "one answer per user: {} for {}",
        found.len(),
        asked.len()
    );
    for (i, mut sockets) in order.iter().copied().zip(found) {
        sockets.sort_by_key(|a| a.socket);
        ensure!(
            sockets == expected(i),
            "user #{i}: lookup_all answered {sockets:?}, expected {:?}",
            expected(i)
        );
    }
    let mut one = p.lookup(&users[5]).await?;
    one.sort_by_key(|a| a.socket);
    ensure!(one == expected(5), "lookup agrees with lookup_all");
    for (i, u) in users.iter().enumerate() {
        if i % 3 != 0 {
            p.remove(u, &addr("connector-01", i as u64)).await?;
            p.remove(u, &addr("connector-02", 10_000 + i as u64))
                .await?;
        }
    }
    ensure!(
        p.lookup_all(&users).await?.iter().all(Vec::is_empty),
        "every socket removed"
    );
    Ok(())
}

/// Sockets per user, locks that exclude and expire, processed marks (if the engine keeps
/// them: `keeps_marks` is false for the in-memory presence, whose bus never redelivers) and
/// the lookup that answers nothing for a processed id.
pub async fn presence_contract(p: &dyn Presence, keeps_marks: bool) -> anyhow::Result<()> {
    let u = fresh_user();
    p.add(&u, &addr("connector-01", 1)).await?;
    p.add(&u, &addr("connector-02", 2)).await?;
    p.add(&u, &addr("connector-02", 2)).await?;
    let mut found = p.lookup(&u).await?;
    found.sort_by_key(|a| a.socket);
    ensure!(
        found == vec![addr("connector-01", 1), addr("connector-02", 2)],
        "{found:?}"
    );
    p.remove(&u, &addr("connector-01", 1)).await?;
    ensure!(p.lookup(&u).await? == vec![addr("connector-02", 2)]);
    p.remove(&u, &addr("connector-02", 2)).await?;
    ensure!(p.lookup(&u).await?.is_empty());

    let ttl = Duration::from_millis(1500);
    let t1 = p.lock(&u, ttl, Duration::ZERO).await?;
    ensure!(
        p.lock(&u, ttl, Duration::from_millis(100)).await.is_err(),
        "a held lock excludes a second holder"
    );
    p.unlock(&u, t1).await?;
    let _t2 = p
        .lock(&u, ttl, Duration::ZERO)
        .await
        .context("lock after unlock")?;
    let t3 = p
        .lock(&u, ttl, Duration::from_secs(5))
        .await
        .context("a lock expires after its ttl")?;
    p.unlock(&u, t3).await?;

    channel_membership(p, &u).await?;
    channel_grants(p, &u).await?;
    lookup_all(p).await?;

    let id = MessageId::new();
    ensure!(!p.is_processed(id).await?, "a new id is not processed");
    p.add(&u, &addr("connector-01", 7)).await?;
    ensure!(
        p.lookup_unless_processed(id, &u).await? == Some(vec![addr("connector-01", 7)]),
        "an unprocessed id: the user's sockets"
    );
    p.remove(&u, &addr("connector-01", 7)).await?;
    ensure!(
        p.lookup_unless_processed(id, &u).await? == Some(Vec::new()),
        "an unprocessed id of an offline user: no sockets, not None"
    );
    p.mark_processed(id).await?;
    ensure!(
        p.is_processed(id).await? == keeps_marks,
        "processed marks kept: {keeps_marks}"
    );
    p.add(&u, &addr("connector-01", 7)).await?;
    ensure!(
        p.lookup_unless_processed(id, &u).await?.is_none() == keeps_marks,
        "a processed id is not looked up (processed marks kept: {keeps_marks})"
    );
    p.remove(&u, &addr("connector-01", 7)).await?;

    // A claim holds its key for its message until the window ends.
    let key = format!("{u}:ref-1");
    let (first, second) = (MessageId::new(), MessageId::new());
    let window = Duration::from_millis(1500);
    ensure!(p.claim(&key, first, window).await? == first, "a new claim");
    ensure!(
        p.claim(&key, first, window).await? == first,
        "the holder claims again"
    );
    ensure!(
        p.claim(&key, second, window).await? == first,
        "another message finds the key held"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.claim(&key, second, window).await? != second {
        ensure!(
            std::time::Instant::now() < deadline,
            "the claim never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn envelope(from: &UserId, feature: Feature, n: u32) -> Envelope {
    Envelope {
        id: MessageId::new(),
        from: from.clone(),
        origin: addr("connector-01", 1),
        feature,
        reference: Some(format!("r{n}")),
        confirm: true,
        created_at: common::now_millis(),
        hops: 0,
        ack: false,
        body: Body::Message {
            to: from.clone(),
            content: RawValue::from_string(format!("{n}")).expect("a number is JSON"),
        },
    }
}

/// Envelopes of both features reach the consumer, each sender's in order and acknowledged;
/// commands reach the named connector, and a report comes back.
pub async fn bus_contract(bus: Arc<dyn Bus>, connector: &str) -> anyhow::Result<()> {
    let mut inbound = bus.consume("processor-contract").await?;
    let name = ConnectorName::new(connector);
    let mut commands = bus.listen(&name).await?;
    let sender = fresh_user();
    for feature in [Feature::Fast, Feature::Reliable] {
        for n in 0..20 {
            bus.publish(envelope(&sender, feature, n)).await?;
        }
    }
    let mut seen = [Vec::new(), Vec::new()];
    while seen[0].len() + seen[1].len() < 40 {
        let got = tokio::time::timeout(Duration::from_secs(30), inbound.recv())
            .await
            .context("envelopes arrive")?
            .context("inbound stream ended")?;
        if got.envelope.from != sender {
            got.ack.done();
            continue;
        }
        let Body::Message { content, .. } = &got.envelope.body else {
            anyhow::bail!("body changed on the bus");
        };
        let n: u32 = content.get().parse()?;
        seen[(got.envelope.feature == Feature::Reliable) as usize].push(n);
        got.ack.done();
    }
    let order: Vec<u32> = (0..20).collect();
    ensure!(seen[0] == order, "FAST in order: {:?}", seen[0]);
    ensure!(seen[1] == order, "RELIABLE in order: {:?}", seen[1]);

    // A command with a report.
    let replier = tokio::spawn(async move {
        let c = commands.recv().await.context("a command arrives")?;
        let ConnectorCommand::Deliver { targets, frame, .. } = &c.command else {
            anyhow::bail!("wrong command");
        };
        ensure!(frame == "frame-1" && targets.len() == 2, "command intact");
        c.reply
            .context("a request carries a replier")?
            .reply(DeliveryReport {
                written: vec![true, false],
                acking: vec![],
            });
        let c = commands.recv().await.context("a one-way command arrives")?;
        ensure!(c.reply.is_none(), "a one-way command has no replier");
        Ok(commands)
    });
    let target = |s| Target {
        user: sender.clone(),
        socket: s,
    };
    let report = bus
        .request(
            &name,
            ConnectorCommand::Deliver {
                targets: vec![target(1), target(2)],
                frame: "frame-1".into(),
                feature: Feature::Reliable,
                id: Some(MessageId::new()),
                ack: None,
            },
            Duration::from_secs(10),
        )
        .await?;
    ensure!(report.written == vec![true, false], "{report:?}");
    bus.send(
        &name,
        ConnectorCommand::Close {
            targets: vec![target(1)],
            reason: "x".into(),
        },
    )
    .await?;
    let _commands = replier.await??;

    // Nobody listens under this name.
    let nobody = ConnectorName::new(&format!("{connector}-nobody"));
    let command = ConnectorCommand::Close {
        targets: vec![],
        reason: "x".into(),
    };
    match bus
        .request(&nobody, command, Duration::from_millis(500))
        .await
    {
        // Unavailable: NATS just after (re)connecting, when a connector may not have
        // subscribed again yet (retried by the caller).
        Err(BusError::NoSuchConnector(_) | BusError::TimedOut(_) | BusError::Unavailable(_)) => {}
        other => anyhow::bail!("a request to nobody must fail: {other:?}"),
    }
    Ok(())
}
