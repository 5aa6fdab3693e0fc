//! Topic names and topic filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7 and §4.8.2).
//!
//! [`Topic`] is a concrete topic name, the kind a message is published to.
//! [`Wildcard`] is a topic filter, the kind a client subscribes to; it may
//! contain the wildcards `+` (one level) and `#` (any number of trailing
//! levels), and may be a shared subscription `$share/<group>/<filter>`.
//!
//! Both are validated when they are built, so a value of either type is always
//! acceptable to a broker as far as the specification's syntax goes.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The longest topic name or filter, in bytes of UTF-8: MQTT strings carry a
/// two-byte length prefix (MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4).
const MAX_LEN: usize = 65_535;

/// The first level of a shared subscription's filter (MQTT 5 §4.8.2).
const SHARE_PREFIX: &str = "$share";

/// The rules topic names and filters have in common: non-empty, at most
/// [`MAX_LEN`] bytes, no U+0000.
fn check_common(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > MAX_LEN {
        return Err("must be at most 65535 bytes long (UTF-8)");
    }
    if s.contains('\0') {
        return Err("must not contain the null character U+0000");
    }
    Ok(())
}

/// Validates a topic name.
fn validate_topic(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > MAX_LEN {
        return Err("must be at most 65535 bytes long (UTF-8)");
    }
    // This runs for every message, both ways (on Paho's receive thread for incoming
    // ones): one pass, eight bytes at a time.
    let (nul, wildcard) = scan(s.as_bytes());
    if nul {
        return Err("must not contain the null character U+0000");
    }
    if wildcard {
        return Err("must not contain the wildcards '+' or '#'");
    }
    if s.strip_prefix(SHARE_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return Err("must not start with the level `$share`, reserved for shared subscriptions");
    }
    Ok(())
}

/// Whether `bytes` hold a NUL, and whether they hold `+` or `#`. All three are ASCII, so
/// they never occur inside a multi-byte character.
fn scan(bytes: &[u8]) -> (bool, bool) {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Non-zero iff some byte of `word` is `b` (the classic zero-byte test on `word ^ b…b`).
    let holds = |word: u64, b: u8| {
        let x = word ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let (mut nul, mut wildcard) = (0, 0);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_ne_bytes(word);
        nul |= holds(word, 0);
        wildcard |= holds(word, b'+') | holds(word, b'#');
    }
    let rest = chunks.remainder();
    (
        nul != 0 || rest.contains(&0),
        wildcard != 0 || rest.iter().any(|&b| b == b'+' || b == b'#'),
    )
}

/// Validates a topic filter, including the shared-subscription syntax.
fn validate_filter(s: &str) -> Result<(), &'static str> {
    check_common(s)?;
    if first_level(s) == SHARE_PREFIX {
        let rest = s.get(SHARE_PREFIX.len() + 1..).unwrap_or("");
        let (group, filter) = rest.split_once('/').unwrap_or((rest, ""));
        if group.is_empty() {
            return Err("a shared subscription needs a share name: `$share/<name>/<filter>`");
        }
        if group.contains(['+', '#']) {
            return Err("the share name of a shared subscription must not contain '+' or '#'");
        }
        if filter.is_empty() {
            return Err(
                "a shared subscription needs a topic filter after the share name: \
                 `$share/<name>/<filter>`",
            );
        }
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" if levels.peek().is_none() => {}
            _ if level.contains('#') => {
                return Err("'#' is allowed only as the whole last level");
            }
            _ if level.contains('+') => return Err("'+' is allowed only as a whole level"),
            _ => {}
        }
    }
    Ok(())
}

/// The text before the first `/` (the whole string if there is none).
fn first_level(s: &str) -> &str {
    s.split_once('/').map_or(s, |(first, _)| first)
}

/// Removes `$share/<group>/` from a *valid* filter, if it is a shared subscription.
fn strip_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, inner)| inner),
        None => filter,
    }
}

