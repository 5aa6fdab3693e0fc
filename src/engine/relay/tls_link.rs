//! TLS that the relay establishes on the dialled socket's own descriptor (OpenSSL's socket
//! I/O, not a Rust stream under OpenSSL), so that the session can be handed to Paho C
//! with the socket (`handoff::run_tls`): Paho then reads and writes TLS itself, as on a
//! connection it opened, and no thread of ours stands between it and the broker.
//!
//! Before the handover the relay writes only Paho's CONNECT and reads no application
//! data: every byte the broker sends in answer is Paho's to read. What a TLS 1.3 server
//! that asked for a client certificate sends right after the handshake — session
//! tickets, or the alert with which it refuses the certificate, which it checks only
//! then — the relay reads first ([`TlsLink::await_verdict`]), so that a refusal is the
//! connect's TLS error.

use std::os::raw::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslVersion};
use openssl_sys as ffi;
use tokio::io::Interest;
use tokio::time::Instant;

use super::dial::Socket;

/// A TLS session established on a socket, none of its application data read.
pub(crate) struct TlsLink {
    socket: Socket,
    ssl: Ssl,
    /// How long the handshake took (at least one round trip to the broker), and when
    /// it ended.
    handshake: Duration,
    finished: Instant,
    /// The server sent a CertificateRequest: it may still refuse the certificate.
    certificate_requested: bool,
}

/// Why a TLS operation failed: OpenSSL's packed error codes, and the text to report.
#[derive(Debug)]
pub(crate) struct SslFailure {
    pub(crate) codes: Vec<u64>,
    pub(crate) detail: String,
}

// OpenSSL: ssl.h, tls1.h.
const SSL_CTRL_CLEAR_MODE: c_int = 78;
const SSL_CTRL_SET_MSG_CALLBACK_ARG: c_int = 16;
const SSL_MODE_ENABLE_PARTIAL_WRITE: c_long = 0x1;
const RECORD_HANDSHAKE: c_int = 22;
const CERTIFICATE_REQUEST: u8 = 13;

/// What a TLS 1.3 server that asked for a certificate may take, beyond twice the
/// handshake's duration, to send its verdict on it (a loaded machine included).
const VERDICT_SLACK: Duration = Duration::from_millis(50);

type MsgCallback =
    unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, usize, *mut ffi::SSL, *mut c_void);

#[allow(unsafe_code)]
unsafe extern "C" {
    // Not bound by openssl-sys.
    fn SSL_set_msg_callback(ssl: *mut ffi::SSL, cb: Option<MsgCallback>);
}

/// Notes a CertificateRequest from the server in the `AtomicBool` at `arg`. Set only
/// while the relay runs the handshake, on its thread.
#[allow(unsafe_code)]
unsafe extern "C" fn on_handshake_message(
    write: c_int,
    _version: c_int,
    content_type: c_int,
    buf: *const c_void,
    len: usize,
    _ssl: *mut ffi::SSL,
    arg: *mut c_void,
) {
    if write != 0 || content_type != RECORD_HANDSHAKE || len == 0 || buf.is_null() || arg.is_null()
    {
        return;
    }
    // SAFETY: OpenSSL passes `len` bytes of a handshake message at `buf`; `arg` is the
    // flag `TlsLink::connect` keeps alive while the callback is set.
    unsafe {
        if *buf.cast::<u8>() == CERTIFICATE_REQUEST {
            (*arg.cast::<AtomicBool>()).store(true, Ordering::Relaxed);
        }
    }
}

