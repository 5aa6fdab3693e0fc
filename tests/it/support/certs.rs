//! Test-time X.509 material, generated once per process with the `openssl` crate and written
//! as PEM files wherever a test (or a [`Broker`](super::Broker)) needs them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::symm::Cipher;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

/// Passphrase of [`Certs::client_key_encrypted`].
pub const CLIENT_KEY_PASSPHRASE: &str = "client-key-pass";

/// Hostname in [`ServerCert::WrongHost`].
pub const WRONG_HOSTNAME: &str = "wrong.example";

/// Which certificate a broker's TLS listeners present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerCert {
    /// CN/SAN `localhost` + SAN IP 127.0.0.1, signed by the CA, valid now.
    #[default]
    Good,
    /// CN/SAN `wrong.example`, signed by the CA, valid now: hostname verification must fail.
    WrongHost,
    /// `localhost`/127.0.0.1, signed by the CA, expired yesterday.
    Expired,
}

/// Paths of the PEM files (all in one directory).
#[derive(Clone, Debug)]
pub struct Certs {
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// Server certificate for `localhost` and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Key of all three server certificates.
    pub server_key: PathBuf,
    /// Server certificate for `wrong.example` only.
    pub wrong_host_cert: PathBuf,
    /// Expired server certificate for `localhost`/127.0.0.1.
    pub expired_cert: PathBuf,
    /// Client certificate (CN `aiomqtt-test-client`) signed by the CA, for mutual TLS.
    pub client_cert: PathBuf,
    /// Unencrypted client key (PKCS#8 PEM).
    pub client_key: PathBuf,
    /// The same client key, encrypted PKCS#8 PEM (AES-256-CBC), passphrase below.
    pub client_key_encrypted: PathBuf,
    pub client_key_passphrase: &'static str,
    /// An unrelated CA (the broker does not trust it, nor does it sign the server cert).
    pub other_ca: PathBuf,
    /// A client certificate + key signed by `other_ca` (refused by mutual-TLS listeners).
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

struct Material {
    files: Vec<(&'static str, Vec<u8>)>,
}

static MATERIAL: OnceLock<Material> = OnceLock::new();
static SHARED: OnceLock<Certs> = OnceLock::new();

impl Certs {
    /// Writes the process-wide material (generated on first use) into `dir`.
    pub fn write_to(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("create certs dir");
        let m = MATERIAL.get_or_init(generate);
        for (name, pem) in &m.files {
            std::fs::write(dir.join(name), pem).expect("write PEM");
        }
        Certs::in_dir(dir)
    }

    /// One copy for the whole test process (under cargo's target tmp dir, removed on the
    /// next run once this process is gone).
    pub fn shared() -> &'static Certs {
        SHARED.get_or_init(|| {
            let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
            cleanup_stale(base);
            let dir = base.join(format!("aiomqtt-certs-{}", std::process::id()));
            Certs::write_to(&dir)
        })
    }

    fn in_dir(dir: &Path) -> Certs {
        let p = |n: &str| dir.join(n);
        Certs {
            dir: dir.to_path_buf(),
            ca: p("ca.pem"),
            ca_key: p("ca.key"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            wrong_host_cert: p("wrong_host.pem"),
            expired_cert: p("expired.pem"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            client_key_encrypted: p("client.enc.key"),
            client_key_passphrase: CLIENT_KEY_PASSPHRASE,
            other_ca: p("other_ca.pem"),
            other_client_cert: p("other_client.pem"),
            other_client_key: p("other_client.key"),
        }
    }

    /// Certificate file for the given choice (key is always `server_key`).
    pub fn server_cert_for(&self, which: ServerCert) -> &Path {
        match which {
            ServerCert::Good => &self.server_cert,
            ServerCert::WrongHost => &self.wrong_host_cert,
            ServerCert::Expired => &self.expired_cert,
        }
    }
}

/// The test CA, as objects in memory (the same CA [`Certs::ca`] holds as a file).
pub fn ca_in_memory() -> (X509, PKey<Private>) {
    let m = MATERIAL.get_or_init(generate);
    let pem = |name: &str| {
        m.files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, pem)| pem.as_slice())
            .expect("generated material")
    };
    (
        X509::from_pem(pem("ca.pem")).expect("CA certificate"),
        PKey::private_key_from_pem(pem("ca.key")).expect("CA key"),
    )
}

/// A client certificate with common name `cn` and its key, made now, in memory, signed by
/// `issuer` (the test CA, which brokers trust, or another).
pub fn client_cert_in_memory(cn: &str, issuer: &(X509, PKey<Private>)) -> (X509, PKey<Private>) {
    let now = unix_now();
    let key = new_key();
    let cert = make_cert(
        &Spec {
            cn,
            kind: Kind::Client,
            dns: &[],
            ips: &[],
            not_before: now - 3600,
            not_after: now + 86_400,
        },
        &key,
        Some((&issuer.0, &issuer.1)),
    );
    (cert, key)
}

/// A fresh CA no broker trusts, in memory.
pub fn untrusted_ca_in_memory() -> (X509, PKey<Private>) {
    let now = unix_now();
    let key = new_key();
    let cert = make_cert(
        &Spec {
            cn: "in-memory untrusted CA",
            kind: Kind::Ca,
            dns: &[],
            ips: &[],
            not_before: now - 3600,
            not_after: now + 86_400,
        },
        &key,
        None,
    );
    (cert, key)
}

fn cleanup_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("aiomqtt-certs-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ca,
    Server,
    Client,
}

/// ECDSA P-256 keys: generating six RSA-2048 keys costs ~1 s per test process, these ~10 ms.
fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC keygen")).expect("PKey")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn serial() -> Asn1Integer {
    let mut bn = BigNum::new().expect("bn");
    bn.rand(120, MsbOption::MAYBE_ZERO, false).expect("rand");
    bn.to_asn1_integer().expect("asn1 int")
}

