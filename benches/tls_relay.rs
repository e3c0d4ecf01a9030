//! The floor under the PS's CPU cost: what a process spends per GB just to
//! take bytes off one mutual-TLS connection and put them on another, with
//! the product's own TLS settings (rustls, aws-lc-rs, TLS 1.3) and nothing
//! else: no HTTP, no chunk checks, no compression, no cache. Prints figures;
//! asserts nothing.
//!
//!   cargo bench --bench tls_relay            # 2 GiB per variant
//!   TERN_BENCH_QUICK=1 cargo bench --bench tls_relay
//!
//! Three threads on loopback: a source writes random bytes over TLS to the
//! relay, the relay copies them over TLS to a sink. Only the relay thread's
//! CPU time is counted (user and system, `CLOCK_THREAD_CPUTIME_ID`); on
//! loopback the kernel's receive work for what the relay sends is done on
//! the relay's time, as it is for the PS in `benches/pipeline.rs`, so the
//! two are comparable. A plain TCP relay shows the kernel's part alone.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use tern::engine::pki::{Ca, Identity, NodeInfo, new_key_and_csr};
use tern::engine::sysstats;
use tern::engine::transport::{ClientAuth, client_tls, server_config};

mod common;

const BUF: usize = 256 << 10;

fn identity(dir: &std::path::Path) -> Identity {
    let ca = Ca::load_or_create(dir, "tls-relay bench").unwrap();
    let (key, csr) = new_key_and_csr(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = ca
        .sign_csr(&csr, "bench-node", tern::engine::pki::NODE_CERT_VALIDITY)
        .unwrap();
    let ca_pem = std::fs::read_to_string(Ca::cert_path(dir)).unwrap();
    Identity {
        info: NodeInfo {
            host_id: "bench-node".into(),
            cx_url: String::new(),
        },
        cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem,
    }
}

type Server = rustls::StreamOwned<rustls::ServerConnection, Box<dyn ReadWrite>>;
type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A TCP stream read through a `BufReader` of `BUF` bytes: rustls asks the
/// socket for at most one record plus 4 KiB at a time; this makes each
/// `recv` as large as the kernel has.
struct Buffered(BufReader<TcpStream>);
impl Read for Buffered {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Buffered {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

fn accept(l: &TcpListener, cfg: &Arc<rustls::ServerConfig>, buffered: bool) -> Server {
    let (s, _) = l.accept().unwrap();
    let io: Box<dyn ReadWrite> = match buffered {
        true => Box::new(Buffered(BufReader::with_capacity(BUF, s))),
        false => Box::new(s),
    };
    rustls::StreamOwned::new(rustls::ServerConnection::new(cfg.clone()).unwrap(), io)
}

fn connect(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Client {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(cfg.clone(), name).unwrap(), s)
}

fn drain(mut r: impl Read) -> u64 {
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return n,
            Err(e) => panic!("sink: {e}"),
        }
    }
}

/// Copies `total` bytes; returns this thread's CPU seconds for it.
fn copy(inp: &mut impl Read, out: &mut impl Write, total: u64) -> f64 {
    let mut buf = vec![0u8; BUF];
    let cpu0 = sysstats::thread_cpu_us();
    let mut n = 0u64;
    while n < total {
        let k = inp.read(&mut buf).unwrap();
        assert!(k > 0, "relay: source hung up after {n} bytes");
        out.write_all(&buf[..k]).unwrap();
        n += k as u64;
    }
    out.flush().unwrap();
    (sysstats::thread_cpu_us() - cpu0) as f64 / 1e6
}

fn send(out: &mut impl Write, data: &[u8], total: u64) {
    let mut sent = 0u64;
    while sent < total {
        let k = (total - sent).min(data.len() as u64) as usize;
        out.write_all(&data[..k]).unwrap();
        sent += k as u64;
    }
    out.flush().unwrap();
}

/// An orderly TLS close: close_notify, no more writes, then read until the
/// peer closes, so nothing unread (session tickets) turns the close into a
/// reset that would throw away bytes the peer has not read yet.
fn close(conn: &mut rustls::ClientConnection, sock: &mut TcpStream) {
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(sock).unwrap();
    }
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::io::copy(sock, &mut std::io::sink());
}

#[derive(Clone, Copy, PartialEq)]
enum Relay {
    /// Plain TCP in and out: the kernel's part alone.
    Tcp,
    /// rustls on both sides, as the PS; `buffered` puts a BufReader under
    /// the inbound TLS.
    Rustls { buffered: bool },
    /// socat with OpenSSL, a C relay, as a cross-check on rustls.
    Socat,
}

