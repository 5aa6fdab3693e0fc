//! Copying between Paho's connection to the private endpoint and the link to the broker,
//! both ways, and recording how the link ended: the broker's close and reset are passed
//! on to Paho as a close and a reset, Paho's close (its keep-alive timeout, or a
//! DISCONNECT) to the broker as a close.

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::dial::Upstream;

/// How a relayed link ended, first cause first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The broker (or something on the path) closed the connection.
    PeerClosed,
    /// The connection to the broker was reset or failed.
    Failed(String),
    /// The engine closed its side first: a keep-alive timeout, or a DISCONNECT.
    EngineClosed,
}

/// Where a link records its end (one per link).
pub(crate) type EndSlot = Arc<Mutex<Option<LinkEnd>>>;

fn record(slot: &EndSlot, end: LinkEnd) {
    let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
    if s.is_none() {
        *s = Some(end);
    }
}

/// Buffer per direction.
const CHUNK: usize = 64 * 1024;

/// Relays until both directions are done.
pub(crate) async fn run(paho: TcpStream, upstream: Upstream, end: EndSlot) {
    let _ = paho.set_nodelay(true);
    let (paho_read, paho_write) = paho.into_split();
    match upstream {
        Upstream::Bytes(stream) => {
            let (up_read, up_write) = tokio::io::split(stream);
            tokio::join!(
                engine_to_broker(paho_read, up_write, &end),
                broker_to_engine(up_read, paho_write, &end),
            );
        }
        Upstream::Ws(ws) => {
            let (sink, stream) = (*ws).split();
            tokio::join!(
                engine_to_ws(paho_read, sink, &end),
                ws_to_engine(stream, paho_write, &end),
            );
        }
    }
}

/// Resets Paho's connection (the broker's side was reset).
fn reset(paho: OwnedWriteHalf) {
    let _ = paho.as_ref().set_zero_linger();
    drop(paho);
}

async fn engine_to_broker(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    end: &EndSlot,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record(end, LinkEnd::EngineClosed);
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]).await {
                    record(end, LinkEnd::Failed(e.to_string()));
                    return;
                }
            }
        }
    }
}

async fn broker_to_engine(mut from: impl AsyncRead + Unpin, mut to: OwnedWriteHalf, end: &EndSlot) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                record(end, LinkEnd::PeerClosed);
                let _ = to.shutdown().await;
                return;
            }
            Err(e) => {
                record(end, LinkEnd::Failed(e.to_string()));
                reset(to);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    record(end, LinkEnd::EngineClosed);
                    return;
                }
            }
        }
    }
}

async fn engine_to_ws<S>(mut from: impl AsyncRead + Unpin, mut to: S, end: &EndSlot)
where
    S: futures_util::Sink<WsMessage> + Unpin,
    S::Error: std::fmt::Display,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record(end, LinkEnd::EngineClosed);
                let _ = to.send(WsMessage::Close(None)).await;
                let _ = to.close().await;
                return;
            }
            Ok(n) => {
                let frame = WsMessage::Binary(buf[..n].to_vec().into());
                if let Err(e) = to.send(frame).await {
                    record(end, LinkEnd::Failed(e.to_string()));
                    return;
                }
            }
        }
    }
}

async fn ws_to_engine<S, E>(mut from: S, mut to: OwnedWriteHalf, end: &EndSlot)
where
    S: futures_util::Stream<Item = Result<WsMessage, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(item) = from.next().await {
        match item {
            Ok(WsMessage::Binary(data)) => {
                if to.write_all(&data).await.is_err() {
                    record(end, LinkEnd::EngineClosed);
                    return;
                }
            }
            Ok(WsMessage::Close(_)) => break,
            // Pings are answered by the WebSocket layer; text frames carry no MQTT.
            Ok(_) => {}
            Err(e) => {
                record(end, LinkEnd::Failed(e.to_string()));
                reset(to);
                return;
            }
        }
    }
    record(end, LinkEnd::PeerClosed);
    let _ = to.shutdown().await;
}
