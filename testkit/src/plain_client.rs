//! A plain text WebSocket client, for the URL form of channels
//! (`/channels/<channel>/users/<user>`): it sends and reads text as it is, no JSON frames.
//! Every wait is bounded by [`WAIT`](crate::client::WAIT).

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::WAIT;

pub struct PlainClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The URL form on the connector whose `/ws` URL is `ws_url`: `path` is what follows the host
/// (`/channels/general/users/ANZ-1?appId=..`).
pub fn plain_url(ws_url: &str, path: &str) -> String {
    let base = ws_url.strip_suffix("/ws").unwrap_or(ws_url);
    format!("{base}{path}")
}

impl PlainClient {
    pub async fn connect(url: &str) -> anyhow::Result<PlainClient> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {url}"))?;
        Ok(PlainClient { ws })
    }

    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// The next text frame as it came; an error if the socket ends or nothing comes in time.
    pub async fn next(&mut self) -> anyhow::Result<String> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("plain client: no frame within {WAIT:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(f))) => bail!("plain client: socket closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("plain client: socket error: {e}"),
                None => bail!("plain client: socket ended"),
            }
        }
    }

    /// Waits for the server to close the socket; its close frame, and any text before it.
    pub async fn closed(&mut self) -> anyhow::Result<(Option<CloseFrame>, Vec<String>)> {
        let mut seen = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("plain client: socket still open after {WAIT:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => seen.push(t.to_string()),
                Some(Ok(Message::Close(f))) => return Ok((f, seen)),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("plain client: socket error before a close frame: {e}"),
                None => bail!("plain client: socket ended without a close frame"),
            }
        }
    }
}
