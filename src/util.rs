//! Small helpers with no better home.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// RFC 3339 (UTC, seconds) for a Unix-millisecond timestamp.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parse a rate like `20MB/s`, `100MiB/s`, `8Mbit/s`, `0` or `unlimited`
/// (0 = unlimited) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    if t == "0" || t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let scaled = |n: &str, k: u64| {
        n.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(k))
            .ok_or_else(|| format!("bad rate `{s}`"))
    };
    if let Some(n) = t.strip_suffix("MB") {
        return scaled(n, 1_000_000);
    }
    if let Some(n) = t.strip_suffix("Mbit") {
        return scaled(n, 125_000);
    }
    parse_size(t).map_err(|e| format!("bad rate `{s}`: {e}"))
}

/// Parse a daily window `HH:MM-HH:MM` (UTC; may wrap midnight; `24:00`
/// allowed as an end) into minutes after midnight `[from, to)`.
pub fn parse_window(w: &str) -> Result<(u32, u32), String> {
    let (a, b) = w
        .split_once('-')
        .ok_or_else(|| format!("bad window `{w}`: use HH:MM-HH:MM"))?;
    Ok((parse_hhmm(a)?, parse_hhmm(b)?))
}

/// `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address)
/// split into its host (brackets removed) and port.
pub fn host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || {
        format!(
            "`{s}` is not host:port (e.g. ps.example.net:9443, 10.0.0.5:9443, [2001:db8::5]:9443)"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', ' ', '[', ']']) {
        return Err(bad());
    }
    Ok((host, port))
}

/// `HH:MM` (UTC; `24:00` allowed) into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("bad time `{s}`: use HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("bad hour in `{s}`"))?,
        m.parse().map_err(|_| format!("bad minute in `{s}`"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("bad time `{s}`"));
    }
    Ok(h * 60 + m)
}

/// The UTC calendar day (`YYYY-MM-DD`) of a Unix-millisecond time.
pub fn utc_date(ms: u64) -> String {
    rfc3339_ms(ms)[..10].to_owned()
}

/// Midnight UTC (Unix ms) of a `YYYY-MM-DD` day.
pub fn parse_date(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(&format!("{}T00:00:00Z", s.trim()))
        .map_err(|_| format!("bad date `{s}`: use YYYY-MM-DD"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64)
}

/// A time as operators type it, into Unix seconds: `now`, `-1h` (before
/// `now_s`), Unix seconds, `YYYY-MM-DD` or RFC 3339.
pub fn parse_time(s: &str, now_s: i64) -> Result<i64, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_s);
    }
    if let Some(d) = t.strip_prefix('-') {
        let d = humantime::parse_duration(d)
            .map_err(|e| format!("bad relative time `{s}`: {e} (e.g. -1h, -7d)"))?;
        return i64::try_from(d.as_secs())
            .ok()
            .and_then(|d| now_s.checked_sub(d))
            .ok_or_else(|| format!("relative time `{s}` is too far back"));
    }
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    if t.len() == 10 {
        return parse_date(t).map(|ms| (ms / 1000) as i64);
    }
    humantime::parse_rfc3339_weak(t)
        .map(|x| {
            x.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs() as i64
        })
        .map_err(|_| format!("bad time `{s}`: use now, -1h, Unix seconds, YYYY-MM-DD or RFC 3339"))
}

/// Is the UTC wall-clock time `now_ms` inside `window` (from [`parse_window`])?
pub fn in_window((a, b): (u32, u32), now_ms: u64) -> bool {
    let m = ((now_ms / 60_000) % (24 * 60)) as u32;
    if a <= b {
        a <= m && m < b
    } else {
        m >= a || m < b
    }
}

/// Parse a size like `4096`, `64MiB`, `1GiB`, `10G`, `512k` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size `{s}`; use e.g. 4096, 64MiB, 10GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size unit in `{s}`; use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Bytes for people: `1.2 GB`, `340 kB`, `12 B` (decimal units).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// An error and its causes on one line, each cause once.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// An error and its sources, one `: ` apart, repeats left out (a reqwest
/// error hides its cause, "connection refused", in its sources).
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Make a named pipe at `path`: opening it blocks until the other end is
/// opened, which lets a test hold a role inside a file read.
#[cfg(test)]
pub fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Open `path` (a FIFO a role is blocked reading) and write `bytes` into it.
#[cfg(test)]
pub async fn feed_fifo(path: std::path::PathBuf, bytes: &'static [u8]) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .write_all(bytes)
    })
    .await
    .unwrap()
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_takes_names_and_both_ip_families() {
        assert_eq!(
            host_port("ps.example.net:9443"),
            Ok(("ps.example.net", 9443))
        );
        assert_eq!(host_port("10.0.0.5:9443"), Ok(("10.0.0.5", 9443)));
        assert_eq!(host_port("[2001:db8::5]:9443"), Ok(("2001:db8::5", 9443)));
        for bad in [
            "",
            "ps",
            ":9443",
            "ps:",
            "ps:0",
            "ps:70000",
            "2001:db8::5:9443",
            "[::1:9443",
            "a b:1",
            "https://ps:9443",
        ] {
            let e = host_port(bad).unwrap_err();
            assert!(e.contains("is not host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn windows_wrap_midnight_and_reject_nonsense() {
        let at = |h: u64, m: u64| (h * 60 + m) * 60_000;
        let win = |w: &str, t| in_window(parse_window(w).unwrap(), t);
        assert!(win("00:00-24:00", at(13, 0)));
        assert!(win("22:00-06:00", at(23, 0)));
        assert!(win("22:00-06:00", at(5, 59)));
        assert!(!win("22:00-06:00", at(12, 0)));
        assert!(win("08:00-18:00", at(8, 0)));
        assert!(!win("08:00-18:00", at(18, 0)));
        for bad in [
            "",
            "8-18",
            "08:00",
            "25:00-01:00",
            "08:60-09:00",
            "24:01-01:00",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20MB/s"), Ok(20_000_000));
        assert_eq!(parse_rate("8Mbit/s"), Ok(1_000_000));
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("unlimited"), Ok(0));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        assert_eq!(super::parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(super::parse_size("1g").unwrap(), 1 << 30);
        assert!(super::parse_size("12XB").is_err());
        assert!(super::parse_size("").is_err());
    }
}
