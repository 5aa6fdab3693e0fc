//! Topic names and filters: aiomqtt's own test vectors, then property-based tests.
//! No broker is needed.

use aiomqtt::{Error, Topic, Wildcard};
use proptest::prelude::*;

const MAX_LEN: usize = 65_535;

fn assert_invalid_topic(s: &str) {
    match Topic::new(s) {
        Err(err @ Error::InvalidTopic { .. }) => {
            // aiomqtt: `pytest.raises(ValueError, match="Invalid topic: ")`
            assert!(err.to_string().starts_with("Invalid topic "), "{err}");
        }
        other => panic!("Topic::new({s:?}) should fail with InvalidTopic, got {other:?}"),
    }
}

fn assert_invalid_wildcard(s: &str) {
    match Wildcard::new(s) {
        Err(err @ Error::InvalidWildcard { .. }) => {
            // aiomqtt: `pytest.raises(ValueError, match="Invalid wildcard: ")`
            assert!(err.to_string().starts_with("Invalid wildcard "), "{err}");
        }
        other => panic!("Wildcard::new({s:?}) should fail with InvalidWildcard, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Vectors ported from aiomqtt 2.5.0, tests/test_topic.py (identical in the
// empicano/aiomqtt repository). aiomqtt's `TypeError` cases (`Topic(True)`,
// `Topic(1.0)`, `Topic(None)`, `Topic([])` and the same for `Wildcard`) have no
// runtime equivalent: `new` takes `impl Into<String>`, so they do not compile.
// ---------------------------------------------------------------------------

/// aiomqtt `test_topic_validation`.
#[test]
fn aiomqtt_topic_validation() {
    assert_invalid_topic("a/b/#");
    assert_invalid_topic("a/+/c");
    assert_invalid_topic("#");
    assert_invalid_topic("");
    assert_invalid_topic(&"a".repeat(65_536));
}

/// aiomqtt `test_wildcard_validation`.
#[test]
fn aiomqtt_wildcard_validation() {
    assert_invalid_wildcard("a/#/c");
    assert_invalid_wildcard("a/b+/c");
    assert_invalid_wildcard("a/b/#c");
    assert_invalid_wildcard("");
    assert_invalid_wildcard(&"a".repeat(65_536));
}

/// aiomqtt `test_topic_matches`. None of these vectors has a topic starting
/// with `$`, so our stricter `$` rule does not change any of them.
#[test]
fn aiomqtt_topic_matches() {
    let topic = Topic::new("a/b/c").unwrap();
    for filter in [
        "a/b/c",
        "a/+/c",
        "+/+/+",
        "+/#",
        "#",
        "a/b/c/#",
        "$share/group/a/b/c",
        "$share/group/a/b/+",
    ] {
        assert!(topic.matches(filter), "a/b/c should match {filter:?}");
    }
    for filter in [
        "abc",
        "a/b",
        "a/b/c/d",
        "a/b/c/d/#",
        "a/b/z",
        "a/b/c/+",
        "$share/a/b/c",
        "$test/group/a/b/c",
    ] {
        assert!(!topic.matches(filter), "a/b/c should not match {filter:?}");
    }
}

/// The same matching vectors applied to a topic starting with `$`. aiomqtt
/// would answer `True` for the filters starting with `+` or `#` (its
/// `Topic("$a/b/c").matches("#")` is `True`); MQTT 3.1.1 and 5 §4.7.2 say a
/// filter starting with a wildcard must not match a topic starting with `$`,
/// and we follow the specification. The rule applies after `$share/<group>/`
/// is stripped.
#[test]
fn aiomqtt_topic_matches_with_dollar_topic() {
    let topic = Topic::new("$a/b/c").unwrap();
    for filter in [
        "$a/b/c",
        "$a/+/c",
        "$a/b/c/#",
        "$share/group/$a/b/c",
        "$share/group/$a/b/+",
    ] {
        assert!(topic.matches(filter), "$a/b/c should match {filter:?}");
    }
    // aiomqtt: True; here: false (first filter level is a wildcard).
    for filter in ["+/+/+", "+/#", "#", "$share/group/#", "$share/group/+/b/c"] {
        assert!(!topic.matches(filter), "$a/b/c should not match {filter:?}");
    }
}

/// The other documented difference: aiomqtt raises `ValueError` for an invalid
/// filter string; here it simply matches nothing.
#[test]
fn invalid_filter_matches_nothing() {
    let topic = Topic::new("a/b/c").unwrap();
    for filter in ["a/#/c", "a/b+/c", "a/b/#c", "", "$share/group", "a/\0"] {
        assert!(!topic.matches(filter), "{filter:?}");
    }
}

/// MQTT 5 §4.8.2: `$share/<ShareName>/<filter>`, the share name non-empty and
/// free of `/`, `+` and `#`, the filter non-empty. Not in aiomqtt's vectors
/// (aiomqtt does not check this syntax).
#[test]
fn shared_subscription_syntax() {
    for ok in [
        "$share/g/a",
        "$share/g/#",
        "$share/g/+/b",
        "$share/g//",
        "$share/g/$SYS/#",
    ] {
        assert!(Wildcard::new(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        "$share",
        "$share/",
        "$share/g",
        "$share/g/",
        "$share//a",
        "$share/+/a",
        "$share/#",
        "$share/#/a",
        "$share/g#/a",
        "$share/g+/a",
    ] {
        assert_invalid_wildcard(bad);
    }
    // A topic name may not begin with the `$share` level: as a filter it would
    // mean a shared subscription, so the name could not be subscribed to.
    assert_invalid_topic("$share/g/a");
    assert_invalid_topic("$share");
    assert!(Topic::new("$shared/g/a").is_ok());
    assert!(Topic::new("a/$share/g").is_ok());
}

// ---------------------------------------------------------------------------
// An independent reference model, written after aiomqtt's recursive
// `Topic.matches` plus the specification's rules, for differential testing.
// ---------------------------------------------------------------------------

fn ref_common(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LEN && !s.contains('\0')
}

fn ref_valid_topic(s: &str) -> bool {
    ref_common(s) && !s.contains('+') && !s.contains('#') && s.split('/').next() != Some("$share")
}

fn ref_valid_filter(s: &str) -> bool {
    if !ref_common(s) {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let whole_wildcard = *level == "+" || (*level == "#" && i == levels.len() - 1);
        if !whole_wildcard && (level.contains('+') || level.contains('#')) {
            return false;
        }
    }
    if levels[0] == "$share" {
        let has_group = levels.len() >= 2 && !levels[1].is_empty();
        let group_ok = has_group && !levels[1].contains('+') && !levels[1].contains('#');
        let has_filter = levels.len() > 3 || (levels.len() == 3 && !levels[2].is_empty());
        return group_ok && has_filter;
    }
    true
}

fn ref_matches(topic: &str, filter: &str) -> bool {
    fn recurse(tl: &[&str], wl: &[&str]) -> bool {
        if tl.is_empty() {
            return wl.is_empty() || wl[0] == "#";
        }
        if wl.is_empty() {
            return false;
        }
        if wl[0] == "#" {
            return true;
        }
        (tl[0] == wl[0] || wl[0] == "+") && recurse(&tl[1..], &wl[1..])
    }
    if !ref_valid_filter(filter) {
        return false;
    }
    let topic_levels: Vec<&str> = topic.split('/').collect();
    let mut filter_levels: Vec<&str> = filter.split('/').collect();
    if filter_levels[0] == "$share" {
        filter_levels.drain(..2);
    }
    if topic.starts_with('$') && (filter_levels[0] == "+" || filter_levels[0] == "#") {
        return false;
    }
    recurse(&topic_levels, &filter_levels)
}

#[test]
fn reference_model_agrees_with_the_vectors() {
    // Guards the model itself, so the differential properties below mean something.
    assert!(ref_matches("a/b", "a/b/#"));
    assert!(ref_matches("/a", "+/a"));
    assert!(ref_matches("a/b", "$share/g/a/+"));
    assert!(!ref_matches("$SYS/x", "#"));
    assert!(!ref_matches("$SYS/x", "$share/g/+/x"));
    assert!(!ref_matches("a/b", "a/#/b"));
    assert!(!ref_valid_filter("$share/g/"));
    assert!(ref_valid_filter("$share/g//"));
    assert!(!ref_valid_topic("$share/g/a"));
}

// ---------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------

/// One level of a valid topic name: any characters but `/`, `+`, `#` and U+0000,
/// with `$`-prefixed and empty levels on purpose.
fn topic_level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[^/+#\\x00]{0,6}",
        1 => Just(String::new()),
        1 => Just("$SYS".to_owned()),
        1 => "\\$[a-z]{0,3}",
    ]
}

fn topic_levels() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(topic_level(), 1..6).prop_filter("a valid topic name", |levels| {
        let s = levels.join("/");
        !s.is_empty() && levels[0] != "$share"
    })
}

/// One level of a valid filter that is not the last one.
fn filter_level() -> impl Strategy<Value = String> {
    prop_oneof![3 => topic_level(), 1 => Just("+".to_owned())]
}

/// Strings over a small alphabet, so that valid and invalid topics and filters,
/// shared subscriptions and `$` topics all come up often.
fn small_string(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(tokens), 0..10).prop_map(|t| t.concat())
}

const TOPIC_TOKENS: &[&str] = &["a", "b", "$", "/", "$SYS", "$share"];
const FILTER_TOKENS: &[&str] = &[
    "a",
    "b",
    "$",
    "/",
    "+",
    "#",
    "$share/",
    "$share/g/",
    "g/",
    "+/",
    "/#",
    "$SYS",
    "\0",
];

fn byte_long_string() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "é", "€", "🦀", "a/", "+/"]),
        0usize..8,
    )
        .prop_map(|(unit, extra)| {
            let count = (MAX_LEN + 1).div_ceil(unit.len()) + extra;
            unit.repeat(count)
        })
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn generated_topics_validate(levels in topic_levels()) {
        let s = levels.join("/");
        let topic = Topic::new(s.clone()).unwrap();
        prop_assert_eq!(topic.as_str(), s.as_str());
        prop_assert!(Wildcard::new(s.clone()).is_ok());
        prop_assert_eq!(Wildcard::from(topic), s);
    }

    #[test]
    fn topic_matches_itself(levels in topic_levels()) {
        let s = levels.join("/");
        let topic = Topic::new(s.clone()).unwrap();
        prop_assert!(topic.matches(&s));
        prop_assert!(topic.matches(&topic));
        prop_assert!(topic.matches(Wildcard::from(topic.clone())));
        let shared = format!("$share/group/{s}");
        prop_assert!(topic.matches(&shared));
    }

    #[test]
    fn topic_matches_hash_unless_dollar(levels in topic_levels()) {
        let s = levels.join("/");
        let topic = Topic::new(s.clone()).unwrap();
        // MQTT §4.7.2: `#` does not match a topic starting with `$`.
        let expected = !s.starts_with('$');
        prop_assert_eq!(topic.matches("#"), expected);
        prop_assert_eq!(topic.matches("$share/g/#"), expected);
        // `x/#` matches `x` and everything below it, at every depth.
        for depth in 1..=levels.len() {
            let filter = format!("{}/#", levels[..depth].join("/"));
            prop_assert!(topic.matches(&filter), "{:?} should match {:?}", s, filter);
        }
    }

    #[test]
    fn any_level_can_be_replaced_by_plus(levels in topic_levels(), index in any::<prop::sample::Index>()) {
        let s = levels.join("/");
        let topic = Topic::new(s.clone()).unwrap();
        let i = index.index(levels.len());
        let mut filter_levels = levels.clone();
        filter_levels[i] = "+".to_owned();
        let filter = filter_levels.join("/");
        // A leading `+` does not match a topic starting with `$` (§4.7.2).
        let expected = !(i == 0 && s.starts_with('$'));
        prop_assert_eq!(topic.matches(&filter), expected, "{:?} vs {:?}", s, filter);
        // One level more or fewer never matches.
        let longer = format!("{filter}/+");
        prop_assert!(!topic.matches(&longer));
        if levels.len() > 1 {
            prop_assert!(!topic.matches(filter_levels[..levels.len() - 1].join("/")));
        }
    }

    #[test]
    fn a_changed_level_does_not_match(levels in topic_levels(), index in any::<prop::sample::Index>()) {
        let s = levels.join("/");
        let topic = Topic::new(s).unwrap();
        let i = index.index(levels.len());
        let mut other = levels.clone();
        other[i].push('x');
        prop_assert!(!topic.matches(other.join("/")));
    }

    #[test]
    fn hash_not_as_whole_last_level_never_validates(
        levels in prop::collection::vec(filter_level(), 1..6),
        index in any::<prop::sample::Index>(),
        prefix in "[^/+#\\x00]{0,3}",
        suffix in "[^/+#\\x00]{0,3}",
        glued in any::<bool>(),
    ) {
        let mut levels = levels;
        if glued && !(prefix.is_empty() && suffix.is_empty()) {
            // `#` inside a longer level, at any position (including the last level).
            let i = index.index(levels.len());
            levels[i] = format!("{prefix}#{suffix}");
        } else {
            // `#` as a whole level, followed by at least one more level.
            let i = index.index(levels.len());
            levels.insert(i, "#".to_owned());
        }
        let filter = levels.join("/");
        prop_assert!(Wildcard::new(filter.clone()).is_err(), "{:?} validated", filter);
        prop_assert!(Topic::new(filter.clone()).is_err());
        prop_assert!(!Topic::new("a").unwrap().matches(&filter));
    }

    #[test]
    fn hash_as_last_level_validates(levels in prop::collection::vec(filter_level(), 0..5)) {
        let mut levels = levels;
        levels.push("#".to_owned());
        let filter = levels.join("/");
        prop_assume!(levels[0] != "$share");
        prop_assert!(Wildcard::new(filter).is_ok());
    }

    #[test]
    fn strings_with_nul_never_validate(s in any::<String>(), at in any::<prop::sample::Index>()) {
        let chars: Vec<char> = s.chars().collect();
        let i = at.index(chars.len() + 1);
        let with_nul: String = chars[..i].iter().chain(&['\0']).chain(&chars[i..]).collect();
        prop_assert!(Topic::new(with_nul.clone()).is_err());
        prop_assert!(Wildcard::new(with_nul.clone()).is_err());
        // Without the NUL the same text can be valid; the NUL alone decides here.
        let plain: String = format!("x{}", s.replace(['\0', '+', '#'], ""));
        prop_assume!(plain.len() <= MAX_LEN);
        prop_assert!(Topic::new(plain).is_ok());
    }

    #[test]
    fn topic_is_a_subset_of_wildcard(s in small_string(FILTER_TOKENS)) {
        match Topic::new(s.clone()) {
            Ok(topic) => {
                let wildcard = Wildcard::new(s.clone());
                prop_assert!(wildcard.is_ok(), "{:?} is a topic but not a wildcard", s);
                prop_assert_eq!(wildcard.unwrap(), Wildcard::from(topic));
            }
            Err(Error::InvalidTopic { topic, .. }) => prop_assert_eq!(topic, s),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    #[test]
    fn validation_agrees_with_the_reference(s in small_string(FILTER_TOKENS)) {
        prop_assert_eq!(Topic::new(s.clone()).is_ok(), ref_valid_topic(&s), "topic {:?}", s);
        prop_assert_eq!(Wildcard::new(s.clone()).is_ok(), ref_valid_filter(&s), "filter {:?}", s);
    }

    #[test]
    fn matches_agrees_with_the_reference(
        topic in small_string(TOPIC_TOKENS),
        filter in small_string(FILTER_TOKENS),
    ) {
        prop_assume!(ref_valid_topic(&topic));
        let t = Topic::new(topic.clone()).unwrap();
        prop_assert_eq!(t.matches(&filter), ref_matches(&topic, &filter), "{:?} vs {:?}", topic, filter);
        if let Ok(w) = Wildcard::new(filter.clone()) {
            prop_assert_eq!(t.matches(&w), t.matches(&filter));
        }
    }

    #[test]
    fn matches_never_panics(topic in any::<String>(), filter in any::<String>()) {
        let filter_valid = Wildcard::new(filter.clone()).is_ok();
        if let Ok(t) = Topic::new(topic) {
            let matched = t.matches(&filter);
            prop_assert!(!matched || filter_valid, "invalid filter {:?} matched", filter);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn longer_than_65535_bytes_is_rejected(s in byte_long_string()) {
        prop_assert!(s.len() > MAX_LEN);
        prop_assert!(Topic::new(s.clone()).is_err());
        prop_assert!(Wildcard::new(s.clone()).is_err());
        prop_assert!(!Topic::new("a").unwrap().matches(&s));
    }

    #[test]
    fn up_to_65535_bytes_is_accepted(unit in prop::sample::select(vec!["a", "é", "€", "🦀", "a/"])) {
        // Fill to exactly 65,535 bytes; the characters may be far fewer.
        let mut s = unit.repeat(MAX_LEN / unit.len());
        s.push_str(&"b".repeat(MAX_LEN - s.len()));
        prop_assert_eq!(s.len(), MAX_LEN);
        prop_assert!(Topic::new(s.clone()).is_ok());
        prop_assert!(Wildcard::new(s.clone()).is_ok());
        let topic = Topic::new(s.clone()).unwrap();
        prop_assert!(topic.matches(&s));
    }
}
