//! HTTPS serving and client glue shared by every role.
//!
//! warp has no TLS of its own (0.4): [`serve`] accepts TCP, runs the rustls
//! handshake, records the peer's certificate identity in the request extensions
//! ([`PeerIdentity`], read by filters with `warp::ext::get`), and hands the
//! connection to hyper-util's auto (HTTP/1 + HTTP/2) builder.
//!
//! Invariants:
//! - TLS 1.3 only, on every listener and client.
//! - A listener built with [`ClientAuth::Required`] refuses, at the handshake,
//!   any peer whose certificate was not signed by the CX CA.
//! - On shutdown a listener stops accepting at once; open connections get a
//!   graceful close and are dropped after [`DRAIN_DEADLINE`].
//! - A process presents the certificate in its [`CertSlot`] on every
//!   handshake, as server and as client; a renewed certificate put in the
//!   slot is used from the next handshake on, with no restart (connections
//!   already open keep the one they began with).

mod error;
pub use error::{ApiError, recover, rejection_body};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use warp::Filter;

use crate::engine::crc;
use crate::engine::pki::{self, Identity};
use crate::engine::shutdown::Shutdown;

/// How long open connections may take to finish once shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(3);
/// Cap on concurrent connections per listener (back-pressure, not a tuning knob).
pub const MAX_CONNECTIONS: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("bad PEM in {0}")]
    Pem(&'static str),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Who is on the other end of a connection, as its certificate says.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    /// The host id (certificate CN) of a verified client certificate, if any.
    pub host_id: Option<String>,
    pub addr: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Role-to-role ports: a certificate from the CX CA is mandatory.
    Required,
    /// The UI/API port: browsers and the CLI come without one; roles present theirs.
    Optional,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn ca_roots(ca_pem: &str) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|_| TransportError::Pem("CA certificate"))?;
        roots.add(c)?;
    }
    if roots.is_empty() {
        return Err(TransportError::Pem("CA certificate"));
    }
    Ok(roots)
}

/// This process's certificate and key, shared by every listener and client
/// it builds, so a renewal ([`CertSlot::set`]) reaches all of them at once.
#[derive(Debug)]
pub struct CertSlot(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CertSlot {
    pub fn new(id: &Identity) -> Result<Arc<CertSlot>, TransportError> {
        Ok(Arc::new(CertSlot(std::sync::RwLock::new(certified(id)?))))
    }

    /// Present `id`'s certificate from the next handshake on.
    pub fn set(&self, id: &Identity) -> Result<(), TransportError> {
        let k = certified(id)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = k;
        Ok(())
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(id: &Identity) -> Result<Arc<rustls::sign::CertifiedKey>, TransportError> {
    let (certs, key) = chain_and_key(id)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        certs,
        key,
        &provider(),
    )?))
}

