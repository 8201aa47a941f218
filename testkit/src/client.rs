//! A WebSocket client that speaks the linker protocol, for tests.
//!
//! Every wait is bounded (`WAIT`), so a missing frame fails the test instead of hanging it.
//! `sync()` is a barrier: a message to oneself on each path (FAST and RELIABLE) comes back
//! after everything the client sent before it was handled.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any one frame.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Set once authenticated.
    pub user: String,
    syncs: u64,
}

/// How a socket ended, as the client saw it.
#[derive(Debug)]
pub enum Ended {
    Closed(Option<CloseFrame>),
    Dropped,
}

impl Client {
    pub async fn connect(url: &str) -> anyhow::Result<Client> {
        Self::open(url, None).await
    }

    /// Connects over `wss://`, trusting only `root` (a DER certificate).
    pub async fn connect_tls(url: &str, root: &[u8]) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.to_vec().into())?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config));
        Self::open(url, Some(connector)).await
    }

    async fn open(url: &str, tls: Option<tokio_tungstenite::Connector>) -> anyhow::Result<Client> {
        let connect = tokio_tungstenite::connect_async_tls_with_config(url, None, false, tls);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {url}"))?;
        Ok(Client {
            ws,
            user: String::new(),
            syncs: 0,
        })
    }

    /// Connects and authenticates `user` of app ANZ; fails unless the reply says true.
    pub async fn login(url: &str, user: &str) -> anyhow::Result<Client> {
        Self::login_app(url, user, "app-id-343").await
    }

    pub async fn login_app(url: &str, user: &str, app_id: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(url).await?;
        let reply = c.auth(user, app_id).await?;
        if reply["data"]["isAuthenticated"] != json!(true) {
            bail!("{user} not authenticated: {reply}");
        }
        c.user = user.to_owned();
        Ok(c)
    }

    /// Connects and authenticates `user` of app ANZ with `"ack": true` (the acknowledged
    /// protocol); fails unless the reply says true and confirms `ack`.
    pub async fn login_ack(url: &str, user: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(url).await?;
        c.send(&json!({"type":"AUTH_CLIENT","data":{"appId":"app-id-343","userId":user,"token":"t","ack":true}}))
            .await?;
        let reply = c.expect("AUTH_CLIENT_REPLY").await?;
        if reply["data"]["isAuthenticated"] != json!(true) || reply["data"]["ack"] != json!(true) {
            bail!("{user} not authenticated with acks: {reply}");
        }
        c.user = user.to_owned();
        Ok(c)
    }

    /// `ACK {ids}` for the numbered frames given.
    pub async fn ack(&mut self, frames: &[&Value]) -> anyhow::Result<()> {
        let ids: Vec<&Value> = frames.iter().map(|f| &f["id"]).collect();
        self.send(&json!({"type":"ACK","data":{"ids":ids}})).await
    }

    /// Sends AUTH_CLIENT and returns the AUTH_CLIENT_REPLY.
    pub async fn auth(&mut self, user: &str, app_id: &str) -> anyhow::Result<Value> {
        self.send(&json!({"type":"AUTH_CLIENT","data":{"appId":app_id,"userId":user,"token":"t"}}))
            .await?;
        self.expect("AUTH_CLIENT_REPLY").await
    }

    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.send_text(&frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// A MESSAGE to `to`.
    pub async fn message(
        &mut self,
        to: &str,
        content: &str,
        feature: &str,
        reference: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut frame =
            json!({"type":"MESSAGE","feature":feature,"data":{"to":to,"content":content}});
        if let Some(r) = reference {
            frame["reference"] = json!(r);
        }
        self.send(&frame).await
    }

    /// The next text frame as JSON; an error if the socket ends or nothing comes in time.
    pub async fn next(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("{}: no frame within {WAIT:?}", self.user))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(Message::Close(f))) => bail!("{}: socket closed: {f:?}", self.user),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("{}: socket error: {e}", self.user),
                None => bail!("{}: socket ended", self.user),
            }
        }
    }

    /// The next frame, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let frame = self.next().await?;
        if frame["type"] != json!(kind) {
            bail!("{}: expected {kind}, got {frame}", self.user);
        }
        Ok(frame)
    }

    /// Waits for the socket to end; returns the close frame if the server sent one. Frames
    /// that arrive first are returned too.
    pub async fn ended(&mut self) -> anyhow::Result<(Ended, Vec<Value>)> {
        let mut seen = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("{}: socket still open after {WAIT:?}", self.user))?;
            match msg {
                Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t)?),
                Some(Ok(Message::Close(f))) => return Ok((Ended::Closed(f), seen)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok((Ended::Dropped, seen)),
            }
        }
    }

    /// A barrier: sends a message to oneself on each path (FAST and RELIABLE, which are
    /// separate buses in split mode) and returns every frame that arrived before both came
    /// back. One sender's frames are handled in order on each path, so whatever was sent
    /// before has been handled.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<Value>> {
        self.syncs += 1;
        let user = self.user.clone();
        let mut markers = Vec::new();
        for feature in ["FAST", "RELIABLE"] {
            let marker = format!("sync-{}-{}-{feature}", self.user, self.syncs);
            self.message(&user, &marker, feature, None).await?;
            markers.push(json!(marker));
        }
        let mut before = Vec::new();
        while !markers.is_empty() {
            let frame = self.next().await?;
            let content = &frame["data"]["content"];
            if frame["type"] == "MESSAGE"
                && frame["data"]["from"] == json!(user)
                && let Some(i) = markers.iter().position(|m| m == content)
            {
                markers.remove(i);
                if frame["id"].is_string() {
                    // An acking socket: the marker is kept until acknowledged.
                    self.ack(&[&frame]).await?;
                }
                continue;
            }
            before.push(frame);
        }
        Ok(before)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Closes with code 1000 and waits (5 s at most) for the server's close frame, as a browser
    /// does; an error if the connection ends without one.
    pub async fn close_cleanly(mut self) -> anyhow::Result<CloseFrame> {
        let frame = CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        };
        self.ws.close(Some(frame)).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => return Ok(f),
                    Some(Ok(Message::Close(None))) => bail!("a close frame without a code"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("no close frame: {e}"),
                    None => bail!("no close frame: the connection ended"),
                }
            }
        });
        answer.await.context("no close frame within 5 s")?
    }
}
