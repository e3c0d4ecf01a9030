//! A minimal NBD client (fixed newstyle, OPT_GO, simple replies): what
//! `tern workload` and the demo use to write to an agent's export the way a
//! VM or qemu-io would.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use super::{IHAVEOPT, NBDMAGIC, REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

pub struct Client {
    sock: BufWriter<TcpStream>,
    pub size: u64,
    handle: u64,
}

fn proto(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

/// `nbd://HOST:PORT/EXPORT` → (addr, export)
pub fn parse_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("nbd://")
        .ok_or_else(|| proto(format!("`{url}` is not an nbd://HOST:PORT/EXPORT URL")))?;
    let (addr, export) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((addr.to_owned(), export.to_owned()))
}

impl Client {
    pub async fn connect(url: &str) -> io::Result<Client> {
        let (addr, export) = parse_url(url)?;
        let s = TcpStream::connect(&addr).await?;
        s.set_nodelay(true)?;
        let mut s = BufWriter::new(s);
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(proto(format!("{addr} is not an NBD server")));
        }
        let flags = s.read_u16().await?;
        if flags & 1 == 0 {
            return Err(proto("server does not speak fixed newstyle"));
        }
        s.write_u32(flags as u32 & 3).await?;
        // OPT_GO with the export name and no info requests.
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        s.write_u64(IHAVEOPT).await?;
        s.write_u32(OPT_GO).await?;
        s.write_u32(data.len() as u32).await?;
        s.write_all(&data).await?;
        s.flush().await?;
        let mut size = None;
        loop {
            if s.read_u64().await? != REPLY_MAGIC {
                return Err(proto("bad option reply magic"));
            }
            let _opt = s.read_u32().await?;
            let typ = s.read_u32().await?;
            let len = s.read_u32().await?;
            if len > super::MAX_OPTION_LEN {
                return Err(proto("option reply longer than 64 KiB"));
            }
            let len = len as usize;
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await?;
            match typ {
                REP_INFO if len >= 12 && body[0..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(body[2..10].try_into().unwrap()));
                }
                REP_INFO => {}
                REP_ACK => break,
                t if t & (1 << 31) != 0 => {
                    return Err(proto(format!(
                        "server refused export `{export}`: {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                _ => {}
            }
        }
        Ok(Client {
            sock: s,
            size: size.ok_or_else(|| proto("server sent no export size"))?,
            handle: 0,
        })
    }

    async fn request(&mut self, cmd: u16, off: u64, len: u32, data: &[u8]) -> io::Result<()> {
        self.handle += 1;
        let s = &mut self.sock;
        s.write_u32(REQUEST_MAGIC).await?;
        s.write_u16(0).await?;
        s.write_u16(cmd).await?;
        s.write_u64(self.handle).await?;
        s.write_u64(off).await?;
        s.write_u32(len).await?;
        s.write_all(data).await?;
        s.flush().await?;
        if cmd == CMD_DISC {
            return Ok(());
        }
        if s.read_u32().await? != SIMPLE_REPLY_MAGIC {
            return Err(proto("bad reply magic"));
        }
        let err = s.read_u32().await?;
        let h = s.read_u64().await?;
        if h != self.handle {
            return Err(proto("reply to another request"));
        }
        if err != 0 {
            return Err(io::Error::other(format!("NBD server error {err}")));
        }
        Ok(())
    }

    pub async fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.request(CMD_WRITE, off, data.len() as u32, data).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, &[]).await
    }

    pub async fn disconnect(mut self) -> io::Result<()> {
        self.request(CMD_DISC, 0, 0, &[]).await
    }
}
