//! The transport seam under the connection machines: a connection's bytes
//! are plain, or TLS (rustls, in user space: no kTLS on this kernel).
//!
//! The machines never know which they have. For a plain connection the
//! engine moves bytes between the driver and the machine as before (an
//! enum match, no copy). For TLS, received ciphertext goes through the
//! session (`read_tls`, `process_new_packets`) and the plaintext into the
//! machine; the machine's answers are encrypted into records queued here,
//! which still leave in one vectored send per connection per turn.
//!
//! Also builds the rustls configurations from PEM files: the listener's
//! (`--tls-cert`, `--tls-key`, `--tls-ca` for client certificates) and the
//! servers' (`--server-tls-ca` or the system roots, `--server-tls-cert`
//! and `--server-tls-key` for a client certificate).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::config::Config;

/// Room reserved for encrypted records before each `write_tls`.
const RECORD_ROOM: usize = 18 * 1024;

/// Plaintext a session may hold before the handshake ends or while
/// records wait to be sent (rustls' own buffers), per connection.
pub(crate) const SESSION_BUFFER: usize = 64 * 1024;

/// The rustls configurations of a running proxy.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsConfigs {
    /// For clients on `--tls-listen`.
    pub listener: Option<Arc<ServerConfig>>,
    /// For connections to the servers (`--server-tls`).
    pub servers: Option<Arc<ClientConfig>>,
}

impl TlsConfigs {
    /// Load every certificate and key `cfg` names (at start and on SIGHUP).
    pub(crate) fn load(cfg: &Config) -> Result<TlsConfigs, String> {
        let listener = match (&cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key) {
            (Some(_), Some(cert), Some(key)) => {
                Some(listener_config(cert, key, cfg.tls_ca.as_deref())?)
            }
            _ => None,
        };
        let servers = if cfg.server_tls {
            Some(servers_config(
                cfg.server_tls_ca.as_deref(),
                cfg.server_tls_cert.as_deref(),
                cfg.server_tls_key.as_deref(),
            )?)
        } else {
            None
        };
        Ok(TlsConfigs { listener, servers })
    }
}

/// rustls on *ring*: it builds into the static glibc binary with nothing
/// but a C compiler, where aws-lc-rs (rustls' default) needs a heavier
/// build. rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange (X25519MLKEM768); X25519 and the P-curves remain.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(store)
}

/// The listener's configuration: its chain and key, and client
/// certificates required (signed by `ca`) when `ca` is given.
pub(crate) fn listener_config(
    cert: &Path,
    key_path: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                cert.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// The configuration for connections to the servers: verified against `ca`
/// (or the system's trust store), with a client certificate when given.
pub(crate) fn servers_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key_path: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    let store = match ca {
        Some(ca) => roots(ca)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "--server-tls: the system has no trusted CA certificates; give --server-tls-ca PATH"
                        .into(),
                );
            }
            store
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(store);
    let config = match (cert, key_path) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certs(c)?, key(k)?)
            .map_err(|e| format!("client certificate {}: {e}", c.display()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate is checked against: its host name, or
/// its address when it was given as one.
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// Why a TLS handshake failed, as `stats` and Prometheus name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// The peer sent bytes that are not TLS (plaintext on the TLS port).
    NotTls,
    /// No handshake within `--tls-handshake-timeout`.
    Timeout,
    /// Under `--tls-ca`, the client presented no certificate.
    NoCertificate,
    /// A certificate failed verification (the client's, or a server's).
    BadCertificate,
    /// The peer refused the handshake with an alert.
    Alert,
    /// The peer closed the connection during the handshake.
    Closed,
    /// Anything else the TLS protocol refused.
    Protocol,
}

impl HandshakeError {
    /// Every reason, in `stats` order.
    pub(crate) const ALL: [HandshakeError; 7] = [
        HandshakeError::NotTls,
        HandshakeError::Timeout,
        HandshakeError::NoCertificate,
        HandshakeError::BadCertificate,
        HandshakeError::Alert,
        HandshakeError::Closed,
        HandshakeError::Protocol,
    ];

    /// Its label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeError::NotTls => "not_tls",
            HandshakeError::Timeout => "timeout",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::BadCertificate => "bad_certificate",
            HandshakeError::Alert => "alert",
            HandshakeError::Closed => "closed",
            HandshakeError::Protocol => "protocol",
        }
    }

    /// Its counter.
    pub(crate) fn counter(self) -> crate::stats::Counter {
        use crate::stats::Counter as C;
        match self {
            HandshakeError::NotTls => C::TlsErrorNotTls,
            HandshakeError::Timeout => C::TlsErrorTimeout,
            HandshakeError::NoCertificate => C::TlsErrorNoCertificate,
            HandshakeError::BadCertificate => C::TlsErrorBadCertificate,
            HandshakeError::Alert => C::TlsErrorAlert,
            HandshakeError::Closed => C::TlsErrorClosed,
            HandshakeError::Protocol => C::TlsErrorProtocol,
        }
    }

    fn of(e: &rustls::Error) -> HandshakeError {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) => HandshakeError::NotTls,
            E::NoCertificatesPresented => HandshakeError::NoCertificate,
            E::InvalidCertificate(_) => HandshakeError::BadCertificate,
            E::AlertReceived(_) => HandshakeError::Alert,
            _ => HandshakeError::Protocol,
        }
    }
}

