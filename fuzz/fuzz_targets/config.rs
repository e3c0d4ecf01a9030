//! Fuzz the configuration file parser and its validation: never panic; a
//! configuration that parses and validates prints back to TOML that parses
//! to the same configuration.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("/fuzz/tern.toml");
    if let Ok(c) = Config::parse(path, text) {
        if c.validate().is_ok() {
            let printed = toml::to_string(&c).expect("a parsed config prints");
            let again = Config::parse(path, &printed).expect("a printed config parses");
            assert_eq!(toml::to_string(&again).unwrap(), printed);
        }
    }
});