impl TlsLink {
    /// The client handshake of `ssl` (host name and verification already set) on `socket`.
    /// On failure the session is returned with why, for the error to name what failed.
    #[allow(unsafe_code)]
    pub(crate) async fn connect(socket: Socket, ssl: Ssl) -> Result<TlsLink, (Ssl, SslFailure)> {
        let started = Instant::now();
        let link = TlsLink {
            socket,
            ssl,
            handshake: Duration::ZERO,
            finished: started,
            certificate_requested: false,
        };
        let requested = Box::new(AtomicBool::new(false));
        // SAFETY: `ptr` is the live session we own. A socket BIO on the descriptor, not
        // closing it; Paho C writes whole packets or waits (no partial writes, which a
        // context made by `SslConnector` enables). The message callback's flag outlives
        // the callback, which is removed below, before the session leaves this function.
        let bio_ok = unsafe {
            let ptr = link.ssl.as_ptr();
            SSL_set_msg_callback(ptr, Some(on_handshake_message));
            ffi::SSL_ctrl(
                ptr,
                SSL_CTRL_SET_MSG_CALLBACK_ARG,
                0,
                (&*requested as *const AtomicBool).cast_mut().cast(),
            );
            ffi::SSL_ctrl(
                ptr,
                SSL_CTRL_CLEAR_MODE,
                SSL_MODE_ENABLE_PARTIAL_WRITE,
                std::ptr::null_mut(),
            );
            let bio = ffi::BIO_new_socket(link.socket.raw_fd(), 0);
            if !bio.is_null() {
                ffi::SSL_set_bio(ptr, bio, bio);
            }
            !bio.is_null()
        };
        let outcome = if bio_ok {
            // SAFETY: the session is live and has its socket.
            link.drive(|p| unsafe { ffi::SSL_connect(p) }).await
        } else {
            Err(SslFailure::from_stack(ErrorStack::get()))
        };
        // SAFETY: as above; from here on nothing refers to `requested`.
        unsafe {
            let ptr = link.ssl.as_ptr();
            SSL_set_msg_callback(ptr, None);
            ffi::SSL_ctrl(ptr, SSL_CTRL_SET_MSG_CALLBACK_ARG, 0, std::ptr::null_mut());
        }
        match outcome {
            Ok(_) => Ok(TlsLink {
                handshake: started.elapsed(),
                finished: Instant::now(),
                certificate_requested: requested.load(Ordering::Relaxed),
                ..link
            }),
            Err(failure) => Err((link.ssl, failure)),
        }
    }