/// A TLS failure on an established or handshaking session.
#[derive(Debug)]
pub(crate) struct TlsError {
    /// The reason, for the counters.
    pub reason: HandshakeError,
    /// rustls' words, for the log.
    pub detail: String,
    /// The handshake had not finished.
    pub handshaking: bool,
}

/// What a receive brought.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Received {
    /// The handshake finished with this receive.
    pub handshake_done: bool,
    /// The peer sent close_notify: no more plaintext comes.
    pub closed: bool,
}

/// One connection's TLS session and its encrypted output.
pub(crate) struct TlsSession {
    conn: rustls::Connection,
    /// Records to send, in order; the engine may have the front ones in
    /// flight (it never advances them before their send completes).
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Where records are written (split off per flush).
    records: BytesMut,
    /// close_notify was queued.
    closing: bool,
}

impl TlsSession {
    /// A session for a client accepted on the TLS listener.
    pub(crate) fn accept(cfg: Arc<ServerConfig>) -> Result<TlsSession, String> {
        let conn = ServerConnection::new(cfg).map_err(|e| e.to_string())?;
        Ok(Self::with(conn.into()))
    }

    /// A session for a connection to server `name`.
    pub(crate) fn connect(
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsSession, String> {
        let conn = ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        let mut s = Self::with(conn.into());
        // The client speaks first: its hello is ready to send now.
        s.flush();
        Ok(s)
    }

    fn with(mut conn: rustls::Connection) -> TlsSession {
        conn.set_buffer_limit(Some(SESSION_BUFFER));
        TlsSession {
            conn,
            out: VecDeque::new(),
            out_bytes: 0,
            records: BytesMut::new(),
            closing: false,
        }
    }

    /// True until the handshake has finished.
    pub(crate) fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Decrypt received ciphertext, appending the plaintext to `plain`.
    /// Records the session must answer (handshake, alerts) are queued.
    pub(crate) fn receive(
        &mut self,
        mut cipher: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, TlsError> {
        let was = self.conn.is_handshaking();
        let mut got = Received::default();
        // Bounded by the ciphertext: every pass consumes some of it or
        // fails.
        while !cipher.is_empty() {
            match self.conn.read_tls(&mut cipher) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(TlsError {
                        reason: HandshakeError::Protocol,
                        detail: e.to_string(),
                        handshaking: self.conn.is_handshaking(),
                    })
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // The alert that tells the peer why.
                    self.flush();
                    return Err(TlsError {
                        reason: HandshakeError::of(&e),
                        detail: e.to_string(),
                        handshaking: self.conn.is_handshaking(),
                    });
                }
            };
            let mut want = state.plaintext_bytes_to_read();
            let mut reader = self.conn.reader();
            // Bounded by the plaintext the records held.
            while want > 0 {
                let at = plain.len();
                plain.resize(at + want, 0);
                match reader.read(&mut plain[at..]) {
                    Ok(0) => {
                        plain.truncate(at);
                        break;
                    }
                    Ok(n) => {
                        plain.truncate(at + n);
                        want -= n.min(want);
                    }
                    Err(_) => {
                        plain.truncate(at);
                        break;
                    }
                }
            }
            if state.peer_has_closed() {
                got.closed = true;
            }
        }
        got.handshake_done = was && !self.conn.is_handshaking();
        self.flush();
        Ok(got)
    }

