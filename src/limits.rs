//! Limits a call must respect before anything is sent: MQTT's own (the largest packet a
//! Remaining Length can describe) and, on MQTT 5, what the broker announced in CONNACK
//! (Maximum QoS, Retain Available, Maximum Packet Size, and whether wildcard, shared and
//! identified subscriptions are available). Topic Alias Maximum needs no check: outgoing
//! topic aliases are refused as unsupported (`Properties::check`).
//!
//! A call over a limit fails with its own error and sends nothing, so the connection
//! stays up: a broker would answer the packet by closing it (MQTT 5 §3.2.2.3).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::properties::Wire;
use crate::{Error, Properties, QoS};

/// The largest Remaining Length MQTT can encode (four bytes of Variable Byte Integer).
pub(crate) const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The broker's limits of one link (MQTT 5), or none (MQTT 3 and before CONNACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    max_qos: QoS,
    retain: bool,
    /// Maximum Packet Size, the whole packet; `None`: MQTT's own limit.
    max_packet: Option<u32>,
    wildcard: bool,
    subscription_ids: bool,
    shared: bool,
}

impl Limits {
    /// No limit beyond MQTT's own.
    pub(crate) const NONE: Limits = Limits {
        max_qos: QoS::ExactlyOnce,
        retain: true,
        max_packet: None,
        wildcard: true,
        subscription_ids: true,
        shared: true,
    };

    /// The limits a v5 CONNACK announced (an absent property means no limit).
    pub(crate) fn from_connack(p: &Properties) -> Limits {
        Limits {
            max_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain: p.retain_available.unwrap_or(true),
            max_packet: p.maximum_packet_size,
            wildcard: p.wildcard_subscription_available.unwrap_or(true),
            subscription_ids: p.subscription_identifiers_available.unwrap_or(true),
            shared: p.shared_subscription_available.unwrap_or(true),
        }
    }

    fn pack(self) -> u64 {
        // max_packet: bits 0..32 (0 = none: a Maximum Packet Size of 0 is a protocol
        // error, MQTT 5 §3.2.2.3.6), qos: 48..50, flags: 50..54.
        u64::from(self.max_packet.unwrap_or(0))
            | u64::from(self.max_qos.as_u8()) << 48
            | u64::from(self.retain) << 50
            | u64::from(self.wildcard) << 51
            | u64::from(self.subscription_ids) << 52
            | u64::from(self.shared) << 53
    }

    fn unpack(v: u64) -> Limits {
        let bit = |n: u32| v >> n & 1 == 1;
        Limits {
            max_packet: match v as u32 {
                0 => None,
                n => Some(n),
            },
            max_qos: match v >> 48 & 3 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain: bit(50),
            wildcard: bit(51),
            subscription_ids: bit(52),
            shared: bit(53),
        }
    }

    /// Checks a PUBLISH before it is handed to the engine.
    pub(crate) fn check_publish(
        &self,
        topic: &str,
        payload: usize,
        qos: QoS,
        retain: bool,
        properties: Option<&Properties>,
        v5: bool,
    ) -> Result<(), Error> {
        if qos > self.max_qos {
            return Err(Error::BrokerLimit(format!(
                "the broker's Maximum QoS is {}; publish at QoS {} or lower",
                self.max_qos.as_u8(),
                self.max_qos.as_u8()
            )));
        }
        if retain && !self.retain {
            return Err(Error::BrokerLimit(
                "the broker does not support retained messages (Retain Available 0)".to_owned(),
            ));
        }
        // Everything but the payload: topic, packet id, properties (on MQTT 5 at least
        // their length, 0).
        let props = match properties {
            Some(p) => with_length(wire_len(p)),
            None if v5 => 1,
            None => 0,
        };
        let header = 2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + props;
        let remaining = header.saturating_add(payload);
        if remaining > MAX_REMAINING_LENGTH {
            return Err(Error::PayloadTooLarge {
                size: payload,
                limit: MAX_REMAINING_LENGTH.saturating_sub(header),
            });
        }
        if let Some(max) = self.max_packet {
            let packet = 1 + varint_len(remaining) + remaining;
            if packet > max as usize {
                return Err(Error::BrokerLimit(format!(
                    "a PUBLISH of {packet} bytes (payload {payload}) is over the broker's \
                     Maximum Packet Size of {max} bytes"
                )));
            }
        }
        Ok(())
    }

