//! E-mail notifications with lettre over SMTP (STARTTLS, implicit TLS or,
//! on a trusted network only, plain), with optional authentication.
//!
//! One message per notification, or (receiver option `digest=daily`) one
//! digest a day listing what was raised and cleared and what is still active.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, Kind, SmtpTls, Target};
use crate::util::rfc3339_ms;

fn transport(
    target: &Target,
    password: Option<&str>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let Target::Smtp {
        user,
        host,
        port,
        tls,
        ca,
        ..
    } = target
    else {
        return Err("not an SMTP receiver".into());
    };
    let params = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(host.clone());
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| format!("TLS set-up: {e}"))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(*port)
        .timeout(Some(Duration::from_secs(20)));
    b = match tls {
        SmtpTls::None => b.tls(Tls::None),
        SmtpTls::Starttls => b.tls(Tls::Required(params()?)),
        SmtpTls::Tls => b.tls(Tls::Wrapper(params()?)),
    };
    if let Some(u) = user {
        b = b.credentials(Credentials::new(
            u.clone(),
            password.unwrap_or_default().to_owned(),
        ));
    }
    Ok(b.build())
}

fn sender(target: &Target) -> String {
    match target {
        Target::Smtp { from: Some(f), .. } => f.clone(),
        _ => format!(
            "tern@{}",
            crate::engine::pki::hostname().unwrap_or_else(|_| "localhost".into())
        ),
    }
}

async fn send(
    target: &Target,
    password: Option<&str>,
    subject: &str,
    body: String,
) -> Result<(), String> {
    let Target::Smtp { to, host, port, .. } = target else {
        return Err("not an SMTP receiver".into());
    };
    let from = sender(target);
    let mut m = Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("sender `{from}`: {e}; set ?from=ADDR"))?,
        )
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for a in to {
        m = m.to(a.parse().map_err(|e| format!("recipient `{a}`: {e}"))?);
    }
    let msg = m
        .body(body)
        .map_err(|e| format!("cannot build the message: {e}"))?;
    transport(target, password)?
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| format!("smtp {host}:{port}: {e}"))
}

/// The text of one notification.
pub fn event_body(ev: &Event) -> String {
    let state = match ev.kind {
        Kind::Raised => "raised",
        Kind::Repeat => "still active",
        Kind::Cleared => "cleared",
        Kind::Test => "test (no condition: checks that notifications reach you)",
    };
    let mut s = format!(
        "Alert {id}: {state}\n\nRule:       {rule}\nSeverity:   {sev}\nHost:       {host}\nPair:       {pair}\nFirst seen: {first}\nSent:       {count} time(s)\nFrom:       {src}\n\n{msg}\n",
        id = ev.alert_id,
        rule = ev.rule,
        sev = ev.severity.as_str(),
        host = if ev.host.is_empty() { "-" } else { &ev.host },
        pair = if ev.pair.is_empty() { "-" } else { &ev.pair },
        first = rfc3339_ms(ev.first_seen_ms),
        count = ev.count,
        src = ev.source,
        msg = ev.message,
    );
    if !ev.action.is_empty() && ev.kind != Kind::Cleared {
        s.push_str(&format!("\nWhat to do: {}\n", ev.action));
    }
    s
}

pub async fn send_event(target: &Target, password: Option<&str>, ev: &Event) -> Result<(), String> {
    send(target, password, &ev.subject(), event_body(ev)).await
}

/// One line of a digest.
#[derive(Debug, Clone)]
pub struct DigestLine {
    pub event: Event,
    pub state: String,
    pub last_seen_ms: u64,
}

/// A day's summary: `lines` are the alerts seen in the period.
pub async fn send_digest(
    target: &Target,
    password: Option<&str>,
    source: &str,
    period: (u64, u64),
    lines: &[DigestLine],
) -> Result<(), String> {
    let active = lines.iter().filter(|l| l.state == "active").count();
    let subject = format!(
        "[tern] daily digest from {source}: {} alert(s), {active} still active",
        lines.len()
    );
    let mut body = format!(
        "Alerts from {} to {} on {source}\n\n",
        rfc3339_ms(period.0),
        rfc3339_ms(period.1)
    );
    if lines.is_empty() {
        body.push_str("No alerts.\n");
    }
    for l in lines {
        body.push_str(&format!(
            "#{:<6} {:<8} {:<9} {:<20} {}{}  first {}  last {}\n        {}\n",
            l.event.alert_id,
            l.state,
            l.event.severity.as_str(),
            l.event.rule,
            if l.event.pair.is_empty() {
                format!("host {}", l.event.host)
            } else {
                format!("pair {}", l.event.pair)
            },
            "",
            rfc3339_ms(l.event.first_seen_ms),
            rfc3339_ms(l.last_seen_ms),
            l.event.message
        ));
    }
    send(target, password, &subject, body).await
}
