//! A second "host" on this machine: a network namespace joined to this one
//! by a veth pair, for roles that must be reached across hosts (their own
//! addresses, not loopback). Needs root (CAP_NET_ADMIN), as CI runs.

use std::process::Command;

pub struct Netns {
    pub name: String,
    host_if: String,
    /// This side's address on the link (the CX is reached here).
    pub host_ip: String,
    /// The namespace's address on the link.
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (apt install iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    /// A namespace with loopback up and `10.213.N.2/30` on a veth whose
    /// other end here is `10.213.N.1` (N from this process id).
    pub fn new() -> Netns {
        let id = std::process::id();
        let n = id % 250;
        let name = format!("tern-test-{id}");
        let host_if = format!("tt{id}h");
        let ns_if = format!("tt{id}n");
        // Left over from an earlier run of the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = Netns {
            host_ip: format!("10.213.{n}.1"),
            ns_ip: format!("10.213.{n}.2"),
            name,
            host_if,
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns.name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// `program args` run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
