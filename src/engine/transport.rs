//! Transports, TLS and proxies: the URI and proxy URL for the engine, and the checks
//! that reject what the engine cannot do.

use crate::options::{Options, ProxyKind};
use crate::{Error, Transport};

/// The server URI Paho dials.
pub(crate) fn server_uri(o: &Options) -> String {
    let tls = o.tls_params.is_some();
    let host = if o.hostname.contains(':') && !o.hostname.starts_with('[') {
        format!("[{}]", o.hostname) // an IPv6 literal
    } else {
        o.hostname.clone()
    };
    match o.transport {
        Transport::Unix => format!("unix://{}", o.hostname),
        Transport::Tcp => {
            let scheme = if tls { "ssl" } else { "tcp" };
            format!("{scheme}://{host}:{}", o.port)
        }
        Transport::WebSockets => {
            let scheme = if tls { "wss" } else { "ws" };
            let path = o.websocket_path.as_deref().unwrap_or("/mqtt");
            format!("{scheme}://{host}:{}{path}", o.port)
        }
    }
}

/// Whether Paho may hold its global mutex for long while this client connects: it
/// resolves a host name on its own thread (ENGINE.md 11). An IP literal connects
/// without a lookup (proxies and Unix sockets go through the relay, which Paho reaches
/// at 127.0.0.1).
pub(crate) fn connect_may_stall(o: &Options) -> bool {
    o.hostname
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_err()
}

fn invalid(text: impl Into<String>) -> Error {
    Error::InvalidArgument(text.into())
}

fn no_nul(what: &str, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(invalid(format!("{what} must not contain a NUL character")));
    }
    Ok(())
}

/// Validates the transport, TLS, proxy and socket options for `ClientBuilder::build`;
/// a combination that cannot work names both options.
pub(crate) fn check_transport(o: &Options) -> Result<(), Error> {
    let ws = o.transport == Transport::WebSockets;
    let unix = o.transport == Transport::Unix;
    if !ws && o.websocket_path.is_some() {
        return Err(invalid(
            "websocket_path needs transport(Transport::WebSockets)",
        ));
    }
    if !ws && !o.websocket_headers.is_empty() {
        return Err(invalid(
            "websocket_headers need transport(Transport::WebSockets)",
        ));
    }
    if let Some(path) = &o.websocket_path {
        if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid(
                "websocket_path must start with '/' and contain no spaces or control characters",
            ));
        }
    }
    for (name, value) in &o.websocket_headers {
        let bad_name = name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if bad_name || value.chars().any(|c| c.is_control()) {
            return Err(invalid(format!(
                "websocket header {name:?} is not a valid HTTP header"
            )));
        }
    }
    if unix {
        let conflict = [
            ("proxy", o.proxy.is_some()),
            ("tls_params", o.tls_params.is_some()),
            ("tls_context", o.tls_context.is_some()),
            ("bind_address", o.bind_address.is_some()),
            ("bind_port", o.bind_port.is_some()),
            ("socket_options", !o.socket_options.is_empty()),
        ];
        if let Some((option, _)) = conflict.iter().find(|(_, set)| *set) {
            return Err(invalid(format!(
                "{option} cannot be used with transport(Transport::Unix)"
            )));
        }
    }
    if o.tls_params.is_some() && o.tls_context.is_some() {
        return Err(invalid(
            "tls_params and tls_context cannot both be set: the context holds the TLS settings",
        ));
    }
    if o.tls_insecure && o.tls_params.is_none() && o.tls_context.is_none() {
        return Err(invalid("tls_insecure needs tls_params or tls_context"));
    }
    if let Some(address) = &o.bind_address {
        if address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "bind_address {address:?} is not an IP address"
            )));
        }
    }
    if let Some(tls) = &o.tls_params {
        for (what, path) in [
            ("ca_certs", &tls.ca_certs),
            ("certfile", &tls.certfile),
            ("keyfile", &tls.keyfile),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(invalid(format!(
                        "{what} file {} does not exist",
                        path.display()
                    )));
                }
            }
        }
        if tls.keyfile.is_some() && tls.certfile.is_none() {
            return Err(invalid("keyfile needs certfile"));
        }
        if tls.keyfile_password.is_some() && tls.keyfile.is_none() && tls.certfile.is_none() {
            return Err(invalid("keyfile_password needs keyfile"));
        }
        if let Some(pass) = &tls.keyfile_password {
            no_nul("keyfile_password", pass)?;
        }
        if let Some(ciphers) = &tls.ciphers {
            no_nul("ciphers", ciphers)?;
        }
        // A wrong passphrase fails here, at once, not as a handshake failure later.
        super::tls_config::load_key(tls)?;
        for proto in &tls.alpn_protocols {
            if proto.is_empty() || proto.len() > 255 {
                return Err(invalid("each ALPN protocol must be 1 to 255 bytes"));
            }
            // Paho C copies the list as a C string (MQTTStrdup) but hands OpenSSL its
            // full length: a NUL would make OpenSSL read past Paho's copy.
            no_nul("an ALPN protocol", proto)?;
        }
    }
    if let Some(proxy) = &o.proxy {
        no_nul("proxy host", &proxy.host)?;
        if proxy.host.is_empty() || proxy.host.contains(['@', '/']) {
            return Err(invalid("proxy host is not valid"));
        }
        for s in [&proxy.username, &proxy.password].into_iter().flatten() {
            no_nul("proxy credentials", s)?;
            if s.len() > 255 && proxy.kind != ProxyKind::Http {
                return Err(invalid("SOCKS credentials must be at most 255 bytes each"));
            }
        }
        if proxy.kind == ProxyKind::Socks4 && proxy.password.is_some() {
            return Err(invalid(
                "a SOCKS 4 proxy takes a user id only (ProxySettings::user_id): use \
                 ProxySettings::socks5 for a password",
            ));
        }
        if proxy.kind != ProxyKind::Socks4 && proxy.username.is_some() && proxy.password.is_none() {
            return Err(invalid(
                "user_id is for SOCKS 4 proxies: use ProxySettings::credentials",
            ));
        }
    }
    no_nul("hostname", &o.hostname)?;
    Ok(())
}