fn chain_and_key(
    id: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let certs = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TransportError::Pem("node certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|_| TransportError::Pem("node key"))?;
    Ok((certs, key))
}

/// A TLS 1.3 server configuration presenting `id`'s certificate.
pub fn server_config(
    id: &Identity,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    server_config_with(&id.ca_pem, CertSlot::new(id)?, auth)
}

/// A TLS 1.3 server configuration presenting what `slot` holds at each
/// handshake.
pub fn server_config_with(
    ca_pem: &str,
    slot: Arc<CertSlot>,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let roots = Arc::new(ca_roots(ca_pem)?);
    let b = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = match auth {
        ClientAuth::Required => b.build(),
        ClientAuth::Optional => b.allow_unauthenticated().build(),
    }
    .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts only `ca_pem` and, given an identity, presents it.
pub fn client(ca_pem: &str, id: Option<&Identity>) -> Result<reqwest::Client, TransportError> {
    client_with(ca_pem, id.map(CertSlot::new).transpose()?)
}

/// [`client`] presenting what `slot` holds at each handshake.
pub fn client_with(
    ca_pem: &str,
    slot: Option<Arc<CertSlot>>,
) -> Result<reqwest::Client, TransportError> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .tls_backend_preconfigured(client_tls_with(ca_pem, slot)?)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The TLS side of [`client`]: TLS 1.3, trusting only `ca_pem`, presenting
/// `id` if given, offering HTTP/1.1.
pub fn client_tls(
    ca_pem: &str,
    id: Option<&Identity>,
) -> Result<rustls::ClientConfig, TransportError> {
    client_tls_with(ca_pem, id.map(CertSlot::new).transpose()?)
}

/// [`client_tls`] presenting what `slot` holds at each handshake.
pub fn client_tls_with(
    ca_pem: &str,
    slot: Option<Arc<CertSlot>>,
) -> Result<rustls::ClientConfig, TransportError> {
    let roots = ca_roots(ca_pem)?;
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match slot {
        Some(slot) => b.with_client_cert_resolver(slot),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A JSON answer from a peer role: its HTTP status and body (`Null` when it
/// sent none or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: warp::http::StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    /// The peer's error: `message; action` of an [`crate::api::ErrorBody`],
    /// or the `error` of a data-plane answer.
    pub fn error(&self) -> String {
        if let Ok(b) = <crate::api::ErrorBody as serde::Deserialize>::deserialize(&self.body) {
            return b.to_string();
        }
        self.body["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned()
    }

    /// The body of a 2xx answer, else the peer's error message.
    pub fn ok(self) -> Result<serde_json::Value, String> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.error())
        }
    }

    /// Pass the answer on unchanged (a proxy).
    pub fn into_reply(self) -> warp::reply::Response {
        json_reply(self.status, self.body)
    }
}

/// Send a role-to-role request. `Err` only when no answer came (connection,
/// TLS, timeout); any HTTP status is an [`Answer`].
/// An answer's body is read up to [`MAX_ANSWER`] bytes; a longer one is
/// a 502 that says so, never an allocation the peer chose.
pub async fn call(req: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let mut r = req.send().await?;
    let mut status = warp::http::StatusCode::from_u16(r.status().as_u16())
        .unwrap_or(warp::http::StatusCode::BAD_GATEWAY);
    let mut buf = Vec::new();
    let mut too_long = r.content_length().is_some_and(|n| n > MAX_ANSWER as u64);
    while !too_long && let Some(piece) = r.chunk().await? {
        too_long = buf.len() + piece.len() > MAX_ANSWER;
        if !too_long {
            buf.extend_from_slice(&piece);
        }
    }
    let body = if too_long {
        status = warp::http::StatusCode::BAD_GATEWAY;
        serde_json::json!({"error": format!("the peer's answer is longer than {MAX_ANSWER} bytes")})
    } else {
        serde_json::from_slice(&buf).unwrap_or_default()
    };
    Ok(Answer { status, body })
}

/// The longest role-to-role JSON answer read (a CX's sync response with
/// thousands of pairs is a few MiB).
pub const MAX_ANSWER: usize = 16 << 20;

/// A JSON response with `status`.
pub fn json_reply(status: warp::http::StatusCode, v: serde_json::Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&v), status).into_response()
}

/// A chunk PUT's body, not yet read: its `Content-Length` (required, at
/// most a chunk's largest size) and the stream. The handler decides whether
/// the request may be read at all (who sent it, [`Admission`]) before any
/// memory is taken for it, then calls [`ChunkBody::gather`].
pub struct ChunkBody {
    pub len: u64,
    stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, warp::Error>> + Send>,
    >,
}

pub fn chunk_body() -> impl Filter<Extract = (ChunkBody,), Error = warp::Rejection> + Clone {
    use crate::engine::chunk;
    use futures_util::StreamExt;
    warp::body::content_length_limit((chunk::HEADER_LEN + chunk::MAX_RAW) as u64)
        .and(warp::header::<u64>("content-length"))
        .and(warp::body::stream())
        .map(|len, body: _| {
            let stream = StreamExt::map(body, |r: Result<_, warp::Error>| {
                r.map(|mut b| {
                    let n = bytes::Buf::remaining(&b);
                    bytes::Buf::copy_to_bytes(&mut b, n)
                })
            });
            ChunkBody {
                len,
                stream: Box::pin(stream),
            }
        })
}

