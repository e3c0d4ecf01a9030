//! Fuzz the NBD server with whatever a client may send: option haggling
//! (lengths, names, unknown options) and transmission requests (lengths,
//! offsets past the end, unknown commands), against a 1 MiB export held in
//! memory. Never panic, never allocate past the protocol's bounds, and end
//! when the input does. Half the inputs start with a well-formed greeting
//! and NBD_OPT_GO for the export, so the request parser is reached.
#![no_main]
use std::io;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use tern::engine::nbd::{self, Export, Exports, IHAVEOPT};

const SIZE: u64 = 1 << 20;

struct Mem(Mutex<Vec<u8>>);

impl Export for Mem {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.0.lock().unwrap();
        buf.copy_from_slice(&v[off as usize..off as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, off: u64, data: Vec<u8>, _fua: bool) -> io::Result<()> {
        let mut v = self.0.lock().unwrap();
        v[off as usize..off as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut input = Vec::new();
    if mode & 1 == 1 {
        input.extend_from_slice(&1u32.to_be_bytes()); // fixed newstyle
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        input.extend_from_slice(&8u32.to_be_bytes());
        input.extend_from_slice(&2u32.to_be_bytes());
        input.extend_from_slice(b"vm");
        input.extend_from_slice(&0u16.to_be_bytes());
    }
    input.extend_from_slice(rest);
    let export: Arc<dyn Export> = Arc::new(Mem(Mutex::new(vec![0; SIZE as usize])));
    let exports: Exports = Arc::new([("vm".to_owned(), export)].into_iter().collect());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let _ = nbd::session(&input[..], tokio::io::sink(), exports).await;
    });
});
