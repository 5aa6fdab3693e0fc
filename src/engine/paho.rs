//! Every call into Paho C and every callback out of it. The only module (with
//! `cprops` and `shim`) that uses `unsafe`.
//!
//! The crate binds Paho C's asynchronous API (`MQTTAsync_*`, through `paho-mqtt-sys`)
//! itself rather than through the `paho-mqtt` wrapper, because three defects of that
//! wrapper cannot be worked around from outside it (ENGINE.md 15, 18, 22): its own
//! `extern "C"` message callback panics on a topic that is not UTF-8 or holds a NUL,
//! which aborts the process before any code of ours runs; its `connect()` frees the
//! previous connect options while Paho C still uses them (a crash on reconnect); and it
//! logs the connect options, password included, at DEBUG.
//!
//! Rules every function here keeps:
//! - callbacks never panic (their bodies are fenced with `catch_unwind`), never block,
//!   never call back into Paho and never take a lock a thread calling Paho may hold:
//!   they copy what they were given and hand it to [`Hooks`] or the registry;
//! - memory Paho keeps a pointer to (HTTP headers) lives in [`ConnectOptions`] for as
//!   long as the client handle; everything else Paho copies during the call;
//! - Paho's global state is never torn down (see [`init`]).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::Once;

use paho_mqtt_sys as sys;

use super::cprops::{self, CProps};
use super::hooks::{Hooks, Incoming};
use super::registry::{self, Failure, Key, Reply, Response, WriteFailed};
use super::{errors, shim};
use crate::options::{CertRequirements, Options};
use crate::{Error, ProtocolVersion, QoS, RetainHandling, SubscribeOptions};

/// A Paho client handle. Only the engine owns one, and destroys it once.
#[derive(Clone, Copy)]
pub(crate) struct Handle(sys::MQTTAsync);

// SAFETY: Paho's API may be called from any thread; it serialises on its own mutex.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn paho_version(protocol: ProtocolVersion) -> c_int {
    (match protocol {
        ProtocolVersion::V31 => sys::MQTTVERSION_3_1,
        ProtocolVersion::V311 => sys::MQTTVERSION_3_1_1,
        ProtocolVersion::V5 => sys::MQTTVERSION_5,
    }) as c_int
}

/// Sets Paho up once per process: its trace goes to `log` (errors only: lower levels
/// would format a line per packet, and Paho's protocol trace prints proxy
/// credentials), and one idle client is created and never destroyed.
///
/// The idle client keeps Paho's global state alive: when the last client is destroyed,
/// `MQTTAsync_destroy` calls `MQTTAsync_terminate`, which stops Paho's threads (up to a
/// second) and frees its global lists while a client created meanwhile on another
/// thread would already be in them. With one client always present that teardown
/// never runs.
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: both only store a value in Paho's trace settings.
        unsafe {
            sys::MQTTAsync_setTraceCallback(Some(on_trace));
            sys::MQTTAsync_setTraceLevel(sys::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_ERROR);
        }
        let mut opts = sys::MQTTAsync_createOptions::new_v3();
        opts.MQTTVersion = sys::MQTTVERSION_3_1_1 as c_int;
        let mut handle: sys::MQTTAsync = ptr::null_mut();
        // SAFETY: valid NUL-terminated strings and options; the handle is leaked on
        // purpose and never used again.
        let rc = unsafe {
            sys::MQTTAsync_createWithOptions(
                &mut handle,
                c"tcp://127.0.0.1:1".as_ptr(),
                c"aiomqtt-keepalive-of-paho".as_ptr(),
                sys::MQTTCLIENT_PERSISTENCE_NONE as c_int,
                ptr::null_mut(),
                &mut opts,
            )
        };
        if rc != 0 {
            crate::logging::log_error!(target: "aiomqtt::engine", "Paho C could not create its idle client ({rc})");
            return;
        }
        // Paho's interrupt socket pair exists now, and no thread of Paho reads it yet.
        UNBLOCKED.store(
            super::shim::unblock_interrupts(),
            std::sync::atomic::Ordering::Relaxed,
        );
    });
}

static UNBLOCKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`init`] made Paho C's interrupt socket non-blocking
/// (`shim::unblock_interrupts`).
#[cfg(test)]
pub(crate) fn interrupts_unblocked() -> bool {
    UNBLOCKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Paho C's version, from `MQTTAsync_getVersionInfo` (e.g. `"1.3.16"`).
pub(crate) fn version() -> Option<String> {
    // SAFETY: returns a pointer to a static, NULL-name-terminated array.
    let mut info = unsafe { sys::MQTTAsync_getVersionInfo() };
    if info.is_null() {
        return None;
    }
    loop {
        // SAFETY: `info` points into the static array until its terminator.
        let entry = unsafe { &*info };
        if entry.name.is_null() {
            return None;
        }
        // SAFETY: static NUL-terminated strings.
        let name = unsafe { CStr::from_ptr(entry.name) }.to_string_lossy();
        if name == "Version" && !entry.value.is_null() {
            // SAFETY: as above.
            return Some(
                unsafe { CStr::from_ptr(entry.value) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        // SAFETY: the terminator has not been reached.
        info = unsafe { info.add(1) };
    }
}

/// What a client is created with.
pub(crate) struct CreateSpec {
    pub(crate) uri: CString,
    pub(crate) client_id: CString,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) max_buffered: c_int,
    /// Queue publishes in Paho while the link is down (a persistent session or
    /// automatic reconnects); otherwise Paho refuses them.
    pub(crate) send_while_disconnected: bool,
}

/// Creates a client and registers the handle-level callbacks with `hooks` as context.
///
/// # Safety
/// `hooks` must stay valid until the handle has been [`destroy`]ed.
pub(crate) unsafe fn create(spec: &CreateSpec, hooks: *const Hooks) -> Result<Handle, i32> {
    init();
    let mut opts = sys::MQTTAsync_createOptions::new();
    opts.MQTTVersion = paho_version(spec.protocol);
    opts.maxBufferedMessages = spec.max_buffered;
    opts.sendWhileDisconnected = c_int::from(spec.send_while_disconnected);
    opts.deleteOldestMessages = 0;
    opts.restoreMessages = 0;
    opts.persistQoS0 = 0;
    let mut handle: sys::MQTTAsync = ptr::null_mut();
    // SAFETY: valid strings and options for the call; persistence NONE takes no context
    // (a bare `AsyncClient::new((uri, id))` would turn on file persistence, hazard 7).
    let rc = unsafe {
        sys::MQTTAsync_createWithOptions(
            &mut handle,
            spec.uri.as_ptr(),
            spec.client_id.as_ptr(),
            sys::MQTTCLIENT_PERSISTENCE_NONE as c_int,
            ptr::null_mut(),
            &mut opts,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    let ctx = hooks as *mut c_void;
    // SAFETY: a fresh handle; the caller keeps `hooks` alive until destroy.
    let rc = unsafe {
        let rc = sys::MQTTAsync_setCallbacks(
            handle,
            ctx,
            Some(on_lost),
            Some(on_message),
            Some(on_delivered),
        );
        if rc == 0 {
            sys::MQTTAsync_setDisconnected(handle, ctx, Some(on_disconnected))
        } else {
            rc
        }
    };
    if rc != 0 {
        // SAFETY: the handle was created above and is not used again.
        unsafe { sys::MQTTAsync_destroy(&mut handle) };
        return Err(rc);
    }
    Ok(Handle(handle))
}

/// Destroys a client: queued and unacknowledged commands fail through their callbacks
/// (`MQTTASYNC_OPERATION_INCOMPLETE`); a live connection is closed with DISCONNECT.
///
/// # Safety
/// No other call on `handle` may run or follow; not on a Paho thread.
pub(crate) unsafe fn destroy(handle: Handle) {
    let mut raw = handle.0;
    // SAFETY: per the contract above.
    unsafe { sys::MQTTAsync_destroy(&mut raw) };
}

/// `MQTTAsync_isConnected`. It takes Paho's mutex, so it returns only once Paho's
/// threads have finished whatever they were doing under it — after a loss callback,
/// the rest of the teardown that follows it (ENGINE.md 18).
pub(crate) fn is_connected(handle: Handle) -> bool {
    // SAFETY: a live handle (the engine destroys it only after its last call).
    unsafe { sys::MQTTAsync_isConnected(handle.0) != 0 }
}

/// The connect options of one client, built once; Paho keeps a pointer to the HTTP
/// headers (`MQTTAsync_connect` stores `options->httpHeaders` as is), so this lives
/// as long as the handle.
pub(crate) struct ConnectOptions {
    raw: sys::MQTTAsync_connectOptions,
    _strings: Vec<CString>,
    _will: Option<Box<sys::MQTTAsync_willOptions>>,
    /// The Will payload, copied: `MQTTAsync_connect` reads it at every connect, and the
    /// options these were made from may not outlive this (the relay's view of them).
    _will_payload: Option<Box<[u8]>>,
    _ssl: Option<Box<sys::MQTTAsync_SSLOptions>>,
    _headers: Option<Box<[sys::MQTTAsync_nameValue]>>,
    /// Boxed: the options point into them.
    _connect_props: Option<Box<CProps>>,
    _will_props: Option<Box<CProps>>,
    _alpn: Option<Box<[u8]>>,
    v5: bool,
}

// SAFETY: only read after construction; the pointers refer to memory owned by `self`.
unsafe impl Send for ConnectOptions {}
unsafe impl Sync for ConnectOptions {}

/// Longest connect timeout handed to Paho, in seconds: it multiplies the value by
/// 1000 in an `int` (`MQTTAsync_checkTimeouts`). The facade's own deadline applies too.
const MAX_PAHO_CONNECT_TIMEOUT: u64 = 2_000_000;

impl ConnectOptions {
    /// Builds Paho's connect options from ours (proxies, WebSockets and Unix sockets
    /// never reach Paho: the relay carries them).
    pub(crate) fn new(o: &Options) -> Result<ConnectOptions, Error> {
        let v5 = o.protocol == ProtocolVersion::V5;
        let mut strings = Vec::new();
        let mut cstr = |s: &str, what: &str| -> Result<*const c_char, Error> {
            let c = CString::new(s).map_err(|_| {
                Error::InvalidArgument(format!("{what} must not contain a NUL character"))
            })?;
            let p = c.as_ptr();
            strings.push(c);
            Ok(p)
        };
        let mut raw = if v5 {
            sys::MQTTAsync_connectOptions::new_v5()
        } else {
            sys::MQTTAsync_connectOptions::new_v3()
        };
        raw.MQTTVersion = paho_version(o.protocol);
        raw.keepAliveInterval = c_int::try_from(o.keepalive.as_secs()).unwrap_or(c_int::MAX);
        raw.maxInflight = c_int::from(o.window());
        let secs = o
            .timeout
            .as_secs()
            .saturating_add(u64::from(o.timeout.subsec_nanos() > 0));
        raw.connectTimeout =
            c_int::try_from(secs.clamp(1, MAX_PAHO_CONNECT_TIMEOUT)).unwrap_or(c_int::MAX);
        raw.automaticReconnect = 0;
        if let Some(user) = &o.username {
            raw.username = cstr(user, "username")?;
        }
        if let Some(password) = &o.password {
            raw.password = cstr(password, "password")?;
        }
        let mut will_props = None;
        let mut will_payload = None;
        let will = match &o.will {
            Some(w) => {
                let mut will = Box::new(sys::MQTTAsync_willOptions::default());
                will.topicName = cstr(&w.topic, "the Will topic")?;
                will.payload.len = c_int::try_from(w.payload.as_bytes().len()).map_err(|_| {
                    Error::InvalidArgument("the Will payload is too large".to_owned())
                })?;
                // Paho copies the payload (memcpy) during each MQTTAsync_connect, from
                // this copy, which lives as long as these options.
                will.payload.data = if w.payload.as_bytes().is_empty() {
                    ptr::null()
                } else {
                    let copy: Box<[u8]> = w.payload.as_bytes().into();
                    let data = copy.as_ptr() as *const c_void;
                    will_payload = Some(copy);
                    data
                };
                will.qos = c_int::from(w.qos.as_u8());
                will.retained = c_int::from(w.retain);
                if let Some(p) = &w.properties {
                    let mut p = Box::new(CProps::new(p)?);
                    raw.willProperties = p.as_mut_ptr();
                    will_props = Some(p);
                }
                Some(will)
            }
            None => None,
        };
        if let Some(w) = &will {
            raw.will = (&**w as *const sys::MQTTAsync_willOptions).cast_mut();
        }
        let connect_props = match &o.properties {
            Some(p) => {
                let mut p = Box::new(CProps::new(p)?);
                raw.connectProperties = p.as_mut_ptr();
                Some(p)
            }
            None => None,
        };
        let mut alpn = None;
        let ssl = match &o.tls_params {
            Some(tls) => {
                let mut s = Box::new(sys::MQTTAsync_SSLOptions::default());
                let path = |p: &std::path::Path| p.to_str().map(str::to_owned);
                let bad_path =
                    |what: &str| Error::InvalidArgument(format!("{what} path is not valid UTF-8"));
                if let Some(ca) = &tls.ca_certs {
                    s.trustStore =
                        cstr(&path(ca).ok_or_else(|| bad_path("ca_certs"))?, "ca_certs")?;
                }
                if let Some(cert) = &tls.certfile {
                    s.keyStore =
                        cstr(&path(cert).ok_or_else(|| bad_path("certfile"))?, "certfile")?;
                }
                if let Some(key) = &tls.keyfile {
                    s.privateKey = cstr(&path(key).ok_or_else(|| bad_path("keyfile"))?, "keyfile")?;
                }
                if let Some(pass) = &tls.keyfile_password {
                    s.privateKeyPassword = cstr(pass, "keyfile_password")?;
                }
                if let Some(ciphers) = &tls.ciphers {
                    s.enabledCipherSuites = cstr(ciphers, "ciphers")?;
                }
                let verify_chain = tls.cert_reqs == CertRequirements::Required;
                s.enableServerCertAuth = c_int::from(verify_chain);
                // Paho's default does not check the hostname (hazard 4): on unless asked.
                s.verify = c_int::from(verify_chain && !o.tls_insecure);
                s.ssl_error_cb = Some(on_ssl_error);
                if !tls.alpn_protocols.is_empty() {
                    // Wire format: each protocol prefixed by its length, NUL-terminated
                    // (Paho strdup's it as a C string).
                    let mut wire = Vec::new();
                    for p in &tls.alpn_protocols {
                        wire.push(p.len() as u8);
                        wire.extend_from_slice(p.as_bytes());
                    }
                    let len = wire.len();
                    wire.push(0);
                    let wire = wire.into_boxed_slice();
                    s.protos = wire.as_ptr();
                    s.protos_len = len as u32;
                    alpn = Some(wire);
                }
                Some(s)
            }
            None => None,
        };
        if let Some(s) = &ssl {
            raw.ssl = (&**s as *const sys::MQTTAsync_SSLOptions).cast_mut();
        }
        let headers = if o.websocket_headers.is_empty() {
            None
        } else {
            let mut list = Vec::with_capacity(o.websocket_headers.len() + 1);
            for (name, value) in &o.websocket_headers {
                list.push(sys::MQTTAsync_nameValue {
                    name: cstr(name, "a websocket header name")?,
                    value: cstr(value, "a websocket header value")?,
                });
            }
            list.push(sys::MQTTAsync_nameValue::default());
            Some(list.into_boxed_slice())
        };
        if let Some(h) = &headers {
            raw.httpHeaders = h.as_ptr();
        }
        Ok(ConnectOptions {
            raw,
            _strings: strings,
            _will: will,
            _will_payload: will_payload,
            _ssl: ssl,
            _headers: headers,
            _connect_props: connect_props,
            _will_props: will_props,
            _alpn: alpn,
            v5,
        })
    }
}

/// Starts CONNECT; its outcome reaches `hooks` through the connect callbacks.
/// `clean` is Clean Session (3.x) or Clean Start (5); `uri`, when given, replaces the
/// URI the client was created with (the relay's endpoint of this link).
///
/// # Safety
/// `hooks` must be the handle's context (valid until destroy). Not on a Paho thread.
pub(crate) unsafe fn connect(
    handle: Handle,
    opts: &ConnectOptions,
    clean: bool,
    hooks: *const Hooks,
    uri: Option<&CStr>,
) -> c_int {
    // A copy: its pointers still refer to `opts`, which outlives the handle.
    let mut raw = opts.raw;
    raw.context = hooks as *mut c_void;
    let uris = uri.map(|u| [u.as_ptr().cast_mut()]);
    // MQTTAsync_connect prints "checking <uri>" to stdout for a URI list given without SSL
    // options (MQTTAsync.c, Paho C 1.3.16): empty SSL options stop it; they are not used
    // for a tcp:// URI.
    let mut unused_ssl = sys::MQTTAsync_SSLOptions::default();
    if let Some(uris) = &uris {
        raw.serverURIcount = 1;
        raw.serverURIs = uris.as_ptr();
        if raw.ssl.is_null() {
            raw.ssl = &mut unused_ssl;
        }
    }
    if opts.v5 {
        raw.cleanstart = c_int::from(clean);
        raw.cleansession = 0;
        raw.onSuccess5 = Some(on_connect_ok5);
        raw.onFailure5 = Some(on_connect_fail5);
    } else {
        raw.cleansession = c_int::from(clean);
        raw.onSuccess = Some(on_connect_ok);
        raw.onFailure = Some(on_connect_fail);
    }
    if let Some(ssl) = opts._ssl.as_deref() {
        // The SSL error callback reports to this client's hooks.
        let mut ssl_copy = *ssl;
        ssl_copy.ssl_error_context = hooks as *mut c_void;
        raw.ssl = &mut ssl_copy;
        // SAFETY: every pointer in `raw` is valid for the call; Paho copies the SSL
        // options (strdup of each string) before returning.
        return unsafe { sys::MQTTAsync_connect(handle.0, &raw) };
    }
    // SAFETY: as above.
    unsafe { sys::MQTTAsync_connect(handle.0, &raw) }
}

/// A response options block whose callbacks report to the registry under `key`.
fn response(key: Key, v5: bool, ok5: sys::MQTTAsync_onSuccess5) -> sys::MQTTAsync_responseOptions {
    let r = sys::MQTTAsync_responseOptions {
        context: key as *mut c_void,
        ..Default::default()
    };
    if v5 {
        sys::MQTTAsync_responseOptions {
            onSuccess5: ok5,
            onFailure5: Some(on_fail5),
            ..r
        }
    } else {
        sys::MQTTAsync_responseOptions {
            onSuccess: Some(on_ok),
            onFailure: Some(on_fail),
            ..r
        }
    }
}

/// Runs `f` with `s` as a NUL-terminated string, without allocating for short ones.
fn with_c_str<T>(s: &str, f: impl FnOnce(*const c_char) -> T) -> Result<T, Error> {
    if s.as_bytes().contains(&0) {
        return Err(Error::InvalidArgument(
            "a topic must not contain a NUL character".to_owned(),
        ));
    }
    let mut buf = [0u8; 256];
    if s.len() < buf.len() {
        buf[..s.len()].copy_from_slice(s.as_bytes());
        Ok(f(buf.as_ptr() as *const c_char))
    } else {
        let c = CString::new(s).map_err(|_| Error::InvalidArgument("NUL".to_owned()))?;
        Ok(f(c.as_ptr()))
    }
}

/// A PUBLISH to hand to Paho.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) props: Option<&'a CProps>,
}

/// Queues a PUBLISH: Paho's return code and the packet id it gave the message (QoS 1/2).
/// Paho copies the topic, payload and properties.
pub(crate) fn publish(
    handle: Handle,
    v5: bool,
    m: Outgoing<'_>,
    key: Key,
) -> Result<(c_int, c_int), Error> {
    let Outgoing {
        topic,
        payload,
        qos,
        retain,
        props,
    } = m;
    let len = c_int::try_from(payload.len()).map_err(|_| Error::PayloadTooLarge {
        size: payload.len(),
        limit: c_int::MAX as usize,
    })?;
    let mut r = response(key, v5, Some(on_ok5));
    if v5 {
        r.onFailure5 = Some(on_pub_fail5);
    } else {
        r.onFailure = Some(on_pub_fail);
    }
    if let Some(p) = props {
        r.properties = p.raw();
    }
    let rc = with_c_str(topic, |t| {
        // SAFETY: a live handle; the topic is NUL-terminated, the payload `len` bytes;
        // Paho copies both (MQTTStrdup, malloc + memcpy) and the properties
        // (MQTTProperties_copy) before returning.
        unsafe {
            sys::MQTTAsync_send(
                handle.0,
                t,
                len,
                payload.as_ptr() as *const c_void,
                c_int::from(qos.as_u8()),
                c_int::from(retain),
                &mut r,
            )
        }
    })?;
    Ok((rc, r.token))
}

/// Queues a SUBSCRIBE for `filters` (one packet).
pub(crate) fn subscribe(
    handle: Handle,
    v5: bool,
    filters: &[(CString, SubscribeOptions)],
    props: Option<&CProps>,
    key: Key,
) -> c_int {
    let topics: Vec<*mut c_char> = filters.iter().map(|(f, _)| f.as_ptr().cast_mut()).collect();
    let qos: Vec<c_int> = filters
        .iter()
        .map(|(_, o)| c_int::from(o.qos.as_u8()))
        .collect();
    let mut opts: Vec<sys::MQTTSubscribe_options> = filters
        .iter()
        .map(|(_, o)| sys::MQTTSubscribe_options {
            noLocal: u8::from(o.no_local),
            retainAsPublished: u8::from(o.retain_as_published),
            retainHandling: match o.retain_handling {
                RetainHandling::SendOnSubscribe => 0,
                RetainHandling::SendIfNew => 1,
                RetainHandling::DoNotSend => 2,
            },
            ..Default::default()
        })
        .collect();
    let mut r = response(key, v5, Some(on_sub_ok5));
    if !v5 {
        r.onSuccess = Some(on_sub_ok);
    }
    if v5 {
        if let Some(p) = props {
            r.properties = p.raw();
        }
        if opts.len() == 1 {
            r.subscribeOptions = opts[0];
        } else {
            r.subscribeOptionsCount = opts.len() as c_int;
            r.subscribeOptionsList = opts.as_mut_ptr();
        }
    }
    // SAFETY: a live handle; `topics` and `qos` hold `len` valid entries for the call;
    // Paho copies the topics and options (MQTTAsync_subscribeMany) before returning.
    unsafe {
        sys::MQTTAsync_subscribeMany(
            handle.0,
            topics.len() as c_int,
            topics.as_ptr(),
            qos.as_ptr(),
            &mut r,
        )
    }
}

/// Queues an UNSUBSCRIBE for `filters` (one packet).
pub(crate) fn unsubscribe(
    handle: Handle,
    v5: bool,
    filters: &[CString],
    props: Option<&CProps>,
    key: Key,
) -> c_int {
    let topics: Vec<*mut c_char> = filters.iter().map(|f| f.as_ptr().cast_mut()).collect();
    let mut r = response(key, v5, Some(on_unsub_ok5));
    if v5 {
        if let Some(p) = props {
            r.properties = p.raw();
        }
    }
    // SAFETY: a live handle; `topics` holds valid strings for the call, which Paho copies.
    unsafe {
        sys::MQTTAsync_unsubscribeMany(handle.0, topics.len() as c_int, topics.as_ptr(), &mut r)
    }
}

/// Sends DISCONNECT (`reason` on MQTT 5); with a key, its completion is reported.
pub(crate) fn disconnect(handle: Handle, v5: bool, reason: u8, key: Option<Key>) -> c_int {
    let mut d = sys::MQTTAsync_disconnectOptions {
        timeout: 0,
        ..Default::default()
    };
    if let Some(key) = key {
        d.context = key as *mut c_void;
        if v5 {
            d.onSuccess5 = Some(on_ok5);
            d.onFailure5 = Some(on_fail5);
        } else {
            d.onSuccess = Some(on_ok);
            d.onFailure = Some(on_fail);
        }
    }
    if v5 {
        d.reasonCode = sys::MQTTReasonCodes::from(reason);
    }
    // SAFETY: a live handle and valid options for the call.
    unsafe { sys::MQTTAsync_disconnect(handle.0, &d) }
}

// ---- callbacks -------------------------------------------------------------------------

/// Runs a callback body; a panic must not unwind into C (it would abort).
fn fenced(what: &str, body: impl FnOnce()) {
    // Paho's threads never wait on the application's logger (see `logging`).
    let _defer = crate::logging::DeferOnThisThread::new();
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        crate::logging::log_error!(target: "aiomqtt::engine", "a panic in the {what} callback was contained");
    }
}

/// # Safety
/// `ctx` is the `Hooks` the handle was created with (alive until destroy).
unsafe fn hooks<'a>(ctx: *mut c_void) -> Option<&'a Hooks> {
    // SAFETY: per the contract; the engine frees the hooks only after destroy.
    unsafe { (ctx as *const Hooks).as_ref() }
}

unsafe extern "C" fn on_trace(level: sys::MQTTASYNC_TRACE_LEVELS, message: *mut c_char) {
    fenced("trace", || {
        if message.is_null() {
            return;
        }
        // SAFETY: Paho passes a NUL-terminated buffer valid for the call.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
        if level >= sys::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_SEVERE {
            crate::logging::log_error!(target: "paho_mqtt_c", "{text}");
        } else {
            crate::logging::log_warn!(target: "paho_mqtt_c", "{text}");
        }
    });
}

unsafe extern "C" fn on_ssl_error(text: *const c_char, len: usize, ctx: *mut c_void) -> c_int {
    fenced("TLS error", || {
        if text.is_null() {
            return;
        }
        // SAFETY: Paho (OpenSSL's ERR_print_errors_cb) passes `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(text as *const u8, len) };
        // SAFETY: the context is the handle's hooks (see `connect`).
        if let Some(h) = unsafe { hooks(ctx) } {
            h.tls_error(&String::from_utf8_lossy(bytes));
        }
    });
    0
}

unsafe extern "C" fn on_lost(ctx: *mut c_void, _cause: *mut c_char) {
    fenced("connection lost", || {
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.lost();
        }
    });
}

unsafe extern "C" fn on_disconnected(
    ctx: *mut c_void,
    props: *mut sys::MQTTProperties,
    reason: sys::MQTTReasonCodes,
) {
    fenced("disconnected", || {
        // SAFETY: Paho passes the DISCONNECT's properties, valid for the call.
        let props = unsafe { cprops::read(props) };
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.disconnected(u8::try_from(reason).unwrap_or(0x80), props);
        }
    });
}

unsafe extern "C" fn on_message(
    ctx: *mut c_void,
    topic: *mut c_char,
    topic_len: c_int,
    message: *mut sys::MQTTAsync_message,
) -> c_int {
    fenced("message", || {
        // SAFETY: the handle's context.
        let Some(h) = (unsafe { hooks(ctx) }) else {
            return;
        };
        if topic.is_null() || message.is_null() {
            return;
        }
        // SAFETY: Paho passes the topic (NUL-terminated when `topic_len` is 0, else
        // `topic_len` bytes that may contain NUL) and the message, both valid for
        // the call; we copy what we keep.
        let (topic_bytes, m) = unsafe {
            let topic_bytes = match usize::try_from(topic_len) {
                Ok(len) if len > 0 => std::slice::from_raw_parts(topic as *const u8, len),
                _ => CStr::from_ptr(topic).to_bytes(),
            };
            (topic_bytes, &*message)
        };
        let payload = match usize::try_from(m.payloadlen) {
            // SAFETY: `payloadlen` bytes at `payload`.
            Ok(len) if len > 0 && !m.payload.is_null() => unsafe {
                std::slice::from_raw_parts(m.payload as *const u8, len)
            },
            _ => &[][..],
        };
        let (properties, violation) = if h.v5 {
            // SAFETY: the message's own properties, valid for the call.
            let (props, violation) = unsafe { cprops::read_boxed(&m.properties) };
            (Some(props), violation)
        } else {
            (None, None)
        };
        h.message(Incoming {
            topic: topic_bytes,
            payload,
            qos: u8::try_from(m.qos).unwrap_or(0),
            retain: m.retained != 0,
            dup: m.dup != 0,
            packet_id: u16::try_from(m.msgid).unwrap_or(0),
            properties,
            violation,
            // The serialised length, which Paho keeps.
            properties_len: usize::try_from(m.properties.length).unwrap_or(0),
        });
    });
    let mut message = message;
    let mut topic = topic;
    // SAFETY: returning 1 tells Paho the message was consumed; the callee frees the
    // message and topic (MQTTAsync.h: messageArrived). Each is freed exactly once.
    unsafe {
        if !message.is_null() {
            sys::MQTTAsync_freeMessage(&mut message);
        }
        if !topic.is_null() {
            sys::MQTTAsync_free(topic as *mut c_void);
            topic = ptr::null_mut();
        }
    }
    let _ = topic;
    1
}

unsafe extern "C" fn on_connect_ok(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData) {
    fenced("connect success", || {
        // SAFETY: Paho passes the connect response, valid for the call.
        let session_present =
            unsafe { data.as_ref() }.is_some_and(|d| unsafe { d.alt.connect.sessionPresent } != 0);
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.connect_done(Ok((session_present, None)));
        }
    });
}

