//! Fuzzes topic validation and matching.
//!
//! Run from the crate root with `cargo +nightly fuzz run topic`. The first input
//! byte chooses where the rest is split into a topic and a filter; both halves
//! are decoded as lossy UTF-8.

#![no_main]

use aiomqtt::{Topic, Wildcard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let topic = String::from_utf8_lossy(&rest[..split]);
    let filter = String::from_utf8_lossy(&rest[split..]);

    let wildcard = Wildcard::new(filter.as_ref());
    if let Ok(wildcard) = &wildcard {
        assert_eq!(wildcard.as_str(), filter);
    }

    match Topic::new(topic.as_ref()) {
        Ok(topic) => {
            // Every topic is a filter that matches itself.
            assert!(Wildcard::new(topic.as_str()).is_ok());
            assert!(topic.matches(&topic));
            let matched = topic.matches(filter.as_ref());
            // An invalid filter matches nothing.
            assert!(!matched || wildcard.is_ok());
            if let Ok(wildcard) = &wildcard {
                assert_eq!(topic.matches(wildcard), matched);
            }
        }
        Err(_) => {
            // Also exercise the filter rules on the topic half.
            let _ = Wildcard::new(topic.as_ref());
        }
    }
});
