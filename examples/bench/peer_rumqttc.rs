//! The same workloads driven through rumqttc, the most used pure-Rust MQTT client (its own
//! event loop on tokio, no C engine): a peer, not a baseline of this crate's engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use crate::{BoxError, Case, Sample};

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A client with `window` messages in flight and room for `payload`-sized packets.
fn client(port: u16, id: &str, window: usize, payload: usize) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(u16::try_from(window).unwrap_or(u16::MAX));
    let max = payload + 1024;
    o.set_max_packet_size(max.max(10 * 1024), max.max(10 * 1024));
    AsyncClient::new(o, window.max(10))
}

/// Polls `el` until the broker acknowledged the subscription.
async fn until_subscribed(el: &mut EventLoop) -> Result<(), BoxError> {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            return Ok(());
        }
    }
}

pub async fn throughput(
    port: u16,
    window: usize,
    case: Case,
    n: usize,
    run: u64,
) -> Result<Sample, BoxError> {
    let topic = format!("bench/{run}");
    let q = qos(case.qos);
    let (sub, mut sub_el) = client(port, &format!("bench-{run}-rsub"), window, case.payload);
    sub.subscribe(topic.as_str(), q).await?;
    until_subscribed(&mut sub_el).await?;
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    got += 1;
                    counter.store(got, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Instant::now())
    });

    let (publ, mut pub_el) = client(port, &format!("bench-{run}-rpub"), window, case.payload);
    // Connected before the clock starts, as the others are.
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = pub_el.poll().await? {
            break;
        }
    }
    let payload = vec![0x5a_u8; case.payload];
    let cpu_start = crate::Cpu::now();
    let start = Instant::now();
    // The event loop counts what is done: the acknowledgement of each publish (its
    // write, at QoS 0).
    let sender = {
        let (publ, topic) = (publ.clone(), topic.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                if publ
                    .publish(topic.as_str(), q, false, payload.clone())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let mut done = 0;
    while done < n {
        match pub_el.poll().await? {
            Event::Outgoing(Outgoing::Publish(_)) if case.qos == 0 => done += 1,
            Event::Incoming(Packet::PubAck(_)) if case.qos == 1 => done += 1,
            Event::Incoming(Packet::PubComp(_)) if case.qos == 2 => done += 1,
            _ => {}
        }
    }
    let published = Instant::now();
    sender.await?;
    // The subscriber's loop runs on while the publisher's is polled here.
    let (received, end) = crate::finish_receiving(receiver, &count).await?;
    let elapsed = end.max(published) - start;
    let cpu = crate::Cpu::since(cpu_start);
    let _ = publ.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), pub_el.poll()).await;
    let _ = sub.disconnect().await;
    Ok(Sample {
        received,
        expected: n,
        elapsed,
        refused: 0,
        cpu,
    })
}

/// `trips` round trips on one connection: publish, then poll until both the message came
/// back and the publish was acknowledged (written, at QoS 0); the time is taken when the
/// message arrives, as for this crate.
pub async fn latency(
    port: u16,
    window: usize,
    q: u8,
    payload: usize,
    trips: usize,
    run: u64,
) -> Result<Vec<Duration>, BoxError> {
    let topic = format!("bench/{run}");
    let (c, mut el) = client(port, &format!("bench-{run}-rlat"), window, payload);
    c.subscribe(topic.as_str(), qos(q)).await?;
    until_subscribed(&mut el).await?;
    let body = vec![0x5a_u8; payload];
    let mut out = Vec::with_capacity(trips);
    for i in 0..crate::LATENCY_WARMUP + trips {
        let started = Instant::now();
        c.publish(topic.as_str(), qos(q), false, body.clone())
            .await?;
        let (mut acked, mut received) = (false, None);
        while !(acked && received.is_some()) {
            match el.poll().await? {
                Event::Incoming(Packet::Publish(_)) => received = Some(Instant::now()),
                Event::Outgoing(Outgoing::Publish(_)) if q == 0 => acked = true,
                Event::Incoming(Packet::PubAck(_)) if q == 1 => acked = true,
                Event::Incoming(Packet::PubComp(_)) if q == 2 => acked = true,
                _ => {}
            }
        }
        if let (true, Some(at)) = (i >= crate::LATENCY_WARMUP, received) {
            out.push(at - started);
        }
    }
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    Ok(out)
}
