//! SNMPv2c traps and informs over `csnmp` (the `snmp` crate named by the
//! design card only gets and sets; it cannot send notifications).
//!
//! The objects are those of TERN-MIB (`docs/TERN-MIB.txt`), under the
//! enterprise number 32473, which RFC 5612 reserves for documentation: a
//! placeholder until Tern has a Private Enterprise Number of its own. The
//! varbind order is fixed (sysUpTime.0, snmpTrapOID.0, then the objects of
//! the notification in MIB order); a test pins it against snmptrapd.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use csnmp::{ObjectIdentifier, ObjectValue, Snmp2cClient};

use super::{Event, Kind, Target};

/// `enterprises.32473`: the RFC 5612 documentation number (placeholder).
pub const ENTERPRISE: &[u32] = &[1, 3, 6, 1, 4, 1, 32473];
const SYS_UPTIME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
const SNMP_TRAP_OID: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];

fn oid(parts: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::try_from(parts).expect("valid OID")
}

fn sub(tail: &[u32]) -> ObjectIdentifier {
    let v: Vec<u32> = ENTERPRISE.iter().chain(tail).copied().collect();
    oid(&v)
}

/// `ternNotifications.N`: raised (repeat too) 1, cleared 2, test 3.
pub fn notification_oid(kind: Kind) -> Vec<u32> {
    let n = match kind {
        Kind::Raised | Kind::Repeat => 1,
        Kind::Cleared => 2,
        Kind::Test => 3,
    };
    ENTERPRISE.iter().copied().chain([0, n]).collect()
}

/// The varbinds of a notification, in order.
pub fn varbinds(ev: &Event, uptime_cs: u32) -> Vec<(ObjectIdentifier, ObjectValue)> {
    // DisplayString holds at most 255 octets: cut on a character boundary.
    let s = |x: &str| {
        let mut end = x.len().min(255);
        while !x.is_char_boundary(end) {
            end -= 1;
        }
        ObjectValue::String(x.as_bytes()[..end].to_vec())
    };
    vec![
        (oid(SYS_UPTIME), ObjectValue::TimeTicks(uptime_cs)),
        (
            oid(SNMP_TRAP_OID),
            ObjectValue::ObjectId(oid(&notification_oid(ev.kind))),
        ),
        (
            sub(&[1, 1, 0]),
            ObjectValue::Unsigned32(ev.alert_id.min(u32::MAX as u64) as u32),
        ),
        (
            sub(&[1, 2, 0]),
            ObjectValue::Integer(ev.severity.mib_value()),
        ),
        (sub(&[1, 3, 0]), s(&ev.rule)),
        (sub(&[1, 4, 0]), s(&ev.host)),
        (sub(&[1, 5, 0]), s(&ev.pair)),
        (sub(&[1, 6, 0]), s(&ev.message)),
        (sub(&[1, 7, 0]), s(&ev.action)),
        (
            sub(&[1, 8, 0]),
            s(&crate::util::rfc3339_ms(ev.first_seen_ms)),
        ),
        (sub(&[1, 9, 0]), ObjectValue::Unsigned32(ev.count)),
        (sub(&[1, 10, 0]), s(&ev.source)),
    ]
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// Send one trap (fire and forget) or inform (acknowledged, 3 tries).
pub async fn send(target: &Target, ev: &Event, uptime_cs: u32) -> Result<(), String> {
    let Target::Snmp {
        community,
        host,
        port,
        inform,
    } = target
    else {
        return Err("not an SNMP receiver".into());
    };
    let addr = resolve(host, *port)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let client = Snmp2cClient::new(
        addr,
        community.as_bytes().to_vec(),
        Some(bind),
        Some(Duration::from_secs(2)),
        2,
    )
    .await
    .map_err(|e| format!("snmp {host}:{port}: {e}"))?;
    let vb = varbinds(ev, uptime_cs);
    if *inform {
        client
            .inform(vb.into_iter())
            .await
            .map(|_| ())
            .map_err(|e| format!("snmp inform to {host}:{port} not acknowledged: {e}"))
    } else {
        client
            .trap(vb.into_iter())
            .await
            .map_err(|e| format!("snmp trap to {host}:{port}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::notify::Severity;

    /// The varbinds sent are the objects TERN-MIB declares, in its order,
    /// under the numbers it gives them (docs/FORMATS.md has the table).
    #[test]
    fn varbinds_follow_the_shipped_mib() {
        let mib = include_str!("../../../docs/TERN-MIB.txt");
        let number_of = |name: &str| -> u32 {
            let decl = mib
                .find(&format!("\n{name} OBJECT-TYPE"))
                .unwrap_or_else(|| panic!("{name} not in the MIB"));
            let rest = &mib[decl..];
            let a = rest.find("::= { ternObjects ").expect("assignment") + 18;
            rest[a..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let ev = Event {
            kind: Kind::Cleared,
            alert_id: 7,
            rule: "rpo".into(),
            severity: Severity::Major,
            host: "h".into(),
            pair: "p".into(),
            message: "m".repeat(300),
            action: "a".into(),
            first_seen_ms: 0,
            count: 2,
            source: "cx".into(),
        };
        let vb = varbinds(&ev, 100);
        assert_eq!(vb[0].0, oid(SYS_UPTIME));
        assert_eq!(vb[1].0, oid(SNMP_TRAP_OID));
        assert_eq!(
            vb[1].1,
            ObjectValue::ObjectId(oid(&[1, 3, 6, 1, 4, 1, 32473, 0, 2]))
        );
        let names = [
            "ternAlertId",
            "ternAlertSeverity",
            "ternAlertRule",
            "ternAlertHost",
            "ternAlertPair",
            "ternAlertMessage",
            "ternAlertAction",
            "ternAlertFirstSeen",
            "ternAlertCount",
            "ternAlertSource",
        ];
        assert_eq!(vb.len(), 2 + names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(vb[2 + i].0, sub(&[1, number_of(n), 0]), "{n}");
        }
        assert!(mib.contains("::= { enterprises 32473 }"));
        assert!(mib.contains("ternAlertCleared NOTIFICATION-TYPE"));
        assert_eq!(vb[3].1, ObjectValue::Integer(2));
        // DisplayString: at most 255 octets.
        assert_eq!(vb[7].1, ObjectValue::String(vec![b'm'; 255]));
    }
}
