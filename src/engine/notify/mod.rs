//! Notifications to the NOC: SNMP traps and informs ([`snmp`]) and e-mail
//! ([`mail`]), to receivers named by URL.
//!
//! Receiver URLs (what `tern alert receiver add` takes):
//! - `snmp://COMMUNITY@HOST:PORT` — SNMPv2c trap; `?inform=1` for an
//!   acknowledged inform (retried). Port defaults to 162.
//! - `smtp://[USER@]HOST:PORT?to=ADDR[,ADDR][&from=ADDR][&tls=none|starttls|tls][&ca=PEM_FILE][&digest=daily]`
//!   — one message per notification, or with `digest=daily` one summary a
//!   day. The password, if any, is given apart (never in the URL) and is
//!   not shown again. Port defaults to 587 (starttls), 465 (tls), 25 (none).
//!
//! Invariant: a receiver's secret never appears in its listed URL, in logs
//! or in error messages.

pub mod mail;
pub mod snmp;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How bad an alert is (X.733 perceived severity, without "indeterminate").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
    /// The value of `ternAlertSeverity` in TERN-MIB.
    pub fn mib_value(self) -> i32 {
        match self {
            Severity::Critical => 1,
            Severity::Major => 2,
            Severity::Minor => 3,
            Severity::Warning => 4,
            Severity::Info => 5,
        }
    }
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The condition began.
    Raised,
    /// Still active after the repeat interval.
    Repeat,
    /// The condition ended.
    Cleared,
    /// `tern alert test`.
    Test,
}

/// What a notification says: one alert at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: Kind,
    pub alert_id: u64,
    pub rule: String,
    pub severity: Severity,
    pub host: String,
    pub pair: String,
    pub message: String,
    pub action: String,
    pub first_seen_ms: u64,
    /// Notifications sent for this alert so far, this one included.
    pub count: u32,
    /// The CX that sent it (its name).
    pub source: String,
}

impl Event {
    pub fn subject(&self) -> String {
        let what = match self.kind {
            Kind::Raised => "ALERT",
            Kind::Repeat => "STILL ACTIVE",
            Kind::Cleared => "CLEARED",
            Kind::Test => "TEST",
        };
        let scope = if !self.pair.is_empty() {
            format!("pair {}", self.pair)
        } else if !self.host.is_empty() {
            format!("host {}", self.host)
        } else {
            "tern".into()
        };
        format!(
            "[tern {}] {what} {} {scope}: {}",
            self.severity.as_str(),
            self.rule,
            self.message
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    Snmp {
        community: String,
        host: String,
        port: u16,
        inform: bool,
    },
    Smtp {
        user: Option<String>,
        host: String,
        port: u16,
        to: Vec<String>,
        from: Option<String>,
        tls: SmtpTls,
        ca: Option<PathBuf>,
        digest: bool,
    },
}

impl Target {
    /// Parse a receiver URL (see the module doc).
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("bad receiver `{url}`: {why}");
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected snmp://COMMUNITY@HOST:PORT or smtp://[USER@]HOST:PORT?to=ADDR")
        })?;
        let (auth_host, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (user, hostport) = match auth_host.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, auth_host),
        };
        if let Some(u) = user
            && u.contains(':')
        {
            // Not echoed: the URL holds a secret.
            return Err(
                "bad receiver: do not put a password in the URL; give it with --password-file"
                    .into(),
            );
        }
        let hostport = hostport.trim_end_matches('/');
        let port_of = |p: &str| p.parse::<u16>().map_err(|_| bad("port is not a number"));
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, rest) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
            match rest.strip_prefix(':') {
                Some(p) => (h.to_owned(), Some(port_of(p)?)),
                None if rest.is_empty() => (h.to_owned(), None),
                None => return Err(bad("unexpected text after the IPv6 address")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(port_of(p)?)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            params.push((k.to_owned(), v.to_owned()));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| pct_decode(v))
        };
        let raw = |k: &str| params.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        let known = |allowed: &[&str]| -> Result<(), String> {
            for (k, _) in &params {
                if !allowed.contains(&k.as_str()) {
                    return Err(bad(&format!(
                        "unknown parameter `{k}` (known: {})",
                        allowed.join(", ")
                    )));
                }
            }
            Ok(())
        };
        match scheme {
            "snmp" => {
                known(&["inform"])?;
                let community = user
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| bad("no community: snmp://COMMUNITY@HOST:PORT"))?;
                Ok(Target::Snmp {
                    community: pct_decode(community),
                    host,
                    port: port.unwrap_or(162),
                    inform: matches!(get("inform").as_deref(), Some("1" | "true" | "yes")),
                })
            }
            "smtp" => {
                known(&["to", "from", "tls", "ca", "digest"])?;
                let to: Vec<String> = raw("to")
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| pct_decode(s).trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if to.is_empty() {
                    return Err(bad("no recipient: add ?to=ADDR"));
                }
                for a in &to {
                    a.parse::<lettre::Address>()
                        .map_err(|e| bad(&format!("recipient `{a}`: {e}")))?;
                }
                let from = get("from");
                if let Some(f) = &from {
                    f.parse::<lettre::Address>()
                        .map_err(|e| bad(&format!("sender `{f}`: {e}")))?;
                }
                let tls = match get("tls").as_deref() {
                    None | Some("starttls") => SmtpTls::Starttls,
                    Some("tls") => SmtpTls::Tls,
                    Some("none") => SmtpTls::None,
                    Some(x) => return Err(bad(&format!("tls=`{x}`: use none, starttls or tls"))),
                };
                let digest = match get("digest").as_deref() {
                    None => false,
                    Some("daily") => true,
                    Some(x) => return Err(bad(&format!("digest=`{x}`: use daily"))),
                };
                Ok(Target::Smtp {
                    user: user.filter(|u| !u.is_empty()).map(pct_decode),
                    port: port.unwrap_or(match tls {
                        SmtpTls::Starttls => 587,
                        SmtpTls::Tls => 465,
                        SmtpTls::None => 25,
                    }),
                    host,
                    to,
                    from,
                    tls,
                    ca: get("ca").map(PathBuf::from),
                    digest,
                })
            }
            other => Err(bad(&format!(
                "unknown scheme `{other}`: use snmp:// or smtp://"
            ))),
        }
    }

    /// The URL again, without any secret.
    pub fn url(&self) -> String {
        match self {
            Target::Snmp {
                community,
                host,
                port,
                inform,
            } => format!(
                "snmp://{}@{}:{port}{}",
                pct(community),
                bracket(host),
                if *inform { "?inform=1" } else { "" }
            ),
            Target::Smtp {
                user,
                host,
                port,
                to,
                from,
                tls,
                ca,
                digest,
            } => {
                let to: Vec<String> = to.iter().map(|a| pct(a).replace(',', "%2C")).collect();
                let mut q = vec![format!("to={}", to.join(","))];
                if let Some(f) = from {
                    q.push(format!("from={}", pct(f)));
                }
                q.push(format!(
                    "tls={}",
                    match tls {
                        SmtpTls::None => "none",
                        SmtpTls::Starttls => "starttls",
                        SmtpTls::Tls => "tls",
                    }
                ));
                if let Some(c) = ca {
                    q.push(format!("ca={}", pct(&c.to_string_lossy())));
                }
                if *digest {
                    q.push("digest=daily".into());
                }
                format!(
                    "smtp://{}{}:{port}?{}",
                    user.as_ref()
                        .map(|u| format!("{}@", pct(u)))
                        .unwrap_or_default(),
                    bracket(host),
                    q.join("&")
                )
            }
        }
    }
}