unsafe extern "C" fn on_connect_ok5(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData5) {
    fenced("connect success", || {
        // SAFETY: Paho passes the CONNACK's data, valid for the call.
        let (session_present, (props, violation)) = match unsafe { data.as_ref() } {
            Some(d) => (unsafe { d.alt.connect.sessionPresent } != 0, unsafe {
                cprops::read_checked(&d.properties)
            }),
            None => (false, (crate::Properties::new(), None)),
        };
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.connack5(session_present, props, violation);
        }
    });
}

unsafe extern "C" fn on_connect_fail(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData) {
    fenced("connect failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure3(data) };
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.connect_done(Err(failure));
        }
    });
}

unsafe extern "C" fn on_connect_fail5(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData5) {
    fenced("connect failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure5(data) };
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            h.connect_done(Err(failure));
        }
    });
}

/// # Safety
/// `data` is null or valid for the call.
unsafe fn failure3(data: *mut sys::MQTTAsync_failureData) -> Failure {
    // SAFETY: per the contract.
    match unsafe { data.as_ref() } {
        Some(d) => Failure {
            code: d.code,
            reason: None,
            v3_return_code: None,
            // SAFETY: a NUL-terminated string valid for the call, or null.
            message: unsafe { text(d.message) },
            violation: None,
        },
        None => Failure::code(-1),
    }
}

