//! Fuzz the control messages nodes and the CX exchange (sync request and
//! response, node reports, commands and their results, pair and volume
//! specs): never panic, and whatever parses prints back to JSON that parses
//! to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::control::{
    Command, CommandResult, NodeReport, PairSpec, SyncRequest, SyncResponse, VolumeSpec,
};

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let once = serde_json::to_vec(&v).expect("a parsed message prints");
        let again: T = serde_json::from_slice(&once).expect("a printed message parses");
        assert_eq!(serde_json::to_vec(&again).unwrap(), once);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<SyncRequest>(data);
    round_trip::<SyncResponse>(data);
    round_trip::<NodeReport>(data);
    round_trip::<Command>(data);
    round_trip::<CommandResult>(data);
    round_trip::<PairSpec>(data);
    round_trip::<VolumeSpec>(data);
});
