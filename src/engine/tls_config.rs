//! What the client's own TLS contexts take from [`TlsParams`]: the client key (also
//! checked by `build()`) and the trusted CAs.

use std::path::Path;

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::SslContextBuilder;
use openssl::x509::store::X509StoreBuilder;

use crate::options::TlsParams;
use crate::{Error, TlsErrorKind};

fn bad_key(detail: String) -> Error {
    Error::tls(TlsErrorKind::BadKey, detail)
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

/// Makes the CAs in `ca_file` the only ones trusted, as Paho C does with a trust store
/// (`SSLSocket_createContext` loads the system's default paths only without one): the
/// default paths an `SslConnector` starts with are dropped first, so a server certificate
/// from a CA of the system's store is refused when `ca_certs` names another.
pub(crate) fn trust_only(
    builder: &mut SslContextBuilder,
    ca_file: &Path,
) -> Result<(), ErrorStack> {
    builder.set_cert_store(X509StoreBuilder::new()?.build());
    builder.set_ca_file(ca_file)
}
