//! What an automatic reconnect that finds no session subscribes again: the filters the
//! broker granted and the application did not unsubscribe, as the acknowledgements
//! said filter by filter. A fake broker answers each SUBACK and UNSUBACK and then drops
//! the link; the next connection's SUBSCRIBE shows the list.

use std::future::IntoFuture;
use std::time::Duration;

use aiomqtt::{Client, Connection, Error, ProtocolVersion, ReasonCode, ReconnectPolicy};

use crate::support::fault_proxy::decode_varint;
use crate::support::*;

const T: Duration = Duration::from_secs(30);
const EVENT: Duration = Duration::from_secs(5);

fn client(fb: &FakeBroker) -> Client {
    Client::builder("127.0.0.1")
        .port(fb.port())
        .protocol(ProtocolVersion::V5)
        .timeout(Duration::from_secs(5))
        .reconnect(
            ReconnectPolicy::new()
                .initial_delay(Duration::from_millis(50))
                .jitter(0.0),
        )
        .build()
        .unwrap()
}

/// The filters of a v5 SUBSCRIBE, in order.
fn subscribe_filters(p: &Packet) -> Vec<String> {
    let body = &p.body;
    let (props_len, used) = decode_varint(&body[2..]).expect("property length");
    let mut at = 2 + used + props_len;
    let mut filters = Vec::new();
    while at + 2 <= body.len() {
        let len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        filters.push(String::from_utf8(body[at + 2..at + 2 + len].to_vec()).unwrap());
        at += 2 + len + 1;
    }
    filters
}

/// Unsubscribes from `filters` in one call, the broker answering `codes`: the call's result.
async fn unsubscribe(
    conn: &Connection,
    fc: &mut FakeConn,
    filters: &[&str],
    codes: &[u8],
) -> Result<(), Error> {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let call = tokio::spawn(conn.unsubscribe(filters).into_future());
    let p = fc.expect(PacketType::Unsubscribe, EVENT).await;
    fc.send(&packets::unsuback(p.packet_id().unwrap(), codes, Some(&[])))
        .await
        .unwrap();
    call.await.unwrap()
}

/// Subscribes to `filters` in one call, the broker answering `codes`.
async fn subscribe(conn: &Connection, fc: &mut FakeConn, filters: &[&str], codes: &[u8]) {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let call = tokio::spawn(conn.subscribe(filters).into_future());
    let p = fc.expect(PacketType::Subscribe, EVENT).await;
    fc.send(&packets::suback(p.packet_id().unwrap(), codes, Some(&[])))
        .await
        .unwrap();
    let granted = call.await.unwrap().unwrap();
    assert_eq!(
        granted,
        codes
            .iter()
            .map(|&c| ReasonCode::from(c))
            .collect::<Vec<_>>()
    );
}

/// Drops the link; the client reconnects and finds no session. Returns the filters it
/// subscribes again before a marker subscription the application makes once the link is
/// up again; `fc` becomes the new link.
async fn resubscribed_with_marker(
    fb: &FakeBroker,
    fc: &mut FakeConn,
    conn: &Connection,
) -> Vec<String> {
    fc.close_rst().await;
    let mut next = fb.accept().await;
    next.send_connack(false, 0).await.unwrap();
    let mut filters = Vec::new();
    let marker = tokio::spawn({
        let conn = conn.clone();
        async move {
            // Made once the link is up, after any resubscription.
            conn.subscribe("marker").await
        }
    });
    loop {
        let p = next.expect(PacketType::Subscribe, EVENT).await;
        let these = subscribe_filters(&p);
        let codes = vec![0; these.len()];
        next.send(&packets::suback(p.packet_id().unwrap(), &codes, Some(&[])))
            .await
            .unwrap();
        if these == ["marker"] {
            break;
        }
        filters.extend(these);
    }
    marker.await.unwrap().unwrap();
    *fc = next;
    filters
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partly_refused_subscribe_makes_again_only_what_was_granted() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let (conn, mut fc) = fb.connect(&client(&fb)).await;
        subscribe(&conn, &mut fc, &["a", "b", "c"], &[0x00, 0x87, 0x01]).await;
        let again = resubscribed_with_marker(&fb, &mut fc, &conn).await;
        assert_eq!(again, ["a", "c"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partly_refused_unsubscribe_forgets_what_was_removed() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let (conn, mut fc) = fb.connect(&client(&fb)).await;
        subscribe(&conn, &mut fc, &["a", "b", "c"], &[0, 0, 0]).await;
        let r = unsubscribe(&conn, &mut fc, &["a", "b"], &[0x00, 0x87]).await;
        assert!(
            matches!(r, Err(Error::Code(c)) if c == ReasonCode::from(0x87)),
            "{r:?}"
        );
        // "a" was removed, "b" refused: "b" and "c" are made again.
        let again = resubscribed_with_marker(&fb, &mut fc, &conn).await;
        assert_eq!(again, ["b", "c"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsuback_with_the_wrong_number_of_codes_is_a_protocol_error() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let (conn, mut fc) = fb.connect(&client(&fb)).await;
        for codes in [&[0x00][..], &[0x00, 0x00, 0x00], &[0x00, 0x42]] {
            let r = unsubscribe(&conn, &mut fc, &["a", "b"], codes).await;
            assert!(matches!(r, Err(Error::Protocol(_))), "{codes:?}: {r:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unanswered_calls_count_as_made_and_dropped_ones_do_not() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let (conn, mut fc) = fb.connect(&client(&fb)).await;
        subscribe(&conn, &mut fc, &["a", "b"], &[0, 0]).await;
        // Neither is answered in time: the unsubscribe of "a" counts as done, the
        // subscribe of "z" as made.
        let r = conn
            .unsubscribe("a")
            .timeout(Duration::from_millis(200))
            .await;
        assert!(r.as_ref().is_err_and(Error::is_timeout), "{r:?}");
        fc.expect(PacketType::Unsubscribe, EVENT).await;
        let r = conn
            .subscribe("z")
            .timeout(Duration::from_millis(200))
            .await;
        assert!(r.as_ref().is_err_and(Error::is_timeout), "{r:?}");
        fc.expect(PacketType::Subscribe, EVENT).await;
        // A subscribe dropped before its answer counts as not made, answered or not.
        let dropped = tokio::spawn(conn.subscribe("y").into_future());
        let p = fc.expect(PacketType::Subscribe, EVENT).await;
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        fc.send(&packets::suback(p.packet_id().unwrap(), &[0], Some(&[])))
            .await
            .unwrap();
        let again = resubscribed_with_marker(&fb, &mut fc, &conn).await;
        assert_eq!(again, ["b", "z"]);
    })
    .await;
}
