//! `Connection::subscribe`, its filters and options.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Kind;
use crate::properties::PacketKind;
use crate::session::{Session, Subscription};
use crate::{Error, Properties, QoS, ReasonCode, Topic, Wildcard};

/// When the broker sends retained messages for a new subscription (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (the default).
    #[default]
    SendOnSubscribe,
    /// Send them only if the subscription did not exist before.
    SendIfNew,
    /// Do not send retained messages.
    DoNotSend,
}

/// Per-filter subscription options (MQTT 5's options byte, plus the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The maximum QoS to deliver with.
    pub qos: QoS,
    /// Do not receive this connection's own publications (MQTT 5).
    pub no_local: bool,
    /// Keep the RETAIN flag as published instead of clearing it (MQTT 5).
    pub retain_as_published: bool,
    /// When to send retained messages (MQTT 5).
    pub retain_handling: RetainHandling,
}

impl SubscribeOptions {
    /// QoS 0 and every MQTT 5 option at its default.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the QoS.
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
    /// Sets No Local.
    pub fn no_local(mut self, on: bool) -> Self {
        self.no_local = on;
        self
    }
    /// Sets Retain As Published.
    pub fn retain_as_published(mut self, on: bool) -> Self {
        self.retain_as_published = on;
        self
    }
    /// Sets Retain Handling.
    pub fn retain_handling(mut self, handling: RetainHandling) -> Self {
        self.retain_handling = handling;
        self
    }
    fn uses_v5(&self) -> bool {
        self.no_local
            || self.retain_as_published
            || self.retain_handling != RetainHandling::SendOnSubscribe
    }
}

/// One filter as the user gave it.
#[derive(Debug, Clone)]
struct FilterSpec {
    filter: String,
    qos: Option<QoS>,
    options: Option<SubscribeOptions>,
}

/// The filters of a subscribe call (build it with [`IntoFilters`]).
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<FilterSpec>);

/// One subscription filter: a string, [`Wildcard`] or [`Topic`], optionally
/// paired with a [`QoS`] or [`SubscribeOptions`].
pub trait IntoFilter {
    /// Converts into the filter list's element.
    #[doc(hidden)]
    fn into_filter(self) -> Filters;
}

/// One filter or a list of them (`Vec`, array or slice of [`IntoFilter`]).
pub trait IntoFilters {
    /// Converts into the filter list.
    fn into_filters(self) -> Filters;
}

macro_rules! filter_strings {
    ($($t:ty => $conv:expr),* $(,)?) => {$(
        impl IntoFilter for $t {
            fn into_filter(self) -> Filters {
                let convert: fn($t) -> String = $conv;
                Filters(vec![FilterSpec { filter: convert(self), qos: None, options: None }])
            }
        }
        impl IntoFilter for ($t, QoS) {
            fn into_filter(self) -> Filters {
                let convert: fn($t) -> String = $conv;
                Filters(vec![FilterSpec { filter: convert(self.0), qos: Some(self.1), options: None }])
            }
        }
        impl IntoFilter for ($t, SubscribeOptions) {
            fn into_filter(self) -> Filters {
                let convert: fn($t) -> String = $conv;
                Filters(vec![FilterSpec { filter: convert(self.0), qos: None, options: Some(self.1) }])
            }
        }
    )*};
}

filter_strings! {
    &str => |s| s.to_owned(),
    String => |s| s,
    &String => |s| s.clone(),
    Wildcard => Wildcard::into_string,
    &Wildcard => |w| w.as_str().to_owned(),
    Topic => Topic::into_string,
    &Topic => |t| t.as_str().to_owned(),
}

impl<T: IntoFilter> IntoFilters for T {
    fn into_filters(self) -> Filters {
        self.into_filter()
    }
}
impl<T: IntoFilter> IntoFilters for Vec<T> {
    fn into_filters(self) -> Filters {
        Filters(self.into_iter().flat_map(|f| f.into_filter().0).collect())
    }
}
impl<T: IntoFilter, const N: usize> IntoFilters for [T; N] {
    fn into_filters(self) -> Filters {
        Filters(self.into_iter().flat_map(|f| f.into_filter().0).collect())
    }
}
impl<T: IntoFilter + Clone> IntoFilters for &[T] {
    fn into_filters(self) -> Filters {
        Filters(
            self.iter()
                .cloned()
                .flat_map(|f| f.into_filter().0)
                .collect(),
        )
    }
}
impl<T: IntoFilter> FromIterator<T> for Filters {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Filters(iter.into_iter().flat_map(|f| f.into_filter().0).collect())
    }
}
impl IntoFilters for Filters {
    fn into_filters(self) -> Filters {
        self
    }
}