/// Whether the topic name `topic` (assumed valid) matches the filter `filter`.
fn topic_matches(topic: &str, filter: &str) -> bool {
    if validate_filter(filter).is_err() {
        return false;
    }
    let filter = strip_share(filter);
    // MQTT §4.7.2: a filter starting with a wildcard does not match a topic
    // name starting with `$`.
    if topic.starts_with('$') && matches!(first_level(filter), "+" | "#") {
        return false;
    }
    let mut topic_levels = topic.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (topic_levels.next(), filter_levels.next()) {
            (None, None) => return true,
            // The topic is exhausted: `a/b` still matches `a/b/#`, as in aiomqtt.
            (None, Some(f)) => return f == "#",
            (Some(_), None) => return false,
            (Some(_), Some("#")) => return true,
            (Some(t), Some(f)) => {
                if f != "+" && f != t {
                    return false;
                }
            }
        }
    }
}

/// Implements the conversions and comparisons the two string newtypes share.
macro_rules! string_newtype {
    ($ty:ident, $what:literal) => {
        impl $ty {
            /// The longest value accepted, in bytes of UTF-8 (65,535).
            pub const MAX_LEN: usize = MAX_LEN;

            #[doc = concat!("The ", $what, " as a string slice.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            #[doc = concat!("Consumes the ", $what, " and returns its string.")]
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Consistent with `Eq`, `Ord` and `Hash`, so a map keyed by this type can
        /// be looked up with a `&str`.
        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = Error;

            fn try_from(value: &str) -> Result<Self, Error> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;

            fn try_from(value: String) -> Result<Self, Error> {
                Self::new(value)
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$ty> for str {
            fn eq(&self, other: &$ty) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$ty> for &str {
            fn eq(&self, other: &$ty) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$ty> for String {
            fn eq(&self, other: &$ty) -> bool {
                *self == other.0
            }
        }
    };
}

/// A topic name: where a message is published (MQTT §4.7).
///
/// Built with [`Topic::new`], `TryFrom<&str>`, `TryFrom<String>` or [`str::parse`],
/// which reject a name that is
/// - empty,
/// - longer than 65,535 bytes of UTF-8 (aiomqtt counts characters instead; the
///   specification's limit is in bytes),
/// - contains U+0000,
/// - contains a wildcard character `+` or `#` anywhere,
/// - has `$share` as its first level: that prefix marks a shared subscription
///   (MQTT 5 §4.8.2), so such a name could not be subscribed to as itself. This
///   keeps every topic name a valid [`Wildcard`] that matches itself.
///
/// Topics compare, order and hash as their strings.
///
/// ```
/// use aiomqtt::Topic;
///
/// let topic: Topic = "sensors/kitchen/temperature".parse()?;
/// assert_eq!(topic, "sensors/kitchen/temperature");
/// assert!(Topic::new("sensors/+/temperature").is_err());
/// # Ok::<(), aiomqtt::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Validates `topic` as a topic name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] with the rule the name breaks (see [`Topic`]).
    pub fn new(topic: impl Into<String>) -> Result<Self, Error> {
        let topic = topic.into();
        match validate_topic(&topic) {
            Ok(()) => Ok(Topic(topic)),
            Err(reason) => Err(Error::InvalidTopic { topic, reason }),
        }
    }

    /// Whether this topic matches the topic filter `filter` (a `&str`, a
    /// `String`, a [`Wildcard`] or a reference to one).
    ///
    /// The rules are aiomqtt 2.5's `Topic.matches`:
    /// - levels are separated by `/` and compared exactly (case-sensitive);
    /// - `+` matches exactly one level, including an empty one (`+/a` matches `/a`);
    /// - `#` matches any number of levels, including none: `a/b` matches `a/b/#`;
    /// - a shared subscription's `$share/<group>/` prefix is removed first, so
    ///   `a/b` matches `$share/workers/a/+`.
    ///
    /// Two differences from aiomqtt:
    /// - As MQTT §4.7.2 requires, a topic starting with `$` (such as `$SYS/uptime`)
    ///   does **not** match a filter whose first level is `+` or `#`. This is
    ///   checked after removing `$share/<group>/`, so `$SYS/uptime` matches
    ///   neither `#` nor `$share/g/#`, but it does match `$SYS/#`.
    /// - A `filter` that is not a valid [`Wildcard`] matches nothing (aiomqtt
    ///   raises `ValueError`).
    ///
    /// ```
    /// use aiomqtt::{Topic, Wildcard};
    ///
    /// let topic = Topic::new("sensors/kitchen/temperature")?;
    /// assert!(topic.matches("sensors/+/temperature"));
    /// assert!(topic.matches("sensors/#"));
    /// assert!(topic.matches("$share/dashboards/sensors/kitchen/+"));
    /// assert!(!topic.matches("sensors/+"));
    ///
    /// let all = Wildcard::new("#")?;
    /// assert!(topic.matches(&all));
    /// assert!(!Topic::new("$SYS/broker/uptime")?.matches(&all)); // MQTT §4.7.2
    ///
    /// assert!(!topic.matches("sensors/#/temperature")); // not a valid filter
    /// # Ok::<(), aiomqtt::Error>(())
    /// ```
    pub fn matches(&self, filter: impl AsRef<str>) -> bool {
        topic_matches(&self.0, filter.as_ref())
    }
}

string_newtype!(Topic, "topic name");

/// A topic filter: what a client subscribes to (MQTT §4.7), possibly with
/// wildcards, possibly a shared subscription (MQTT 5 §4.8.2).
///
/// Built with [`Wildcard::new`], `TryFrom<&str>`, `TryFrom<String>`,
/// [`str::parse`] or from a [`Topic`] (every topic name is a filter that
/// matches only itself). Construction rejects a filter that
/// - is empty,
/// - is longer than 65,535 bytes of UTF-8 (aiomqtt counts characters instead),
/// - contains U+0000,
/// - has `#` anywhere but as the whole last level (`a/#` is fine, `a/#/b` and
///   `a/b#` are not),
/// - has `+` anywhere but as a whole level (`a/+/c` is fine, `a/b+` is not),
/// - starts with the level `$share` but is not `$share/<name>/<filter>` with a
///   non-empty name free of `+` and `#`, and a non-empty filter.
///
/// Wildcards compare, order and hash as their strings.
///
/// ```
/// use aiomqtt::Wildcard;
///
/// assert!(Wildcard::new("sensors/+/temperature").is_ok());
/// assert!(Wildcard::new("$share/workers/jobs/#").is_ok());
/// assert!(Wildcard::new("sensors/#/temperature").is_err());
/// assert!(Wildcard::new("$share/workers").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Wildcard(String);

impl Wildcard {
    /// Validates `wildcard` as a topic filter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidWildcard`] with the rule the filter breaks (see [`Wildcard`]).
    pub fn new(wildcard: impl Into<String>) -> Result<Self, Error> {
        let wildcard = wildcard.into();
        match validate_filter(&wildcard) {
            Ok(()) => Ok(Wildcard(wildcard)),
            Err(reason) => Err(Error::InvalidWildcard { wildcard, reason }),
        }
    }
}

string_newtype!(Wildcard, "topic filter");

/// Every topic name is a valid filter (matching only itself); no check is needed.
impl From<Topic> for Wildcard {
    fn from(topic: Topic) -> Wildcard {
        Wildcard(topic.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The word-at-a-time scan finds each of the three bytes at every position of every
    /// length up to three words, beside every other byte value, as a plain search does.
    #[test]
    fn the_scan_finds_nul_and_wildcards_wherever_they_are() {
        let naive = |b: &[u8]| (b.contains(&0), b.iter().any(|&c| c == b'+' || c == b'#'));
        for len in 0..=24 {
            for pos in 0..len {
                for special in [0u8, b'+', b'#'] {
                    for filler in 1..=255u8 {
                        let mut bytes = vec![filler; len];
                        bytes[pos] = special;
                        assert_eq!(scan(&bytes), naive(&bytes), "{bytes:?}");
                    }
                }
            }
            assert_eq!(scan(&vec![b'a'; len]), (false, false));
        }
    }

    fn topic_reason(s: &str) -> &'static str {
        match Topic::new(s) {
            Err(Error::InvalidTopic { topic, reason }) => {
                assert_eq!(topic, s);
                reason
            }
            other => panic!("{s:?} should be an invalid topic, got {other:?}"),
        }
    }

    fn wildcard_reason(s: &str) -> &'static str {
        match Wildcard::new(s) {
            Err(Error::InvalidWildcard { wildcard, reason }) => {
                assert_eq!(wildcard, s);
                reason
            }
            other => panic!("{s:?} should be an invalid wildcard, got {other:?}"),
        }
    }

    fn m(topic: &str, filter: &str) -> bool {
        Topic::new(topic).unwrap().matches(filter)
    }

    #[test]
    fn valid_topics() {
        for s in [
            "a",
            "/",
            "//",
            "/a",
            "a/",
            " ",
            "$SYS/broker",
            "$",
            "x/$share/g/a",
            "$sharex/g",
            "$SHARE/g/a",
            "ünïcödé/🦀",
        ] {
            assert!(Topic::new(s).is_ok(), "{s:?}");
            assert!(Wildcard::new(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn invalid_topics_with_reasons() {
        assert_eq!(topic_reason(""), "must not be empty");
        assert!(topic_reason("a\0b").contains("U+0000"));
        assert!(topic_reason("\0").contains("U+0000"));
        assert!(topic_reason("a/+").contains("wildcards"));
        assert!(topic_reason("a+b").contains("wildcards"));
        assert!(topic_reason("#").contains("wildcards"));
        assert!(topic_reason("a#").contains("wildcards"));
        assert!(topic_reason("$share").contains("$share"));
        assert!(topic_reason("$share/g/a").contains("$share"));
        assert!(topic_reason("$share/").contains("$share"));
    }

    #[test]
    fn length_limit_is_in_bytes() {
        assert!(Topic::new("a".repeat(MAX_LEN)).is_ok());
        assert!(Wildcard::new("a".repeat(MAX_LEN)).is_ok());
        assert!(topic_reason(&"a".repeat(MAX_LEN + 1)).contains("65535"));
        assert!(wildcard_reason(&"a".repeat(MAX_LEN + 1)).contains("65535"));
        // 'é' is two bytes: 32,768 characters but 65,536 bytes.
        let wide = "é".repeat(32_768);
        assert_eq!(wide.len(), MAX_LEN + 1);
        assert!(Topic::new(wide.clone()).is_err());
        assert!(Wildcard::new(wide).is_err());
        let wide_ok = format!("{}a", "é".repeat(32_767));
        assert_eq!(wide_ok.len(), MAX_LEN);
        assert!(Topic::new(wide_ok).is_ok());
    }

    #[test]
    fn valid_wildcards() {
        for s in [
            "#",
            "+",
            "+/+",
            "/+",
            "+/",
            "a/#",
            "/#",
            "+/#",
            "a/+/c/#",
            "$SYS/#",
            "$share/g/#",
            "$share/g/+",
            "$share/g/a/b",
            "$share/g//",
            "$share/g/$share/h/x",
            "$sharex/+/#",
            "$SHARE/+/a",
            "a/$share/+",
        ] {
            assert!(Wildcard::new(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn invalid_wildcards_with_reasons() {
        assert_eq!(wildcard_reason(""), "must not be empty");
        assert!(wildcard_reason("a/\0").contains("U+0000"));
        assert!(wildcard_reason("#/").contains("'#'"));
        assert!(wildcard_reason("#/a").contains("'#'"));
        assert!(wildcard_reason("a/#/c").contains("'#'"));
        assert!(wildcard_reason("a#").contains("'#'"));
        assert!(wildcard_reason("a/#b").contains("'#'"));
        assert!(wildcard_reason("##").contains("'#'"));
        assert!(wildcard_reason("a/b+").contains("'+'"));
        assert!(wildcard_reason("++").contains("'+'"));
        assert!(wildcard_reason("+a/b").contains("'+'"));
        // Both wildcards in one level: reported as the '#' rule.
        assert!(wildcard_reason("+#").contains("'#'"));
    }

    #[test]
    fn invalid_shared_subscriptions() {
        assert!(wildcard_reason("$share").contains("share name"));
        assert!(wildcard_reason("$share/").contains("share name"));
        assert!(wildcard_reason("$share//a").contains("share name"));
        assert!(wildcard_reason("$share/g").contains("topic filter after"));
        assert!(wildcard_reason("$share/g/").contains("topic filter after"));
        assert!(wildcard_reason("$share/+/a").contains("must not contain"));
        assert!(wildcard_reason("$share/#/a").contains("must not contain"));
        assert!(wildcard_reason("$share/g+/a").contains("must not contain"));
        assert!(wildcard_reason("$share/#").contains("must not contain"));
        // The inner filter follows the usual rules.
        assert!(wildcard_reason("$share/g/a/#/b").contains("'#'"));
    }

    #[test]
    fn exact_and_single_level() {
        assert!(m("a", "a"));
        assert!(!m("a", "b"));
        assert!(!m("a", "A"));
        assert!(m("a/b", "a/+"));
        assert!(m("a/b", "+/b"));
        assert!(m("a/b", "+/+"));
        assert!(!m("a/b", "+"));
        assert!(!m("a", "+/+"));
        assert!(!m("a/b/c", "a/+"));
        assert!(m("/", "/"));
        assert!(m("/", "+/+"));
        assert!(!m("/", "+"));
    }

    #[test]
    fn plus_matches_an_empty_level() {
        assert!(m("/a", "+/a"));
        assert!(m("a/", "a/+"));
        assert!(m("a//b", "a/+/b"));
        assert!(!m("a", "a/+"));
    }

    #[test]
    fn multi_level_includes_the_parent() {
        assert!(m("a", "#"));
        assert!(m("a/b/c", "#"));
        assert!(m("a", "a/#"));
        assert!(m("a/b", "a/b/#"));
        assert!(m("a/", "a/#"));
        assert!(m("a/b/c", "a/#"));
        assert!(m("a/b", "+/#"));
        assert!(m("a", "+/#"));
        assert!(!m("a", "a/b/#"));
        assert!(!m("b", "a/#"));
        assert!(m("/", "#"));
        assert!(m("/a", "/#"));
    }

    #[test]
    fn shared_prefix_is_stripped() {
        assert!(m("a/b", "$share/g/a/b"));
        assert!(m("a/b", "$share/g/a/+"));
        assert!(m("a/b", "$share/g/#"));
        assert!(!m("a/b", "$share/g/a"));
        assert!(!m("g/a/b", "$share/g/a/b"));
        // Not shared: compared literally.
        assert!(m("$SHARE/g/a", "$SHARE/g/a"));
        assert!(!m("a", "$SHARE/g/a"));
        assert!(m("x/$share/g/a", "x/$share/+/a"));
        // A shared filter whose inner filter is itself `$share/...`.
        assert!(m("$share2/x", "$share/g/$share2/+"));
    }

    #[test]
    fn dollar_topics_and_leading_wildcards() {
        assert!(!m("$SYS/uptime", "#"));
        assert!(!m("$SYS/uptime", "+/uptime"));
        assert!(!m("$SYS/uptime", "+/#"));
        assert!(!m("$", "#"));
        assert!(!m("$", "+"));
        assert!(!m("$SYS/uptime", "$share/g/#"));
        assert!(!m("$SYS/uptime", "$share/g/+/uptime"));
        assert!(m("$SYS/uptime", "$SYS/#"));
        assert!(m("$SYS/uptime", "$SYS/+"));
        assert!(m("$SYS/uptime", "$share/g/$SYS/#"));
        assert!(m("$", "$"));
        // Only the first character counts.
        assert!(m("a$/b", "#"));
        assert!(m("a/$SYS", "a/+"));
        assert!(m("a/$SYS", "+/+"));
    }

    #[test]
    fn invalid_filters_match_nothing() {
        for filter in [
            "",
            "a/#/b",
            "a/b#",
            "a+",
            "$share/g",
            "$share/+/a",
            "a\0",
            "#/",
        ] {
            assert!(!m("a/b", filter), "{filter:?}");
            assert!(!m("a", filter), "{filter:?}");
        }
        assert!(!m("a", &"a".repeat(MAX_LEN + 1)));
    }

    #[test]
    fn matches_accepts_every_string_kind() {
        let topic = Topic::new("a/b").unwrap();
        let filter = Wildcard::new("a/+").unwrap();
        assert!(topic.matches("a/+"));
        assert!(topic.matches(String::from("a/+")));
        assert!(topic.matches(&filter));
        assert!(topic.matches(filter));
        assert!(topic.matches(&topic));
    }

    #[test]
    fn conversions_and_traits() {
        let topic = Topic::try_from("a/b").unwrap();
        assert_eq!(topic.as_str(), "a/b");
        assert_eq!(topic.to_string(), "a/b");
        assert_eq!(format!("{topic:?}"), "Topic(\"a/b\")");
        assert_eq!(topic, "a/b");
        assert_eq!(topic, *"a/b");
        assert_eq!(topic, String::from("a/b"));
        assert_eq!("a/b", topic);
        assert_ne!(topic, "a/c");
        assert_eq!(Topic::try_from(String::from("a/b")).unwrap(), topic);
        assert_eq!("a/b".parse::<Topic>().unwrap(), topic);
        assert!("a/#".parse::<Topic>().is_err());
        let as_ref: &str = topic.as_ref();
        assert_eq!(as_ref, "a/b");

        let wildcard: Wildcard = topic.clone().into();
        assert_eq!(wildcard, "a/b");
        assert_eq!(wildcard.to_string(), "a/b");
        assert_eq!(format!("{wildcard:?}"), "Wildcard(\"a/b\")");
        assert_eq!("a/+".parse::<Wildcard>().unwrap(), "a/+");
        assert_eq!(Wildcard::try_from("#").unwrap().into_string(), "#");
        assert_eq!(String::from(topic.clone()), "a/b");
        assert_eq!(topic.into_string(), "a/b");
    }

    #[test]
    fn ordering_and_hashing_follow_the_string() {
        let mut topics: Vec<Topic> = ["b", "a/b", "a", "B"]
            .into_iter()
            .map(|s| Topic::new(s).unwrap())
            .collect();
        topics.sort();
        let sorted: Vec<&str> = topics.iter().map(Topic::as_str).collect();
        assert_eq!(sorted, ["B", "a", "a/b", "b"]);

        let mut counts: HashMap<Wildcard, u32> = HashMap::new();
        counts.insert(Wildcard::new("a/#").unwrap(), 1);
        assert_eq!(counts.get("a/#"), Some(&1));
        assert_eq!(counts.get("a/+"), None);
    }

    #[test]
    fn error_display_names_the_value_and_rule() {
        let err = Topic::new("a/#").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid topic \"a/#\": must not contain the wildcards '+' or '#'"
        );
        let err = Wildcard::new("a/#/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid wildcard \"a/#/b\": '#' is allowed only as the whole last level"
        );
    }
}
