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

/// The HTTP proxy URL Paho dials through, with percent-encoded Basic credentials.
pub(crate) fn proxy_url(o: &Options) -> Option<String> {
    let proxy = o.proxy.as_ref()?;
    let mut url = String::from("http://");
    if let (Some(user), Some(pass)) = (&proxy.username, &proxy.password) {
        url.push_str(&percent_encode(user));
        url.push(':');
        url.push_str(&percent_encode(pass));
        url.push('@');
    }
    url.push_str(&format!("{}:{}", proxy.host, proxy.port));
    Some(url)
}

/// Whether Paho may hold its global mutex for long while this client connects: it
/// resolves a host name on its own thread (ENGINE.md 11) and talks to an HTTP proxy
/// with sleeps (21). An IP literal or a Unix socket connects without either.
pub(crate) fn connect_may_stall(o: &Options) -> bool {
    o.proxy.is_some()
        || (o.transport != Transport::Unix
            && o.hostname
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_err())
}

/// Paho's `Proxy_specialChars` decodes `%XX`; anything else but unreserved
/// characters is encoded so `@`, `:` and `%` in credentials survive.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

/// Validates the transport, TLS and proxy options for `ClientBuilder::build`.
pub(crate) fn check_transport(o: &Options) -> Result<(), Error> {
    let ws = o.transport == Transport::WebSockets;
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
    if o.transport == Transport::Unix {
        if o.proxy.is_some() {
            return Err(invalid("a proxy cannot be used with a Unix socket"));
        }
        if o.tls_params.is_some() {
            return Err(invalid("TLS cannot be used with a Unix socket"));
        }
    }
    if o.tls_insecure && o.tls_params.is_none() {
        return Err(invalid("tls_insecure needs tls_params"));
    }
    if let Some(tls) = &o.tls_params {
        if tls.tls_version.is_some() {
            return Err(Error::Unsupported {
                option: "tls_params.tls_version",
                reason: "Paho C uses TLS_client_method() with OpenSSL >= 1.1, so a pinned version has no effect (SSLSocket_createContext)",
            });
        }
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
        }
    }
    if let Some(proxy) = &o.proxy {
        if proxy.kind != ProxyKind::Http {
            return Err(Error::Unsupported {
                option: "proxy",
                reason: "Paho C has no SOCKS client: Proxy.c speaks HTTP CONNECT only",
            });
        }
        no_nul("proxy host", &proxy.host)?;
        if proxy.host.is_empty() || proxy.host.contains(['@', '/']) {
            return Err(invalid("proxy host is not valid"));
        }
        for s in [&proxy.username, &proxy.password].into_iter().flatten() {
            no_nul("proxy credentials", s)?;
        }
    }
    no_nul("hostname", &o.hostname)?;
    Ok(())
}