    /// Checks the filters of a SUBSCRIBE before it is handed to the engine.
    pub(crate) fn check_subscribe<'a>(
        &self,
        filters: impl IntoIterator<Item = &'a str>,
        properties: Option<&Properties>,
    ) -> Result<(), Error> {
        for filter in filters {
            if !self.shared && filter.starts_with("$share/") {
                return Err(Error::BrokerLimit(format!(
                    "the broker does not support shared subscriptions ({filter:?}; Shared \
                     Subscription Available 0)"
                )));
            }
            if !self.wildcard && filter.split('/').any(|l| l == "+" || l == "#") {
                return Err(Error::BrokerLimit(format!(
                    "the broker does not support wildcard subscriptions ({filter:?}; Wildcard \
                     Subscription Available 0)"
                )));
            }
        }
        if !self.subscription_ids
            && properties.is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            return Err(Error::BrokerLimit(
                "the broker does not support Subscription Identifiers (Subscription \
                 Identifier Available 0)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// The limits of the current link, readable on every call without a lock.
#[derive(Debug)]
pub(crate) struct LimitCell(AtomicU64);

impl LimitCell {
    pub(crate) fn new() -> LimitCell {
        LimitCell(AtomicU64::new(Limits::NONE.pack()))
    }
    pub(crate) fn set(&self, limits: Limits) {
        self.0.store(limits.pack(), Ordering::Release);
    }
    pub(crate) fn get(&self) -> Limits {
        Limits::unpack(self.0.load(Ordering::Acquire))
    }
}

/// The bytes of a Variable Byte Integer for `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The properties' bytes preceded by their length.
fn with_length(len: usize) -> usize {
    varint_len(len) + len
}

/// The encoded size of `p`'s properties (identifiers and values).
fn wire_len(p: &Properties) -> usize {
    let mut len = 0;
    p.for_each_wire(&mut |code, value| {
        len += varint_len(usize::from(code));
        len += match value {
            Wire::Byte(_) => 1,
            Wire::Two(_) => 2,
            Wire::Four(_) => 4,
            Wire::VarInt(v) => varint_len(v as usize),
            Wire::Str(s) => 2 + s.len(),
            Wire::Bin(b) => 2 + b.len(),
            Wire::Pair(k, v) => 4 + k.len() + v.len(),
        };
    });
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let l = Limits {
            max_qos: QoS::AtLeastOnce,
            retain: false,
            max_packet: Some(1_000),
            wildcard: false,
            subscription_ids: true,
            shared: false,
        };
        assert_eq!(Limits::unpack(l.pack()), l);
        assert_eq!(Limits::unpack(Limits::NONE.pack()), Limits::NONE);
    }

    #[test]
    fn a_publish_is_measured_as_the_broker_counts_it() {
        let l = Limits {
            max_packet: Some(100),
            ..Limits::NONE
        };
        // MQTT 5, QoS 1, topic "t": 1 + 1 (remaining length) + 2 + 1 + 2 + 1 (properties'
        // length) + payload.
        assert!(
            l.check_publish("t", 92, QoS::AtLeastOnce, false, None, true)
                .is_ok()
        );
        assert!(matches!(
            l.check_publish("t", 93, QoS::AtLeastOnce, false, None, true),
            Err(Error::BrokerLimit(_))
        ));
        let huge = MAX_REMAINING_LENGTH;
        assert!(matches!(
            Limits::NONE.check_publish("t", huge, QoS::AtMostOnce, false, None, false),
            Err(Error::PayloadTooLarge { size, limit }) if size == huge && limit == huge - 3
        ));
    }
}