/// Percent-encode what would change the meaning of a URL part.
fn pct(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "-._~!$'()*+;=:/,@".contains(c) {
            o.push(c);
        } else {
            for b in c.to_string().bytes() {
                o.push_str(&format!("%{b:02X}"));
            }
        }
    }
    o
}

fn bracket(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_owned()
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Deliver one event to one receiver (`password`: the SMTP password, if any).
pub async fn deliver(
    target: &Target,
    password: Option<&str>,
    ev: &Event,
    uptime_cs: u32,
) -> Result<(), String> {
    match target {
        Target::Snmp { .. } => snmp::send(target, ev, uptime_cs).await,
        Target::Smtp { .. } => mail::send_event(target, password, ev).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_urls_parse_and_print_without_secrets() {
        let t = Target::parse("snmp://public@127.0.0.1:1162").unwrap();
        assert_eq!(
            t,
            Target::Snmp {
                community: "public".into(),
                host: "127.0.0.1".into(),
                port: 1162,
                inform: false
            }
        );
        assert_eq!(t.url(), "snmp://public@127.0.0.1:1162");
        let t = Target::parse("snmp://noc@[::1]?inform=1").unwrap();
        assert_eq!(t.url(), "snmp://noc@[::1]:162?inform=1");
        let t = Target::parse(
            "smtp://ops@mail.example.net:2525?to=noc@example.net,dr@example.net&tls=starttls&digest=daily",
        )
        .unwrap();
        match &t {
            Target::Smtp {
                user, to, digest, ..
            } => {
                assert_eq!(user.as_deref(), Some("ops"));
                assert_eq!(to.len(), 2);
                assert!(digest);
            }
            _ => panic!(),
        }
        assert_eq!(Target::parse(&t.url()).unwrap(), t);
        let t = Target::parse("smtp://mail:25?to=a@b.c&tls=none").unwrap();
        assert_eq!(t.url(), "smtp://mail:25?to=a@b.c&tls=none");
    }

    #[test]
    fn bad_receiver_urls_say_what_is_wrong() {
        for (u, want) in [
            ("snmp://127.0.0.1", "no community"),
            ("smtp://mail:25", "no recipient"),
            ("smtp://ops:secret@mail:25?to=a@b.c", "password"),
            ("smtp://mail?to=not-an-address", "recipient"),
            ("ftp://x", "unknown scheme"),
            ("smtp://mail?to=a@b.c&tsl=none", "unknown parameter `tsl`"),
            ("snmp://p@h:99999", "port"),
        ] {
            let e = Target::parse(u).unwrap_err();
            assert!(e.contains(want), "{u}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
