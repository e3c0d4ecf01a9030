//! An NBD server (fixed newstyle handshake, simple replies), written once and
//! used wherever Tern exports a block device: the agent's protected volumes
//! (every write captured on its way to the volume) and the MT's virtual
//! snapshots.
//!
//! Protocol reference: the NBD protocol document (`doc/proto.md` of the NBD
//! project). Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO;
//! STARTTLS, STRUCTURED_REPLY, meta contexts and extended headers are
//! answered "unsupported" so clients fall back to simple replies. Commands:
//! READ, WRITE (with FUA), DISC, FLUSH, TRIM, WRITE_ZEROES, CACHE.
//!
//! Invariants: a request is answered only after the export finished it (a
//! WRITE reply means the export accepted the data; with FUA, that it is
//! durable); requests longer than [`MAX_REQUEST`] or outside the export are
//! refused with EINVAL/EOVERFLOW without touching it; a malformed request
//! closes the connection. A request's length is checked against
//! [`MAX_REQUEST`] and an option's against 64 KiB before any buffer is sized
//! by it.

pub mod client;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::bufpool;
use crate::engine::shutdown::Shutdown;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CFLAG_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1;
const TF_READ_ONLY: u16 = 2;
const TF_SEND_FLUSH: u16 = 4;
const TF_SEND_FUA: u16 = 8;
const TF_SEND_TRIM: u16 = 32;
const TF_SEND_WRITE_ZEROES: u16 = 64;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;
const ENOTSUP: u32 = 95;

/// Largest READ/WRITE payload accepted (32 MiB, the protocol's usual maximum).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Connections served at once by one NBD listener (each may hold one
/// request of up to [`MAX_REQUEST`] in memory); more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest option (and option reply) accepted, either way.
pub(crate) const MAX_OPTION_LEN: u32 = 64 << 10;

/// A block device served over NBD. Calls are blocking; the server runs them
/// off the reactor.
pub trait Export: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `off`; the export may keep `data` (the agent's
    /// capture buffers it without a copy).
    fn write(&self, off: u64, data: Vec<u8>, fua: bool) -> io::Result<()>;
    /// Make every acknowledged write durable.
    fn flush(&self) -> io::Result<()>;
    /// Write zeroes (WRITE_ZEROES); the default writes a zero buffer.
    fn write_zeroes(&self, off: u64, len: u64, fua: bool) -> io::Result<()> {
        // One zero buffer, lent piece by piece (the export may keep each).
        let mut done = 0;
        while done < len {
            let n = (len - done).min(1 << 20) as usize;
            let mut z = bufpool::take(n);
            z.resize(n, 0);
            self.write(off + done, z, fua)?;
            done += n as u64;
        }
        Ok(())
    }
    /// Discard (TRIM): content becomes unspecified; the default zeroes it.
    fn trim(&self, off: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(off, len, false)
    }
}

pub type Exports = Arc<BTreeMap<String, Arc<dyn Export>>>;

fn errno_of(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::PermissionDenied => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::StorageFull => ENOSPC,
        io::ErrorKind::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

/// Serve `exports` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, exports: Exports, mut shutdown: Shutdown) {
    let addr = listener.local_addr().ok();
    tracing::info!(listen = ?addr, exports = ?exports.keys().collect::<Vec<_>>(), "NBD server listening");
    let mut conns = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Each connection may hold one request of up to MAX_REQUEST.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.wait() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "nbd accept"); continue; }
            },
            _ = shutdown.wait() => break,
        };
        while conns.try_join_next().is_some() {}
        let exports = exports.clone();
        let mut sd = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _ = sock.set_nodelay(true);
            tokio::select! {
                r = handle(sock, exports) => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "nbd connection ended");
                    }
                }
                _ = sd.wait() => {}
            }
        });
    }
    conns.abort_all();
    tracing::info!(listen = ?addr, "NBD server stopped");
}

