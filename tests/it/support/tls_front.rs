//! A TLS server made with OpenSSL in the test, in front of a broker's plain TCP port, for
//! what Mosquitto cannot be configured to do: accept TLS 1.2 only, limit TLS 1.2 suites,
//! ask for a client certificate without requiring one, send no TLS 1.3 session tickets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{
    ErrorCode, SslAcceptor, SslAcceptorBuilder, SslFiletype, SslMethod, SslStream, SslVerifyMode,
    SslVersion,
};

use super::Certs;

/// How long one relayed connection may live.
const LIFETIME: Duration = Duration::from_secs(60);

/// One accepted handshake: the suite negotiated and whether the client presented a
/// certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub suite: String,
    pub client_certificate: bool,
}

/// A TLS server on a free loopback port that relays every accepted connection to a plain
/// port. Stops accepting when dropped.
pub struct TlsFront {
    pub port: u16,
    /// Each accepted handshake, or the handshake's error.
    handshakes: Arc<Mutex<Vec<Result<Handshake, String>>>>,
    stop: Arc<AtomicBool>,
}

impl TlsFront {
    /// TLS 1.2 only, with these TLS 1.2 suites.
    pub fn tls12(certs: &Certs, cipher_list: &str, backend_port: u16) -> TlsFront {
        TlsFront::start(certs, backend_port, |b| {
            b.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            b.set_cipher_list(cipher_list).unwrap();
        })
    }

    /// TLS 1.3 only; asks for a client certificate but accepts a client without one (or
    /// with any), and sends no session tickets: after the handshake it is silent until the
    /// client speaks.
    pub fn tls13_asking_for_a_certificate_without_tickets(
        certs: &Certs,
        backend_port: u16,
    ) -> TlsFront {
        TlsFront::start(certs, backend_port, |b| {
            b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
            b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
            b.set_num_tickets(0).unwrap();
        })
    }

    fn start(
        certs: &Certs,
        backend_port: u16,
        configure: impl FnOnce(&mut SslAcceptorBuilder),
    ) -> TlsFront {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        configure(&mut b);
        b.set_certificate_chain_file(&certs.server_cert).unwrap();
        b.set_private_key_file(&certs.server_key, SslFiletype::PEM)
            .unwrap();
        b.check_private_key().unwrap();
        let acceptor = Arc::new(b.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes: Arc<Mutex<Vec<Result<Handshake, String>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (handshakes.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match acceptor.accept(stream) {
                        Ok(tls) => {
                            let ssl = tls.ssl();
                            log.lock().unwrap().push(Ok(Handshake {
                                suite: ssl
                                    .current_cipher()
                                    .map(|c| c.name().to_owned())
                                    .unwrap_or_default(),
                                client_certificate: ssl.peer_certificate().is_some(),
                            }));
                            relay(tls, backend_port);
                        }
                        Err(e) => log.lock().unwrap().push(Err(e.to_string())),
                    }
                });
            }
        });
        TlsFront {
            port,
            handshakes,
            stop,
        }
    }

    pub fn handshakes(&self) -> Vec<Result<Handshake, String>> {
        self.handshakes.lock().unwrap().clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Relays a server-side TLS stream to the plain port (both non-blocking, one thread).
fn relay(mut tls: SslStream<TcpStream>, backend_port: u16) {
    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)) else {
        return;
    };
    if tls.get_ref().set_nonblocking(true).is_err() || backend.set_nonblocking(true).is_err() {
        return;
    }
    let deadline = Instant::now() + LIFETIME;
    let mut buf = vec![0u8; 16 * 1024];
    let pause = || std::thread::sleep(Duration::from_millis(1));
    let wants_io = |code: ErrorCode| code == ErrorCode::WANT_READ || code == ErrorCode::WANT_WRITE;
    while Instant::now() < deadline {
        let mut idle = true;
        match tls.ssl_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = false;
                let mut out = &buf[..n];
                while !out.is_empty() {
                    match backend.write(out) {
                        Ok(k) => out = &out[k..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => pause(),
                        Err(_) => return,
                    }
                }
            }
            Err(e) if wants_io(e.code()) => {}
            Err(_) => return,
        }
        match backend.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = false;
                let mut out = &buf[..n];
                while !out.is_empty() {
                    match tls.ssl_write(out) {
                        Ok(k) => out = &out[k..],
                        Err(e) if wants_io(e.code()) => pause(),
                        Err(_) => return,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        if idle {
            pause();
        }
    }
}