/// # Safety
/// `data` is null or valid for the call.
unsafe fn failure5(data: *mut sys::MQTTAsync_failureData5) -> Failure {
    // SAFETY: per the contract.
    match unsafe { data.as_ref() } {
        // A failed continuation of a partly written PUBLISH (`MQTTAsync_writeComplete`)
        // sets only token, code, message (NULL) and packet type: the other members are
        // uninitialised stack memory there.
        Some(d) if d.code == SOCKET_ERROR && d.packet_type == PUBLISH_PACKET => {
            Failure::code(d.code)
        }
        Some(d) => {
            // SAFETY: the failure's properties, valid for the call.
            let props = unsafe { cprops::read(&d.properties) };
            // A Reason String says more than Paho's own text.
            let message = props.reason_string.or_else(|| {
                // SAFETY: a NUL-terminated string valid for the call, or null.
                unsafe { text(d.message) }
            });
            Failure {
                code: d.code,
                reason: u8::try_from(d.reasonCode).ok().filter(|&rc| rc >= 0x80),
                v3_return_code: u8::try_from(d.reasonCode)
                    .ok()
                    .filter(|rc| (1..=5).contains(rc)),
                message,
                violation: None,
            }
        }
        None => Failure::code(-1),
    }
}

/// # Safety
/// `s` is null or a NUL-terminated string valid for the call.
unsafe fn text(s: *const c_char) -> Option<String> {
    // SAFETY: per the contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

/// Success of a command on MQTT 3 (`alt` is not read: for a publish Paho leaves parts
/// of it uninitialised).
unsafe extern "C" fn on_ok(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData) {
    fenced("success", || {
        let _ = data;
        registry::complete(ctx as Key, Reply::Done(Response::default()));
    });
}

/// Success of a subscribe on MQTT 3. Subscribes are sent one filter per packet (see
/// `Engine::subscribe`), so the answer is the single granted QoS.
unsafe extern "C" fn on_sub_ok(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData) {
    fenced("subscribe success", || {
        // SAFETY: Paho passes the SUBACK's data, valid for the call; `alt.qos` is the
        // member it fills for a single-filter subscribe.
        let code = unsafe { data.as_ref() }.map(|d| unsafe { d.alt.qos });
        let codes = code
            .map(|c| vec![u8::try_from(c).unwrap_or(0xFF)])
            .unwrap_or_default();
        registry::complete(ctx as Key, Reply::Done(Response { codes }));
    });
}

/// Paho's return code for a failed socket write (`SOCKET_ERROR`).
const SOCKET_ERROR: c_int = -1;
/// The MQTT packet type of PUBLISH, as Paho puts it in `packet_type`.
const PUBLISH_PACKET: c_int = 3;

/// Failure of a publish on MQTT 3.
unsafe extern "C" fn on_pub_fail(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData) {
    fenced("publish failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure3(data) };
        // SAFETY: as above.
        let token = unsafe { data.as_ref() }.map_or(0, |d| d.token);
        // SAFETY: Paho's failure callback of a publish.
        unsafe { publish_failed(ctx as Key, failure, token) };
    });
}