/// A SUBSCRIBE being prepared; `.await` it for one [`ReasonCode`] per filter
/// (granted QoS on 3.x, reason codes on 5; 0x80 and above mean refused).
#[must_use = "a subscribe does nothing until it is awaited"]
pub struct Subscribe {
    session: Arc<Session>,
    filters: Filters,
    qos: Option<QoS>,
    options: Option<SubscribeOptions>,
    properties: Option<Properties>,
    timeout: Option<Duration>,
}

impl Subscribe {
    pub(crate) fn new(session: Arc<Session>, filters: Filters) -> Self {
        Subscribe {
            session,
            filters,
            qos: None,
            options: None,
            properties: None,
            timeout: None,
        }
    }
    /// The QoS of filters given without their own QoS or options (default 0).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = Some(qos);
        self
    }
    /// The options of filters given without their own.
    pub fn options(mut self, options: SubscribeOptions) -> Self {
        self.options = Some(options);
        self
    }
    /// MQTT 5 SUBSCRIBE properties (a subscription identifier, user properties).
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = Some(properties);
        self
    }
    /// Overrides the client's timeout for this call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Each filter with its final options: its own, else the call's.
    fn resolve(&self) -> Result<Vec<(String, SubscribeOptions)>, Error> {
        if self.filters.0.is_empty() {
            return Err(Error::InvalidArgument(
                "subscribe needs at least one filter".to_owned(),
            ));
        }
        let mut base = self.options.unwrap_or_default();
        if let Some(qos) = self.qos {
            base.qos = qos;
        }
        let v5 = self.session.options.protocol == crate::ProtocolVersion::V5;
        self.filters
            .0
            .iter()
            .map(|spec| {
                Wildcard::new(spec.filter.as_str())?;
                let options = match (spec.options, spec.qos) {
                    (Some(options), _) => options,
                    (None, Some(qos)) => base.qos(qos),
                    (None, None) => base,
                };
                if options.uses_v5() && !v5 {
                    return Err(Error::InvalidArgument(
                        "no_local, retain_as_published and retain_handling need MQTT 5".to_owned(),
                    ));
                }
                // MQTT 5 §3.8.3.1: a broker closes the connection on this.
                if options.no_local && spec.filter.starts_with("$share/") {
                    return Err(Error::InvalidArgument(format!(
                        "no_local cannot be set on the shared subscription {:?} \
                         (MQTT 5 §3.8.3.1)",
                        spec.filter
                    )));
                }
                Ok((spec.filter.clone(), options))
            })
            .collect()
    }

    async fn send(self) -> Result<Vec<ReasonCode>, Error> {
        let filters = self.resolve()?;
        if let Some(props) = &self.properties {
            super::check_v5(&self.session, "SUBSCRIBE properties")?;
            props.check(PacketKind::Subscribe)?;
        }
        self.session.limits.get().check_subscribe(
            filters.iter().map(|(f, _)| f.as_str()),
            self.properties.as_ref(),
        )?;
        let session = self.session;
        let record = Subscription {
            filters: filters.clone(),
            properties: self.properties,
        };
        let props = record.properties.clone();
        let n = filters.len();
        let v5 = session.options.protocol == crate::ProtocolVersion::V5;
        let result = super::run(
            session.clone(),
            self.timeout,
            Kind::Subscribe,
            move |engine, ticket| engine.subscribe(filters, props.as_ref(), ticket),
            move |replies| crate::engine::subscribe_result(replies, n, v5),
        )
        .await;
        match result {
            Ok(codes) => {
                // A reconnect makes again the subscriptions the broker granted.
                let mut granted = record;
                let mut code = codes.iter();
                granted
                    .filters
                    .retain(|_| code.next().is_some_and(|c| !c.is_error()));
                if !granted.filters.is_empty() {
                    session.record_subscribe(granted);
                }
                Ok(codes)
            }
            // No answer in time: the broker may have granted it. The application asked
            // for its messages, so a reconnect subscribes it again.
            Err(e) if e.is_timeout() => {
                session.record_subscribe(record);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

impl IntoFuture for Subscribe {
    type Output = Result<Vec<ReasonCode>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