impl ChunkBody {
    /// Read the body into one buffer from
    /// [`bufpool`](crate::engine::bufpool) that returns there when the last
    /// [`bytes::Bytes`] of it is dropped (`warp::body::bytes` gathers a body
    /// into fresh memory every time), with the CRC-32C of its payload (past
    /// the chunk header) summed as each piece arrives, while it is still in
    /// the CPU's cache: a second pass over a chunk read it back from memory
    /// for 0.06 CPU-seconds per GB.
    ///
    /// A body that stops arriving for [`BODY_DEADLINE`] is an error, so a
    /// peer cut off mid-body never holds the memory admitted for it.
    pub async fn gather(self) -> Result<(bytes::Bytes, u32), String> {
        tokio::time::timeout(
            BODY_DEADLINE,
            gather(self.len, self.stream, crate::engine::chunk::HEADER_LEN),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "request body not received within {BODY_DEADLINE:?}"
            ))
        })
    }

    /// Read the body and drop it piece by piece (no memory kept), so an
    /// answer given without it reaches the client instead of a reset
    /// connection; bounded by [`BODY_DEADLINE`].
    pub async fn discard(mut self) {
        use futures_util::StreamExt;
        let _ = tokio::time::timeout(BODY_DEADLINE, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}

async fn gather<S, B>(len: u64, body: S, crc_after: usize) -> Result<(bytes::Bytes, u32), String>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::TryStreamExt;
    let mut v = crate::engine::bufpool::take(len as usize);
    let mut crc = 0u32;
    let mut body = std::pin::pin!(body);
    while let Some(mut piece) = body
        .try_next()
        .await
        .map_err(|e| format!("request body: {e}"))?
    {
        if v.len() + piece.remaining() > len as usize {
            return Err(format!(
                "request body runs past its Content-Length of {len} bytes"
            ));
        }
        while piece.has_remaining() {
            let c = piece.chunk();
            let at = v.len();
            v.extend_from_slice(c);
            if v.len() > crc_after {
                crc = crc::crc32c_append(crc, &v[at.max(crc_after)..]);
            }
            let n = c.len();
            piece.advance(n);
        }
    }
    if v.len() as u64 != len {
        return Err(format!(
            "request body ended after {} of its {len} bytes",
            v.len()
        ));
    }
    Ok((crate::engine::bufpool::shared(v), crc))
}

/// How long a chunk body may take to arrive whole (the senders' own
/// request timeout is 120 s).
pub const BODY_DEADLINE: Duration = Duration::from_secs(120);

/// A bound on the bytes of request bodies one role holds in memory at once
/// (`ps.chunk_memory`, `mt.chunk_memory`): a body is read only under an
/// [`Admit`] for its size (the buffer it lands in), held until the request
/// is answered. One request larger than the whole bound is admitted alone.
/// Counted in KiB.
#[derive(Clone)]
pub struct Admission {
    sem: Arc<Semaphore>,
    kib: u32,
}

/// Bytes of an [`Admission`] held by one request; returned on drop.
pub struct Admit(tokio::sync::OwnedSemaphorePermit);