/// Failure of a publish on MQTT 5.
unsafe extern "C" fn on_pub_fail5(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData5) {
    fenced("publish failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure5(data) };
        // SAFETY: as above.
        let token = unsafe { data.as_ref() }.map_or(0, |d| d.token);
        // SAFETY: Paho's failure callback of a publish.
        unsafe { publish_failed(ctx as Key, failure, token) };
    });
}

/// A publish failed. When its write failed (the link broke under it), Paho has stored
/// a QoS 1/2 message for a resend on resume and reports the command as failed:
/// - from `MQTTAsync_processCommand` (token 0), the stored message shares the command's
///   buffers, which Paho frees right after this callback: the shim gives it copies first
///   (Paho C 1.3.16 would otherwise resend freed memory and free it twice);
/// - from `MQTTAsync_writeComplete` (the packet id as token), the message owns its
///   buffers.
///
/// Either way the call is not over if the session outlives the link (the resumed
/// exchange completes it, see `registry::write_failed`); otherwise it failed with the
/// connection.
///
/// # Safety
/// Only from Paho's failure callback of a publish, with `failure` and `token` from it.
unsafe fn publish_failed(key: Key, failure: Failure, token: c_int) {
    if failure.code != SOCKET_ERROR {
        registry::complete(key, Reply::Failed(failure));
        return;
    }
    let outcome = registry::write_failed(key, token);
    let payload_len = match outcome {
        WriteFailed::Fail { payload_len } | WriteFailed::Parked { payload_len } => {
            Some(payload_len)
        }
        WriteFailed::Unknown => None,
    };
    if let (Some(len), 0) = (payload_len, token) {
        // SAFETY: per the contract, in the failure callback of a failed write in
        // `MQTTAsync_processCommand` (token 0), before Paho frees the command.
        let detached = unsafe { shim::detach_last_publication(len) };
        if detached != shim::Detach::Done {
            crate::logging::log_error!(
                target: "aiomqtt::engine",
                "a QoS 1/2 PUBLISH failed mid-write and its stored copy could not be \
                 repaired ({detached:?}): Paho C may resend freed memory or free it twice"
            );
        }
    }
    if !matches!(outcome, WriteFailed::Parked { .. }) {
        registry::complete(
            key,
            Reply::Failed(Failure {
                code: errors::WRITE_FAILED,
                ..Failure::default()
            }),
        );
    }
}