struct Spec<'a> {
    cn: &'a str,
    kind: Kind,
    dns: &'a [&'a str],
    ips: &'a [&'a str],
    not_before: i64,
    not_after: i64,
}

fn make_cert(
    spec: &Spec<'_>,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("O", "aiomqtt tests").unwrap();
    name.append_entry_by_text("CN", spec.cn).unwrap();
    let name = name.build();

    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name).unwrap();
    match issuer {
        Some((ca, _)) => b.set_issuer_name(ca.subject_name()).unwrap(),
        None => b.set_issuer_name(&name).unwrap(),
    }
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(spec.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(spec.not_after).unwrap())
        .unwrap();

    match spec.kind {
        Kind::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        }
        Kind::Server | Kind::Client => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let mut eku = ExtendedKeyUsage::new();
            if spec.kind == Kind::Server {
                eku.server_auth();
            } else {
                eku.client_auth();
            }
            b.append_extension(eku.build().unwrap()).unwrap();
        }
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some((ca, _)) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&**ca), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !spec.dns.is_empty() || !spec.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for d in spec.dns {
            san.dns(d);
        }
        for ip in spec.ips {
            san.ip(ip);
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    let signing_key = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signing_key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn generate() -> Material {
    let now = unix_now();
    let day = 86_400;
    let valid = (now - 3600, now + 365 * day);

    let ca_key = new_key();
    let ca = make_cert(
        &Spec {
            cn: "aiomqtt test CA",
            kind: Kind::Ca,
            dns: &[],
            ips: &[],
            not_before: valid.0,
            not_after: now + 3650 * day,
        },
        &ca_key,
        None,
    );
    let other_ca_key = new_key();
    let other_ca = make_cert(
        &Spec {
            cn: "unrelated test CA",
            kind: Kind::Ca,
            dns: &[],
            ips: &[],
            not_before: valid.0,
            not_after: now + 3650 * day,
        },
        &other_ca_key,
        None,
    );

    let server_key = new_key();
    let server = make_cert(
        &Spec {
            cn: "localhost",
            kind: Kind::Server,
            dns: &["localhost"],
            ips: &["127.0.0.1"],
            not_before: valid.0,
            not_after: valid.1,
        },
        &server_key,
        Some((&ca, &ca_key)),
    );
    let wrong = make_cert(
        &Spec {
            cn: WRONG_HOSTNAME,
            kind: Kind::Server,
            dns: &[WRONG_HOSTNAME],
            ips: &[],
            not_before: valid.0,
            not_after: valid.1,
        },
        &server_key,
        Some((&ca, &ca_key)),
    );
    let expired = make_cert(
        &Spec {
            cn: "localhost",
            kind: Kind::Server,
            dns: &["localhost"],
            ips: &["127.0.0.1"],
            not_before: now - 30 * day,
            not_after: now - day,
        },
        &server_key,
        Some((&ca, &ca_key)),
    );

    let client_key = new_key();
    let client = make_cert(
        &Spec {
            cn: "aiomqtt-test-client",
            kind: Kind::Client,
            dns: &[],
            ips: &[],
            not_before: valid.0,
            not_after: valid.1,
        },
        &client_key,
        Some((&ca, &ca_key)),
    );
    let other_client_key = new_key();
    let other_client = make_cert(
        &Spec {
            cn: "untrusted-client",
            kind: Kind::Client,
            dns: &[],
            ips: &[],
            not_before: valid.0,
            not_after: valid.1,
        },
        &other_client_key,
        Some((&other_ca, &other_ca_key)),
    );

    let cert = |c: &X509| c.to_pem().unwrap();
    let key = |k: &PKey<Private>| k.private_key_to_pem_pkcs8().unwrap();
    Material {
        files: vec![
            ("ca.pem", cert(&ca)),
            ("ca.key", key(&ca_key)),
            ("server.pem", cert(&server)),
            ("server.key", key(&server_key)),
            ("wrong_host.pem", cert(&wrong)),
            ("expired.pem", cert(&expired)),
            ("client.pem", cert(&client)),
            ("client.key", key(&client_key)),
            (
                "client.enc.key",
                client_key
                    .private_key_to_pem_pkcs8_passphrase(
                        Cipher::aes_256_cbc(),
                        CLIENT_KEY_PASSPHRASE.as_bytes(),
                    )
                    .unwrap(),
            ),
            ("other_ca.pem", cert(&other_ca)),
            ("other_client.pem", cert(&other_client)),
            ("other_client.key", key(&other_client_key)),
        ],
    }
}