impl Admission {
    pub fn new(bytes: u64) -> Admission {
        let kib = (bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
        Admission {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }
    /// A body of `bytes` lands in a buffer of up to
    /// [`bufpool::most_for`](crate::engine::bufpool::most_for) bytes: that
    /// is what is counted.
    fn units(&self, bytes: u64) -> u32 {
        let most = crate::engine::bufpool::most_for(bytes.min(1 << 40) as usize) as u64;
        most.div_ceil(1024).min(self.kib as u64).max(1) as u32
    }
    /// `bytes` now, or `None` if that would pass the bound.
    pub fn try_admit(&self, bytes: u64) -> Option<Admit> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()
            .map(Admit)
    }
    /// `bytes`, waiting at most `wait` for others to give theirs back
    /// (first come, first served).
    pub async fn admit(&self, bytes: u64, wait: Duration) -> Option<Admit> {
        let f = self.sem.clone().acquire_many_owned(self.units(bytes));
        match tokio::time::timeout(wait, f).await {
            Ok(Ok(p)) => Some(Admit(p)),
            _ => None,
        }
    }
    /// Whether `a` is all that is admitted now.
    pub fn held_only_by(&self, a: &Admit) -> bool {
        self.kib as usize - self.sem.available_permits() <= a.0.num_permits()
    }

    /// Bytes admitted now.
    pub fn in_use(&self) -> u64 {
        (self.kib as u64 - self.sem.available_permits() as u64) * 1024
    }
    pub fn limit(&self) -> u64 {
        self.kib as u64 * 1024
    }
}

/// A client for the one request that happens before the CA is known
/// (enrollment's CA fetch, `tern login`'s first contact). The caller MUST
/// verify what it receives some other way (token MAC, operator fingerprint).
pub fn unverified_client() -> Result<reqwest::Client, TransportError> {
    Ok(reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Who a request is from, as a role's gate learns it (a user by token, a
/// node by certificate). Every request gets a fresh one in its extensions;
/// the gate fills it, handlers and the audit log read it.
#[derive(Clone, Debug, Default)]
pub struct Caller(Arc<std::sync::Mutex<CallerInfo>>);

#[derive(Debug, Default)]
struct CallerInfo {
    user: Option<crate::api::auth::Principal>,
    actor: Option<String>,
}

impl Caller {
    pub fn set_user(&self, user: String, role: crate::api::auth::UserRole, token_id: String) {
        let mut c = self.0.lock().unwrap();
        c.actor = Some(user.clone());
        c.user = Some(crate::api::auth::Principal {
            user,
            role,
            token_id,
        });
    }
    /// Name the caller for the audit log without granting anything (a node,
    /// a login attempt's user name).
    pub fn set_actor(&self, actor: String) {
        self.0.lock().unwrap().actor = Some(actor);
    }
    pub fn principal(&self) -> Option<crate::api::auth::Principal> {
        self.0.lock().unwrap().user.clone()
    }
    /// `(actor, role)`: `-` when nobody was identified.
    pub fn actor(&self) -> (String, Option<crate::api::auth::UserRole>) {
        let c = self.0.lock().unwrap();
        (
            c.actor.clone().unwrap_or_else(|| "-".into()),
            c.user.as_ref().map(|u| u.role),
        )
    }
}

/// Serve `filter` over TLS on `listener` until `shutdown` fires.
pub async fn serve<F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    filter: F,
    mut shutdown: Shutdown,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let svc = warp::service(filter);
    let acceptor = tls.map(TlsAcceptor::from);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let local = listener.local_addr().ok();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait() => break,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        // Answers go out whole at once: without this, the last segment of
        // a large answer waits for the client's delayed ACK (~40 ms, Nagle).
        let _ = tcp.set_nodelay(true);
        // Reap finished connection tasks so the set stays small.
        while conns.try_join_next().is_some() {}
        let svc = svc.clone();
        let acceptor = acceptor.clone();
        let mut sd = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(listener = name, peer = %addr, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let host_id = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| pki::common_name(c));
                    let peer = PeerIdentity {
                        host_id,
                        addr: Some(addr),
                    };
                    serve_conn(TokioIo::new(tls), svc, peer, &mut sd).await;
                }
                None => {
                    let peer = PeerIdentity {
                        host_id: None,
                        addr: Some(addr),
                    };
                    serve_conn(TokioIo::new(tcp), svc, peer, &mut sd).await;
                }
            }
        });
    }
    tracing::info!(listener = name, addr = ?local, "listener stopped accepting; draining connections");
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    tracing::info!(listener = name, "listener closed");
}