/// Relays `total` bytes; returns the relay's CPU seconds and the wall
/// seconds the transfer took.
fn run(total: u64, relay: Relay, id: &Identity, dir: &Path) -> (f64, f64) {
    let tls = relay != Relay::Tcp;
    let scfg = server_config(id, ClientAuth::Required).unwrap();
    let ccfg = Arc::new(client_tls(&id.ca_pem, Some(id)).unwrap());
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink_l.local_addr().unwrap().port();
    let relay_port = relay_l.local_addr().unwrap().port();
    // socat listens on the port itself: free it before anyone waits for it.
    let relay_l = (relay != Relay::Socat).then_some(relay_l);

    let sc = scfg.clone();
    let sink = std::thread::spawn(move || match tls {
        true => drain(accept(&sink_l, &sc, false)),
        false => drain(sink_l.accept().unwrap().0),
    });
    let (sc, cc) = (scfg.clone(), ccfg.clone());
    let (dir2, total2) = (dir.to_owned(), total);
    let relay = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || match relay {
            Relay::Rustls { buffered } => {
                let l = relay_l.unwrap();
                let (mut inp, mut out) = (accept(&l, &sc, buffered), connect(sink_port, &cc));
                let cpu = copy(&mut inp, &mut out, total2);
                close(&mut out.conn, &mut out.sock);
                cpu
            }
            Relay::Tcp => {
                let mut inp = relay_l.unwrap().accept().unwrap().0;
                let mut out = TcpStream::connect(("127.0.0.1", sink_port)).unwrap();
                copy(&mut inp, &mut out, total2)
            }
            Relay::Socat => socat(relay_port, sink_port, &dir2),
        })
        .unwrap();
    let mut data = vec![0u8; 8 << 20];
    rand::rng().fill_bytes(&mut data);
    let t = Instant::now();
    match tls {
        true => {
            let mut src = connect_retrying(relay_port, &ccfg);
            send(&mut src, &data, total);
            close(&mut src.conn, &mut src.sock);
        }
        false => send(
            &mut TcpStream::connect(("127.0.0.1", relay_port)).unwrap(),
            &data,
            total,
        ),
    }
    let cpu = relay.join().unwrap();
    let got = sink.join().unwrap();
    assert_eq!(got, total, "the sink got every byte");
    (cpu, t.elapsed().as_secs_f64())
}

/// socat relays one connection, TLS in (our certificate) and TLS out
/// (presenting it, checking the sink's against our CA), with 256 KiB
/// buffers, giving up after 30 s idle; its CPU is its rusage once it exits.
fn socat(port: u16, sink_port: u16, dir: &Path) -> f64 {
    let pem = dir.join("node.pem");
    let ca = Ca::cert_path(dir);
    let child = std::process::Command::new("socat")
        .arg(format!("-b{BUF}"))
        .args(["-T", "30"])
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,cert={},cafile={}",
            pem.display(),
            ca.display()
        ))
        .arg(format!(
            "OPENSSL:127.0.0.1:{sink_port},cert={},cafile={},commonname=localhost",
            pem.display(),
            ca.display()
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("socat");
    let before = common::children_cpu_s();
    let st = child.wait_with_output().expect("socat");
    assert!(st.status.success(), "socat: {}", st.status);
    common::children_cpu_s() - before
}

/// `zstd -1` over 512 MiB of random bytes: CPU seconds per GB.
fn zstd_1(dir: &Path) -> Option<f64> {
    let file = dir.join("random.bin");
    let mut f = std::fs::File::create(&file).unwrap();
    let mut data = vec![0u8; 8 << 20];
    for _ in 0..64 {
        rand::rng().fill_bytes(&mut data);
        f.write_all(&data).unwrap();
    }
    drop(f);
    let (bytes, secs) = common::zstd_1(&file)?;
    Some(secs / (bytes as f64 / 1e9))
}

/// A client connection to a relay that may still be starting (socat). It
/// waits for the port to listen without connecting: a relay takes one
/// connection only.
fn connect_retrying(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Client {
    let listening = || {
        let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let local = format!("0100007F:{port:04X}");
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
    };
    for _ in 0..100 {
        if listening() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    connect(port, cfg)
}

fn main() {
    let quick = std::env::var_os("TERN_BENCH_QUICK").is_some();
    let total: u64 = if quick { 512 << 20 } else { 2 << 30 };
    let dir = tempfile::tempdir().unwrap();
    let id = identity(dir.path());
    std::fs::write(
        dir.path().join("node.pem"),
        format!("{}{}", id.key_pem, id.cert_pem),
    )
    .unwrap();
    let gb = total as f64 / 1e9;
    let mut relays = vec![
        ("tcp relay (no TLS)", Relay::Tcp),
        (
            "rustls relay (rustls reads the socket)",
            Relay::Rustls { buffered: false },
        ),
        (
            "rustls relay (256 KiB BufReader under rustls)",
            Relay::Rustls { buffered: true },
        ),
    ];
    let has_socat = std::process::Command::new("socat")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match has_socat {
        true => relays.push(("socat/OpenSSL relay", Relay::Socat)),
        false => eprintln!("tls_relay: no socat here; its cross-check skipped"),
    }
    match zstd_1(dir.path()) {
        Some(z) => println!(
            "tls_relay: zstd -1 on random bytes (reference): {z:.3} CPU-s per GB ({:.2} GB per CPU-second)",
            1.0 / z
        ),
        None => eprintln!("tls_relay: no zstd here; the reference skipped"),
    }
    for (label, relay) in relays {
        let (cpu, secs) = run(total, relay, &id, dir.path());
        println!(
            "tls_relay: {label}: {:.3} CPU-s per GB ({:.2} GB per CPU-second); {total} bytes at {:.0} MB/s",
            cpu / gb,
            gb / cpu,
            total as f64 / secs / 1e6
        );
    }
}
