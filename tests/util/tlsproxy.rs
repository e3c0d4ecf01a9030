//! A TLS-terminating fault proxy between an agent and its PS: what a chunk
//! damaged inside a host looks like to the PS (TLS itself would catch
//! damage on the wire).
//!
//! It holds the PS's identity towards the agent and the agent's towards the
//! PS (both from their data directories, as only a test can), relays
//! HTTP/1.1 both ways, and, while [`Poison::left`] is above zero, flips one
//! payload byte of every upload of the first chunk it sees after that,
//! the same chunk (path and raw hash) each time the agent sends it again. The PS is reached at
//! its real data port; the agent is sent here by the PS's
//! `node.data_advertise`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use tern::engine::pki::Identity;
use tern::engine::transport::{self, ClientAuth};

#[derive(Default)]
pub struct Poison {
    /// Uploads still to damage.
    pub left: u32,
    /// The chunk being damaged: its path (`/data/v1/ps/PAIR/chunk/FIRST`)
    /// and the raw hash in its header.
    pub target: Option<String>,
    /// Uploads damaged so far.
    pub damaged: u32,
}

pub struct TlsProxy {
    pub addr: SocketAddr,
    pub poison: Arc<Mutex<Poison>>,
    _rt: tokio::runtime::Runtime,
}

impl TlsProxy {
    /// Listen on a free loopback port now; relay to the PS at the address
    /// in `ps_addr_file` (its `DATA/data.addr`) once `ps_pki` and
    /// `agent_pki` (their `DATA/pki` directories) hold enrolled identities.
    pub fn start(ps_addr_file: &Path, ps_pki: &Path, agent_pki: &Path) -> TlsProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let poison = Arc::new(Mutex::new(Poison::default()));
        let (ps_pki, agent_pki, p) = (ps_pki.to_owned(), agent_pki.to_owned(), poison.clone());
        let ps_addr_file = ps_addr_file.to_owned();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // Loaded per connection: the nodes enroll after the proxy
                // starts (the PS's config names it).
                let ps_id = Identity::load(&ps_pki).unwrap();
                let agent_id = Identity::load(&agent_pki).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(
                    transport::server_config(&ps_id, ClientAuth::Required).unwrap(),
                );
                let connector = tokio_rustls::TlsConnector::from(Arc::new(
                    transport::client_tls(&agent_id.ca_pem, Some(&agent_id)).unwrap(),
                ));
                let ps: SocketAddr = std::fs::read_to_string(&ps_addr_file)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let p = p.clone();
                tokio::spawn(async move {
                    let Ok(from_agent) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(up) = TcpStream::connect(ps).await else {
                        return;
                    };
                    let name = rustls_pki_types::ServerName::IpAddress(ps.ip().into());
                    let Ok(to_ps) = connector.connect(name, up).await else {
                        return;
                    };
                    let (ar, mut aw) = tokio::io::split(from_agent);
                    let (mut pr, pw) = tokio::io::split(to_ps);
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut pr, &mut aw).await;
                        let _ = aw.shutdown().await;
                    });
                    let _ = requests(BufReader::new(ar), pw, p).await;
                    back.abort();
                });
            }
        });
        TlsProxy {
            addr,
            poison,
            _rt: rt,
        }
    }
}

/// Relay HTTP/1.1 requests (head, then a `content-length` body) from the
/// agent to the PS, damaging chunk uploads as [`Poison`] says.
async fn requests(
    mut r: BufReader<tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>>,
    mut w: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    poison: Arc<Mutex<Poison>>,
) -> std::io::Result<()> {
    loop {
        let mut head = Vec::new();
        loop {
            let n = r.read_until(b'\n', &mut head).await?;
            if n == 0 {
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        let len: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let path = line.split(' ').nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap_or("").to_owned();
        if line.starts_with("PUT ") && path.contains("/chunk/") {
            let mut p = poison.lock().unwrap();
            // The same chunk is the same records: the same raw hash in its
            // header (a resync's chunk may reuse the sequence numbers).
            let key = format!("{path} {:?}", body.get(72..104));
            if p.left > 0 && !body.is_empty() && p.target.get_or_insert_with(|| key.clone()) == &key
            {
                // Past the header: the payload, which its CRC covers.
                let at = body.len().min(200) - 1;
                body[at] ^= 0x5a;
                p.left -= 1;
                p.damaged += 1;
            }
        }
        w.write_all(&head).await?;
        w.write_all(&body).await?;
        w.flush().await?;
    }
}