    /// Writes all of `bytes` through the session.
    #[allow(unsafe_code)]
    pub(crate) async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), SslFailure> {
        while !bytes.is_empty() {
            let len = c_int::try_from(bytes.len()).unwrap_or(c_int::MAX);
            let chunk = bytes;
            // SAFETY: `chunk` is valid for `len` bytes for the call; the session is live.
            let n = self
                .drive(|p| unsafe { ffi::SSL_write(p, chunk.as_ptr().cast(), len) })
                .await?;
            bytes = &bytes[usize::try_from(n).unwrap_or(0).min(bytes.len())..];
        }
        Ok(())
    }

    /// When a TLS 1.3 server asked for a client certificate, waits (twice the handshake's
    /// duration and [`VERDICT_SLACK`] at most, and not past `deadline`) for what it sends
    /// once it has checked the certificate, and reads it ([`Self::read_early_records`]);
    /// such a server that sends nothing then (no session tickets) costs that wait. Without
    /// a request, or on earlier versions (whose handshake carries the verdict), what has
    /// arrived is read without waiting.
    #[allow(unsafe_code)]
    pub(crate) async fn await_verdict(&self, deadline: Instant) -> Result<(), SslFailure> {
        if self.certificate_requested && self.ssl.version2() == Some(SslVersion::TLS1_3) {
            let until = deadline.min(self.finished + self.handshake * 2 + VERDICT_SLACK);
            let mut poll = libc::pollfd {
                fd: self.socket.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd, no wait.
                if unsafe { libc::poll(&mut poll, 1, 0) } != 0 || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        self.read_early_records()
    }

    /// Reads what the broker has sent since the handshake, without waiting. Before the
    /// CONNECT that can only be TLS records of its own: session tickets, or the alert with
    /// which a TLS 1.3 server refuses the client's certificate once it has checked it —
    /// reported here, while the error can still name it. Application data would be a
    /// broker speaking first, which MQTT forbids.
    #[allow(unsafe_code)]
    fn read_early_records(&self) -> Result<(), SslFailure> {
        let ptr = self.ssl.as_ptr();
        let mut byte = 0u8;
        // SAFETY: the session is live; `byte` is valid for one byte; the socket is
        // non-blocking, so the call does not wait.
        let (rc, error) = unsafe {
            ffi::ERR_clear_error();
            let rc = ffi::SSL_peek(ptr, (&mut byte as *mut u8).cast(), 1);
            (rc, ffi::SSL_get_error(ptr, rc))
        };
        if rc > 0 {
            return Err(SslFailure::text("the broker sent data before the CONNECT"));
        }
        match error {
            ffi::SSL_ERROR_WANT_READ | ffi::SSL_ERROR_WANT_WRITE => Ok(()),
            error => Err(SslFailure::of_error(error)),
        }
    }

    /// The socket and the session, to hand over together.
    pub(crate) fn into_parts(self) -> (Socket, Ssl) {
        (self.socket, self.ssl)
    }

    /// Runs `op` (an OpenSSL call on the session that is positive on success) until it
    /// succeeds, waiting for the socket whenever OpenSSL wants to read or write it.
    #[allow(unsafe_code)]
    async fn drive(
        &self,
        mut op: impl FnMut(*mut ffi::SSL) -> c_int + Send,
    ) -> Result<c_int, SslFailure> {
        enum Step {
            Done(c_int),
            Want(Interest),
            Failed(SslFailure),
        }
        let mut step = || {
            let ptr = self.ssl.as_ptr();
            // SAFETY: the session is live; the error queue is this thread's.
            unsafe { ffi::ERR_clear_error() };
            let rc = op(ptr);
            if rc > 0 {
                return Step::Done(rc);
            }
            // SAFETY: as above, right after the call whose result it explains.
            match unsafe { ffi::SSL_get_error(ptr, rc) } {
                ffi::SSL_ERROR_WANT_READ => Step::Want(Interest::READABLE),
                ffi::SSL_ERROR_WANT_WRITE => Step::Want(Interest::WRITABLE),
                error => Step::Failed(SslFailure::of_error(error)),
            }
        };
        let mut wait: Option<Interest> = None;
        loop {
            let outcome = match wait {
                None => step(),
                Some(interest) => {
                    self.socket
                        .ready(interest)
                        .await
                        .map_err(|e| SslFailure::text(e.to_string()))?;
                    // Readiness is cleared only when OpenSSL found the socket not ready
                    // for what we waited for.
                    let mut other = None;
                    match self.socket.try_io(interest, || match step() {
                        Step::Want(w) if w == interest => {
                            Err(std::io::ErrorKind::WouldBlock.into())
                        }
                        Step::Want(w) => {
                            other = Some(w);
                            Ok(None)
                        }
                        done => Ok(Some(done)),
                    }) {
                        Ok(Some(done)) => done,
                        Ok(None) => Step::Want(other.unwrap_or(interest)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            Step::Want(interest)
                        }
                        Err(e) => Step::Failed(SslFailure::text(e.to_string())),
                    }
                }
            };
            match outcome {
                Step::Done(n) => return Ok(n),
                Step::Want(interest) => wait = Some(interest),
                Step::Failed(failure) => return Err(failure),
            }
        }
    }
}

impl SslFailure {
    fn text(detail: impl Into<String>) -> SslFailure {
        SslFailure {
            codes: Vec::new(),
            detail: detail.into(),
        }
    }

    /// The failure `SSL_get_error` reported as `error` (not a want of I/O), with this
    /// thread's OpenSSL error queue and errno as the failed call left them.
    fn of_error(error: c_int) -> SslFailure {
        if error == ffi::SSL_ERROR_ZERO_RETURN {
            return SslFailure::text("the broker closed the TLS connection");
        }
        let stack = ErrorStack::get();
        if error != ffi::SSL_ERROR_SYSCALL || !stack.errors().is_empty() {
            return SslFailure::from_stack(stack);
        }
        let e = std::io::Error::last_os_error();
        SslFailure::text(if e.raw_os_error() == Some(0) {
            "the broker closed the connection".to_owned()
        } else {
            e.to_string()
        })
    }

    fn from_stack(stack: ErrorStack) -> SslFailure {
        SslFailure {
            codes: stack.errors().iter().map(|e| e.code()).collect(),
            detail: stack.to_string(),
        }
    }
}
