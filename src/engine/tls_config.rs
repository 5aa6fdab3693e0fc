//! OpenSSL views of [`TlsParams`]: the key check `build()` runs, and the
//! connector the failure probe uses to repeat Paho's handshake.

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use crate::options::{CertRequirements, TlsParams};
use crate::{Error, TlsErrorKind};

fn bad_key(detail: String) -> Error {
    Error::Tls {
        kind: TlsErrorKind::BadKey,
        detail,
    }
}

/// Loads the client key (from `keyfile`, or from `certfile` when it holds the
/// key too, as Paho does), decrypting it with `keyfile_password`.
///
/// The passphrase is supplied by a callback so OpenSSL never falls back to
/// prompting on the terminal for an encrypted key.
pub(crate) fn load_key(params: &TlsParams) -> Result<Option<PKey<Private>>, Error> {
    let path = match (&params.keyfile, &params.certfile) {
        (Some(key), _) => key,
        (None, Some(cert)) => {
            let pem = std::fs::read(cert).map_err(Error::Io)?;
            if !pem.windows(11).any(|w| w == b"PRIVATE KEY") {
                return Ok(None);
            }
            cert
        }
        (None, None) => return Ok(None),
    };
    let pem = std::fs::read(path).map_err(Error::Io)?;
    let password = params.keyfile_password.as_deref().unwrap_or("");
    PKey::private_key_from_pem_callback(&pem, |buf| {
        let n = password.len().min(buf.len());
        buf[..n].copy_from_slice(&password.as_bytes()[..n]);
        Ok(n)
    })
    .map(Some)
    .map_err(|e| {
        let hint = if params.keyfile_password.is_some() {
            "wrong keyfile_password?"
        } else {
            "encrypted key without keyfile_password?"
        };
        // OpenSSL's error stack never contains the passphrase.
        bad_key(format!(
            "cannot read the private key in {} ({hint}): {e}",
            path.display()
        ))
    })
}

/// A connector configured as Paho configures its `SSL_CTX`.
pub(crate) fn connector(params: &TlsParams) -> Result<SslConnector, Error> {
    let setup = |e: openssl::error::ErrorStack| Error::Tls {
        kind: TlsErrorKind::Handshake,
        detail: e.to_string(),
    };
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    if let Some(ca) = &params.ca_certs {
        b.set_ca_file(ca).map_err(setup)?;
    }
    if params.cert_reqs == CertRequirements::None {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some(cert) = &params.certfile {
        b.set_certificate_chain_file(cert).map_err(setup)?;
    }
    if let Some(key) = load_key(params)? {
        b.set_private_key(&key).map_err(setup)?;
    }
    if let Some(ciphers) = &params.ciphers {
        b.set_cipher_list(ciphers).map_err(setup)?;
    }
    if !params.alpn_protocols.is_empty() {
        let mut wire = Vec::new();
        for p in &params.alpn_protocols {
            wire.push(p.len() as u8); // checked to be 1..=255 by build()
            wire.extend_from_slice(p.as_bytes());
        }
        b.set_alpn_protos(&wire).map_err(setup)?;
    }
    Ok(b.build())
}