/// Paho's delivery-complete callback: the acknowledgement of a QoS 1/2 message arrived.
unsafe extern "C" fn on_delivered(ctx: *mut c_void, token: sys::MQTTAsync_token) {
    fenced("delivery complete", || {
        // SAFETY: the handle's context.
        if let Some(h) = unsafe { hooks(ctx) } {
            registry::delivered(h.id, token);
        }
    });
}

unsafe extern "C" fn on_fail(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData) {
    fenced("failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure3(data) };
        registry::complete(ctx as Key, Reply::Failed(failure));
    });
}

unsafe extern "C" fn on_fail5(ctx: *mut c_void, data: *mut sys::MQTTAsync_failureData5) {
    fenced("failure", || {
        // SAFETY: Paho passes the failure, valid for the call.
        let failure = unsafe { failure5(data) };
        registry::complete(ctx as Key, Reply::Failed(failure));
    });
}

/// Success of a publish or disconnect on MQTT 5 (`alt` is not read).
unsafe extern "C" fn on_ok5(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData5) {
    fenced("success", || {
        let _ = data;
        registry::complete(ctx as Key, Reply::Done(Response::default()));
    });
}

/// The reason codes of a SUBACK or UNSUBACK on MQTT 5.
///
/// # Safety
/// `count`, `codes` and `single` come from one response valid for the call.
unsafe fn reason_codes(
    count: c_int,
    codes: *mut sys::MQTTReasonCodes,
    single: sys::MQTTReasonCodes,
) -> Vec<u8> {
    let to_u8 = |c: sys::MQTTReasonCodes| u8::try_from(c).unwrap_or(0xFF);
    match usize::try_from(count) {
        Ok(1) => vec![to_u8(single)],
        Ok(n) if n > 1 && !codes.is_null() => {
            // SAFETY: Paho allocated `count` codes for this response.
            unsafe { std::slice::from_raw_parts(codes, n) }
                .iter()
                .map(|&c| to_u8(c))
                .collect()
        }
        _ => Vec::new(),
    }
}