async fn option_reply<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    opt: u32,
    ty: u32,
    data: &[u8],
) -> io::Result<()> {
    w.write_u64(REPLY_MAGIC).await?;
    w.write_u32(opt).await?;
    w.write_u32(ty).await?;
    w.write_u32(data.len() as u32).await?;
    w.write_all(data).await?;
    Ok(())
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn tflags(e: &dyn Export) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    if e.read_only() {
        f |= TF_READ_ONLY;
    }
    f
}

async fn handle(sock: TcpStream, exports: Exports) -> io::Result<()> {
    let (r, w) = sock.into_split();
    session(r, w, exports).await
}

/// One client's session, from the server's greeting to its disconnect, on
/// any byte stream (a socket; the fuzz target's buffers).
pub async fn session<R, W>(r: R, w: W, exports: Exports) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    w.write_u64(NBDMAGIC).await?;
    w.write_u64(IHAVEOPT).await?;
    w.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    w.flush().await?;
    let cflags = r.read_u32().await?;
    let no_zeroes = cflags & CFLAG_NO_ZEROES != 0;

    // Option haggling.
    let export = loop {
        if r.read_u64().await? != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let opt = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(bad("option too long"));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(e) = lookup(&exports, &name) else {
                    return Err(bad("unknown export"));
                };
                w.write_u64(e.size()).await?;
                w.write_u16(tflags(&*e)).await?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124]).await?;
                }
                w.flush().await?;
                break e;
            }
            OPT_ABORT => {
                option_reply(&mut w, opt, REP_ACK, &[]).await?;
                w.flush().await?;
                return Ok(());
            }
            OPT_LIST => {
                for name in exports.keys() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    option_reply(&mut w, opt, REP_SERVER, &d).await?;
                }
                option_reply(&mut w, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                if data.len() < 6 {
                    option_reply(&mut w, opt, REP_ERR_INVALID, b"short request").await?;
                    w.flush().await?;
                    continue;
                }
                let nlen = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                if data.len() < 4 + nlen + 2 {
                    option_reply(&mut w, opt, REP_ERR_INVALID, b"bad name length").await?;
                    w.flush().await?;
                    continue;
                }
                let name = String::from_utf8_lossy(&data[4..4 + nlen]).into_owned();
                let Some(e) = lookup(&exports, &name) else {
                    option_reply(
                        &mut w,
                        opt,
                        REP_ERR_UNKNOWN,
                        format!("no export named `{name}`").as_bytes(),
                    )
                    .await?;
                    w.flush().await?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.size().to_be_bytes());
                info.extend_from_slice(&tflags(&*e).to_be_bytes());
                option_reply(&mut w, opt, REP_INFO, &info).await?;
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&4096u32.to_be_bytes());
                bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                option_reply(&mut w, opt, REP_INFO, &bs).await?;
                option_reply(&mut w, opt, REP_ACK, &[]).await?;
                w.flush().await?;
                if opt == OPT_GO {
                    break e;
                }
            }
            _ => {
                option_reply(&mut w, opt, REP_ERR_UNSUP, &[]).await?;
            }
        }
        w.flush().await?;
    };

    // Transmission: one request at a time, answered in order.
    let size = export.size();
    loop {
        if r.read_u32().await? != REQUEST_MAGIC {
            return Err(bad("bad request magic"));
        }
        let flags = r.read_u16().await?;
        let cmd = r.read_u16().await?;
        let handle = r.read_u64().await?;
        let off = r.read_u64().await?;
        let len = r.read_u32().await?;
        let fua = flags & CMD_FLAG_FUA != 0;
        let in_range = off.checked_add(len as u64).is_some_and(|e| e <= size);
        match cmd {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                if len > MAX_REQUEST {
                    return Err(bad("read too large"));
                }
                if !in_range {
                    reply(&mut w, handle, EOVERFLOW, &[]).await?;
                    continue;
                }
                let e = export.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let mut buf = bufpool::take(len as usize);
                    buf.resize(len as usize, 0);
                    e.read(off, &mut buf).map(|_| buf)
                })
                .await
                .map_err(io::Error::other)?;
                match res {
                    Ok(buf) => {
                        reply(&mut w, handle, 0, &buf).await?;
                        bufpool::give(buf);
                    }
                    Err(e) => reply(&mut w, handle, errno_of(&e), &[]).await?,
                }
            }
            CMD_WRITE => {
                if len > MAX_REQUEST {
                    return Err(bad("write too large"));
                }
                let data = read_pooled(&mut r, len as usize).await?;
                let err = match writable(&*export, in_range) {
                    0 => blocking(&export, move |e| e.write(off, data, fua)).await?,
                    err => err,
                };
                reply(&mut w, handle, err, &[]).await?;
            }
            CMD_FLUSH => {
                let err = blocking(&export, |e| e.flush()).await?;
                reply(&mut w, handle, err, &[]).await?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let err = match writable(&*export, in_range) {
                    0 if cmd == CMD_TRIM => {
                        blocking(&export, move |e| e.trim(off, len as u64)).await?
                    }
                    0 => blocking(&export, move |e| e.write_zeroes(off, len as u64, fua)).await?,
                    err => err,
                };
                reply(&mut w, handle, err, &[]).await?;
            }
            CMD_CACHE => reply(&mut w, handle, 0, &[]).await?,
            _ => reply(&mut w, handle, EINVAL, &[]).await?,
        }
    }
}

