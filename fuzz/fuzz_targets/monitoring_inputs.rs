//! Fuzz what operators type into monitoring: receiver URLs (a parsed URL
//! prints back to one that parses to the same receiver, and never shows a
//! password) and trend times.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::notify::Target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Target::parse(s) {
        let again = Target::parse(&t.url()).expect("a printed receiver parses");
        assert_eq!(again, t);
    }
    let _ = tern::util::parse_time(s, 1_800_000_000);
    let _ = tern::util::parse_hhmm(s);
});