unsafe extern "C" fn on_sub_ok5(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData5) {
    fenced("subscribe success", || {
        // SAFETY: Paho passes the SUBACK's data, valid for the call; `alt.sub` is the
        // member it fills for a subscribe.
        let reply = match unsafe { data.as_ref() } {
            Some(d) => unsafe {
                Response {
                    codes: reason_codes(
                        d.alt.sub.reasonCodeCount,
                        d.alt.sub.reasonCodes,
                        d.reasonCode,
                    ),
                }
            },
            None => Response::default(),
        };
        registry::complete(ctx as Key, Reply::Done(reply));
    });
}

unsafe extern "C" fn on_unsub_ok5(ctx: *mut c_void, data: *mut sys::MQTTAsync_successData5) {
    fenced("unsubscribe success", || {
        // SAFETY: Paho passes the UNSUBACK's data, valid for the call; `alt.unsub` is
        // the member it fills for an unsubscribe.
        let reply = match unsafe { data.as_ref() } {
            Some(d) => unsafe {
                Response {
                    codes: reason_codes(
                        d.alt.unsub.reasonCodeCount,
                        d.alt.unsub.reasonCodes,
                        d.reasonCode,
                    ),
                }
            },
            None => Response::default(),
        };
        registry::complete(ctx as Key, Reply::Done(reply));
    });
}