/// 0 if a modifying request may proceed, else the errno to answer.
fn writable(e: &dyn Export, in_range: bool) -> u32 {
    if e.read_only() {
        EPERM
    } else if !in_range {
        ENOSPC
    } else {
        0
    }
}

/// Run a blocking export call off the reactor; its result as an NBD errno.
async fn blocking(
    e: &Arc<dyn Export>,
    f: impl FnOnce(&dyn Export) -> io::Result<()> + Send + 'static,
) -> io::Result<u32> {
    let e = e.clone();
    let r = tokio::task::spawn_blocking(move || f(&*e))
        .await
        .map_err(io::Error::other)?;
    Ok(r.err().map_or(0, |e| errno_of(&e)))
}

fn lookup(exports: &Exports, name: &str) -> Option<Arc<dyn Export>> {
    // An empty name selects the only export, as nbd clients expect.
    if name.is_empty() && exports.len() == 1 {
        return exports.values().next().cloned();
    }
    exports.get(name).cloned()
}

async fn reply<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    handle: u64,
    err: u32,
    data: &[u8],
) -> io::Result<()> {
    w.write_u32(SIMPLE_REPLY_MAGIC).await?;
    w.write_u32(err).await?;
    w.write_u64(handle).await?;
    if err == 0 {
        w.write_all(data).await?;
    }
    w.flush().await
}

/// A plain file or block device as an export (used by tests and the agent).
pub struct FileExport {
    file: std::fs::File,
    size: u64,
    read_only: bool,
}

impl FileExport {
    pub fn open(path: &std::path::Path, read_only: bool) -> io::Result<FileExport> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        use std::io::{Seek, SeekFrom};
        let size = (&file).seek(SeekFrom::End(0))?;
        Ok(FileExport {
            file,
            size,
            read_only,
        })
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, off)
    }
    fn write(&self, off: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, &data, off)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// `len` bytes from `r` in a buffer from [`bufpool`], read straight into
/// its spare room (not zeroed first). A fresh 1 MiB buffer per write request
/// cost a musl build, whose allocator maps every large block anew, half the
/// agent's CPU in page faults.
async fn read_pooled<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> io::Result<Vec<u8>> {
    use bytes::BufMut;
    let mut v = bufpool::take(len);
    while v.len() < len {
        let want = len - v.len();
        if r.read_buf(&mut (&mut v).limit(want)).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(v)
}