    /// Encrypt plaintext for the peer into the send queue; returns how
    /// much was taken (all of it once the handshake is done; before, what
    /// rustls' buffer holds).
    pub(crate) fn write(&mut self, plain: &[u8]) -> usize {
        let mut taken = 0;
        // Bounded: each pass takes bytes, or moves records out of rustls'
        // buffer to make room, or stops.
        while taken < plain.len() {
            match self.conn.writer().write(&plain[taken..]) {
                Ok(n) if n > 0 => taken += n,
                _ if self.conn.wants_write() => self.flush(),
                _ => break,
            }
        }
        taken
    }

    /// Plaintext rustls will still take before the buffer limit.
    pub(crate) fn room(&self) -> usize {
        SESSION_BUFFER.saturating_sub(self.out_bytes)
    }

    /// Queue the close_notify alert (once).
    pub(crate) fn close_notify(&mut self) {
        if !std::mem::replace(&mut self.closing, true) {
            self.conn.send_close_notify();
            self.flush();
        }
    }

    /// Move every record rustls has ready into the send queue.
    pub(crate) fn flush(&mut self) {
        // Bounded: each pass drains rustls' pending records.
        while self.conn.wants_write() {
            if self.records.capacity() - self.records.len() < RECORD_ROOM {
                self.records.reserve(RECORD_ROOM * 2);
            }
            let mut w = (&mut self.records).writer();
            match self.conn.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let rec = self.records.split().freeze();
            self.out_bytes += rec.len();
            self.out.push_back(rec);
        }
    }

    /// The records to send, in order.
    pub(crate) fn out(&self) -> &VecDeque<Bytes> {
        &self.out
    }

    /// Bytes of records waiting to be sent.
    pub(crate) fn pending(&self) -> usize {
        self.out_bytes
    }

    /// `n` bytes of [`TlsSession::out`] were sent.
    pub(crate) fn sent(&mut self, n: usize) {
        crate::protocol::advance_queue(&mut self.out, n);
        self.out_bytes = self.out_bytes.saturating_sub(n);
    }

    /// Take the record queue (its memory must outlive a send in flight on
    /// a socket given up).
    pub(crate) fn take_out(&mut self) -> VecDeque<Bytes> {
        self.out_bytes = 0;
        std::mem::take(&mut self.out)
    }
}

/// How the control plane reaches one server: its address, and the TLS
/// configuration and name to verify when `--server-tls` is on.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// `--server-tls`: the client configuration and the server's name.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// A blocking connection of the control plane (probes, drains, sweeps,
/// metadumps): plain TCP, or TLS over it.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(std::net::TcpStream),
    /// TLS over TCP; the handshake is done when it is handed out.
    Tls(Box<rustls::StreamOwned<ClientConnection, std::net::TcpStream>>),
}

impl Stream {
    /// The TCP socket under it.
    pub(crate) fn tcp(&self) -> &std::net::TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A TLS failure of a control-plane connection, told apart from a TCP one
/// (an `io::Error` of kind `InvalidData` carrying rustls' error).
pub(crate) fn is_tls_failure(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData
        && e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

impl Dial {
    /// Connect within `connect_timeout`, with reads and writes limited to
    /// `io_timeout`, and finish the TLS handshake (bounded by both).
    pub(crate) fn open(
        &self,
        connect_timeout: std::time::Duration,
        io_timeout: std::time::Duration,
    ) -> std::io::Result<Stream> {
        let tcp = std::net::TcpStream::connect_timeout(&self.addr, connect_timeout)?;
        tcp.set_read_timeout(Some(io_timeout))?;
        tcp.set_write_timeout(Some(io_timeout))?;
        let _ = tcp.set_nodelay(true);
        let Some((cfg, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let conn = ClientConnection::new(cfg.clone(), name.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Bounded by the socket timeouts: each pass reads or writes.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Stream::Tls(Box::new(s)))
    }
}
