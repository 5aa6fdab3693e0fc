//! `Connection::unsubscribe`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Kind;
use crate::properties::PacketKind;
use crate::session::Session;
use crate::{Error, Properties, Topic, Wildcard};

/// The filters of an unsubscribe call (build it with [`IntoUnsubscribeFilters`]).
#[derive(Debug, Clone, Default)]
pub struct UnsubscribeFilters(Vec<String>);

/// One filter (`&str`, `String`, [`Wildcard`], [`Topic`]) or a list of them.
pub trait IntoUnsubscribeFilters {
    /// Converts into the filter list.
    fn into_unsubscribe_filters(self) -> UnsubscribeFilters;
}

macro_rules! unsubscribe_filters {
    ($($t:ty),* $(,)?) => {$(
        impl IntoUnsubscribeFilters for $t {
            fn into_unsubscribe_filters(self) -> UnsubscribeFilters {
                UnsubscribeFilters(vec![AsRef::<str>::as_ref(&self).to_owned()])
            }
        }
        impl IntoUnsubscribeFilters for Vec<$t> {
            fn into_unsubscribe_filters(self) -> UnsubscribeFilters {
                UnsubscribeFilters(self.iter().map(|f| AsRef::<str>::as_ref(f).to_owned()).collect())
            }
        }
        impl<const N: usize> IntoUnsubscribeFilters for [$t; N] {
            fn into_unsubscribe_filters(self) -> UnsubscribeFilters {
                UnsubscribeFilters(self.iter().map(|f| AsRef::<str>::as_ref(f).to_owned()).collect())
            }
        }
        impl IntoUnsubscribeFilters for &[$t] {
            fn into_unsubscribe_filters(self) -> UnsubscribeFilters {
                UnsubscribeFilters(self.iter().map(|f| AsRef::<str>::as_ref(f).to_owned()).collect())
            }
        }
    )*};
}

unsubscribe_filters!(&str, String, &String, Wildcard, &Wildcard, Topic, &Topic);

/// An UNSUBSCRIBE being prepared; `.await` it to send.
#[must_use = "an unsubscribe does nothing until it is awaited"]
pub struct Unsubscribe {
    session: Arc<Session>,
    filters: UnsubscribeFilters,
    properties: Option<Properties>,
    timeout: Option<Duration>,
}

impl Unsubscribe {
    pub(crate) fn new(session: Arc<Session>, filters: UnsubscribeFilters) -> Self {
        Unsubscribe {
            session,
            filters,
            properties: None,
            timeout: None,
        }
    }
    /// MQTT 5 UNSUBSCRIBE properties (user properties).
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = Some(properties);
        self
    }
    /// Overrides the client's timeout for this call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    async fn send(self) -> Result<(), Error> {
        if self.filters.0.is_empty() {
            return Err(Error::InvalidArgument(
                "unsubscribe needs at least one filter".to_owned(),
            ));
        }
        for filter in &self.filters.0 {
            Wildcard::new(filter.as_str())?;
        }
        if let Some(props) = &self.properties {
            super::check_v5(&self.session, "UNSUBSCRIBE properties")?;
            props.check(PacketKind::Unsubscribe)?;
        }
        let props = self.properties;
        let session = self.session;
        let filters = self.filters.0;
        let record = filters.clone();
        let n = filters.len();
        let v5 = session.options.protocol == crate::ProtocolVersion::V5;
        let result = super::run(
            session.clone(),
            self.timeout,
            Kind::Unsubscribe,
            move |engine, ticket| engine.unsubscribe(filters, props.as_ref(), ticket),
            move |replies| crate::engine::unsubscribe_result(replies, n, v5),
        )
        .await;
        match result {
            Ok(codes) => {
                // The filters the broker removed are not made again after a reconnect,
                // also when it refused another one of the call.
                let removed: Vec<String> = if codes.is_empty() {
                    record
                } else {
                    record
                        .into_iter()
                        .zip(&codes)
                        .filter(|(_, code)| !code.is_error())
                        .map(|(filter, _)| filter)
                        .collect()
                };
                session.record_unsubscribe(&removed);
                match codes.into_iter().find(|code| code.is_error()) {
                    Some(refused) => Err(Error::Code(refused)),
                    None => Ok(()),
                }
            }
            // No answer in time: the broker may have removed them. The application asked
            // not to get their messages, so a reconnect does not subscribe them again.
            Err(e) if e.is_timeout() => {
                session.record_unsubscribe(&record);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

impl IntoFuture for Unsubscribe {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