async fn serve_conn<I, S>(io: I, svc: S, peer: PeerIdentity, shutdown: &mut Shutdown)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let hsvc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(Caller::default());
        let mut s = svc.clone();
        async move { tower_service::Service::call(&mut s, req).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, hsvc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_DEADLINE, conn.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node identity signed by `ca` for host id `host`.
    fn identity(ca: &pki::Ca, host: &str) -> Identity {
        let (key, csr) = pki::new_key_and_csr(&["localhost".into()]).unwrap();
        Identity {
            info: pki::NodeInfo {
                host_id: host.into(),
                cx_url: String::new(),
            },
            cert_pem: ca.sign_csr(&csr, host, pki::NODE_CERT_VALIDITY).unwrap(),
            key_pem: key.serialize_pem(),
            ca_pem: ca.cert_pem.clone(),
        }
    }

    /// One mutual-TLS handshake in memory: the host ids each side saw.
    fn handshake(
        s: &Arc<rustls::ServerConfig>,
        c: &Arc<rustls::ClientConfig>,
    ) -> (Option<String>, Option<String>) {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(c.clone(), name).unwrap();
        let mut server = rustls::ServerConnection::new(s.clone()).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut b = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut b).unwrap();
            }
            server.read_tls(&mut &b[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut b = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut b).unwrap();
            }
            client.read_tls(&mut &b[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        let cn = |c: Option<&[CertificateDer<'_>]>| c.and_then(|c| pki::common_name(&c[0]));
        (
            cn(server.peer_certificates()),
            cn(client.peer_certificates()),
        )
    }

    #[test]
    fn a_renewed_certificate_is_presented_from_the_next_handshake_on() {
        let d = tempfile::tempdir().unwrap();
        let ca = pki::Ca::load_or_create(d.path(), "test").unwrap();
        let (srv, cli) = (identity(&ca, "server-1"), identity(&ca, "client-1"));
        let (srv_slot, cli_slot) = (CertSlot::new(&srv).unwrap(), CertSlot::new(&cli).unwrap());
        let s = server_config_with(&ca.cert_pem, srv_slot.clone(), ClientAuth::Required).unwrap();
        let mut c = client_tls_with(&ca.cert_pem, Some(cli_slot.clone())).unwrap();
        // A resumed session carries the certificates of the one it resumes;
        // every handshake here is a full one.
        c.resumption = rustls::client::Resumption::disabled();
        let c = Arc::new(c);
        let seen = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
        assert_eq!(handshake(&s, &c), seen("client-1", "server-1"));
        srv_slot.set(&identity(&ca, "server-2")).unwrap();
        cli_slot.set(&identity(&ca, "client-2")).unwrap();
        assert_eq!(handshake(&s, &c), seen("client-2", "server-2"));
        // A key that is not the certificate's is refused and changes nothing.
        let mut wrong = identity(&ca, "server-3");
        wrong.key_pem = identity(&ca, "x").key_pem;
        assert!(srv_slot.set(&wrong).is_err());
        assert_eq!(handshake(&s, &c), seen("client-2", "server-2"));
    }

    #[tokio::test]
    async fn a_gathered_body_and_its_crc_do_not_depend_on_how_it_was_cut() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let want = crc::crc32c(&body[112..]);
        // Cuts before, at, inside and far past the 112-byte boundary.
        for cuts in [
            vec![],
            vec![1],
            vec![112],
            vec![50, 111, 113],
            vec![4096, 70_000, 299_999],
        ] {
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.iter().copied().chain([body.len()]) {
                pieces.push(Ok::<_, warp::Error>(bytes::Bytes::copy_from_slice(
                    &body[at..c],
                )));
                at = c;
            }
            let (b, crc) = gather(body.len() as u64, futures_util::stream::iter(pieces), 112)
                .await
                .unwrap();
            assert_eq!(&b[..], &body[..], "{cuts:?}");
            assert_eq!(crc, want, "{cuts:?}");
        }
        // More than announced is refused.
        let pieces = vec![Ok::<_, warp::Error>(bytes::Bytes::from_static(&[1; 10]))];
        assert!(
            gather(9, futures_util::stream::iter(pieces), 0)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn admission_holds_its_bound_and_admits_an_oversized_request_alone() {
        let a = Admission::new(10 << 20);
        // A body is counted as the buffer it can land in: 1.25x.
        let x = a.try_admit(4 << 20).unwrap();
        assert_eq!(a.in_use(), 5 << 20);
        assert!(a.try_admit(6 << 20).is_none(), "would pass the bound");
        assert!(a.admit(6 << 20, Duration::from_millis(20)).await.is_none());
        let y = a.try_admit(4 << 20).unwrap();
        drop(x);
        // Larger than the whole bound: admitted once nothing else is held.
        assert!(a.try_admit(64 << 20).is_none());
        drop(y);
        let big = a.admit(64 << 20, Duration::from_millis(20)).await.unwrap();
        assert_eq!(a.in_use(), a.limit());
        drop(big);
        assert_eq!(a.in_use(), 0);
    }
}
