//! A CX, and an agent, a PS and an MT each in its own `tern serve`
//! process on loopback: what fault tests kill and benchmarks measure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

pub struct Node {
    pub name: String,
    pub cfg: PathBuf,
    pub daemon: Option<Daemon>,
    pub starts: u32,
    /// Runs on the other "host" ([`Cluster::netns`]).
    pub remote: bool,
}

/// Nodes are indexed 0 = agent, 1 = PS, 2 = MT.
pub struct Cluster {
    pub dir: PathBuf,
    pub cx_data: PathBuf,
    cx_cfg: PathBuf,
    /// None while [`Cluster::cx_down`] has it stopped.
    cx: Option<Daemon>,
    cx_starts: u32,
    pub nodes: Vec<Node>,
    pub src: PathBuf,
    nbd_port: u16,
    /// With [`Cluster::start_two_hosts`]: the PS's and MT's host. Declared
    /// last, so it goes after every daemon is dropped.
    pub netns: Option<Netns>,
}

impl Cluster {
    /// A CX, and an agent, a PS and an MT in their own processes; the
    /// agent protects one volume `vol` of `vol_size` bytes over
    /// `dir/src.img`, exported by NBD; `agent` holds the `[agent]` table's
    /// other keys (e.g. `buffer_cap = "4MiB"`), `common` keys for every
    /// node's config (e.g. `[log]` settings).
    pub fn start(dir: &Path, vol_size: u64, agent: &str, common: &str) -> Cluster {
        Cluster::start_placed(dir, vol_size, agent, common, None, "")
    }

    /// [`Cluster::start`] with the PS's `node.data_advertise` at `addr`
    /// (where a [`tlsproxy::TlsProxy`] listens), so agents dial that.
    pub fn start_ps_advertising(
        dir: &Path,
        vol_size: u64,
        agent: &str,
        addr: std::net::SocketAddr,
    ) -> Cluster {
        let ps_node = format!("data_advertise = \"{addr}\"\n");
        Cluster::start_placed(dir, vol_size, agent, "", None, &ps_node)
    }

    /// [`Cluster::start`] with the PS and the MT on a second host (a
    /// network namespace, [`Netns`]): their data ports bind the wildcard
    /// address and every hop between hosts crosses a real link.
    pub fn start_two_hosts(dir: &Path, vol_size: u64, agent: &str, common: &str) -> Cluster {
        Cluster::start_placed(dir, vol_size, agent, common, Some(Netns::new()), "")
    }

    fn start_placed(
        dir: &Path,
        vol_size: u64,
        agent: &str,
        common: &str,
        netns: Option<Netns>,
        ps_node: &str,
    ) -> Cluster {
        let cx_data = dir.join("cx-data");
        let cx_cfg = dir.join("cx.toml");
        write(
            &cx_cfg,
            &format!(
                "data_dir = \"{}\"\nroles = [\"cx\"]\n[node]\nname = \"cx\"\nheartbeat_interval = \"300ms\"\nreport_interval = \"200ms\"\n[cx]\napi_listen = \"{}:{}\"\nheartbeat_overdue = \"2s\"\n{common}",
                cx_data.display(),
                if netns.is_some() {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                },
                // A fixed port: the nodes find a restarted CX where it was.
                free_port(),
            ),
        );
        let cx = Daemon::spawn(dir, "cx", &["serve", "--config", cx_cfg.to_str().unwrap()]);
        let url = wait_file(&cx_data.join("cx.url"), 30, &cx);
        let src = dir.join("src.img");
        let nbd_port = free_port();
        let mut nodes = Vec::new();
        for role in ["agent", "ps", "mt"] {
            let data = dir.join(format!("{role}-data"));
            let cfg = dir.join(format!("{role}.toml"));
            let ns = netns.as_ref().filter(|_| role != "agent");
            // From the other host the CX is at this host's link address.
            let (cx_url, listen) = match ns {
                Some(ns) => (url.replace("127.0.0.1", &ns.host_ip), "0.0.0.0"),
                None => (url.clone(), "127.0.0.1"),
            };
            let mut text = format!(
                "data_dir = \"{}\"\nroles = [\"{role}\"]\n[node]\nname = \"{role}\"\ncx_url = \"{cx_url}\"\ndata_listen = \"{listen}:{}\"\nheartbeat_interval = \"300ms\"\nreport_interval = \"200ms\"\n{}{common}",
                data.display(),
                free_port(),
                if role == "ps" { ps_node } else { "" },
            );
            if role == "agent" {
                text.push_str(&format!(
                    "[agent]\nauto_resync_delay = \"0s\"\n{agent}\n[[agent.volumes]]\nname = \"vol\"\npath = \"{}\"\nsize = {vol_size}\nlisten = \"127.0.0.1:{nbd_port}\"\n",
                    src.display()
                ));
            }
            write(&cfg, &text);
            enroll_in(ns, dir, &cx_data, &cx_url, &cfg);
            nodes.push(Node {
                name: role.to_owned(),
                cfg,
                daemon: None,
                starts: 0,
                remote: ns.is_some(),
            });
        }
        let mut c = Cluster {
            dir: dir.to_owned(),
            cx_data,
            cx_cfg,
            cx: Some(cx),
            cx_starts: 1,
            nodes,
            src,
            nbd_port,
            netns,
        };
        for i in 0..3 {
            c.up(i);
        }
        c
    }

    pub fn up(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.starts += 1;
        n.daemon = Some(Daemon::spawn_in(
            self.netns.as_ref().filter(|_| n.remote),
            &self.dir,
            &format!("{}-{}", n.name, n.starts),
            &["serve", "--config", n.cfg.to_str().unwrap()],
        ));
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].daemon.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].daemon.take() {
            d.terminate();
        }
    }

    /// Stop the CX (`kill9`: SIGKILL, else SIGTERM).
    pub fn cx_down(&mut self, kill9: bool) {
        if let Some(mut d) = self.cx.take() {
            if kill9 {
                let _ = d.child.kill();
                let _ = d.child.wait();
            } else {
                d.terminate();
            }
        }
    }

    pub fn cx_up(&mut self) {
        if self.cx.is_some() {
            return;
        }
        self.cx_starts += 1;
        let _ = std::fs::remove_file(self.cx_data.join("cx.url"));
        let d = Daemon::spawn(
            &self.dir,
            &format!("cx-{}", self.cx_starts),
            &["serve", "--config", self.cx_cfg.to_str().unwrap()],
        );
        wait_file(&self.cx_data.join("cx.url"), 30, &d);
        self.cx = Some(d);
    }

    pub fn cx_is_up(&self) -> bool {
        self.cx.is_some()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].daemon.as_ref().unwrap().child.id()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in files_with_ext(&self.dir, "log") {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            s.push_str(&format!("==> {} <==\n", p.display()));
            s.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
            s.push('\n');
        }
        s
    }

    pub fn tern(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--data", self.cx_data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(&self.dir, &a);
        assert!(
            o.status.success(),
            "tern {args:?}: {}\n{}",
            stderr(&o),
            self.logs()
        );
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    }

    /// A `tern --json` client command against the CX; None (and its error
    /// printed) if it fails, e.g. while a node is restarting.
    pub fn try_tern(&self, args: &[&str]) -> Option<serde_json::Value> {
        self.tern_json(args, true)
    }

    /// `pair show`, quietly: it is polled while nodes are down.
    pub fn try_pair(&self, name: &str) -> Option<serde_json::Value> {
        self.tern_json(&["pair", "show", name], false)
    }

    fn tern_json(&self, args: &[&str], say_why: bool) -> Option<serde_json::Value> {
        let mut a = vec!["--data", self.cx_data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(&self.dir, &a);
        if !o.status.success() {
            if say_why {
                eprintln!("tern {args:?}: {}", stderr(&o));
            }
            return None;
        }
        Some(serde_json::from_slice(&o.stdout).unwrap())
    }

    /// BLAKE3 of the volume as its NBD export serves it now.
    pub fn export_hash(&self) -> String {
        let out = self.dir.join("export-now.img");
        let o = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &self.url()])
            .arg(&out)
            .output()
            .expect("qemu-img");
        assert!(o.status.success(), "qemu-img convert: {}", stderr(&o));
        let h = blake3::hash(&std::fs::read(&out).unwrap())
            .to_hex()
            .to_string();
        let _ = std::fs::remove_file(&out);
        h
    }

    pub fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/vol", self.nbd_port)
    }

    /// [`Cluster::start`], then pair `p` created and caught up within
    /// `secs` seconds.
    pub fn with_pair(dir: &Path, vol_size: u64, agent: &str, common: &str, secs: u64) -> Cluster {
        let c = Cluster::start(dir, vol_size, agent, common);
        c.create_pair();
        c.wait_caught_up(secs);
        c
    }

    pub fn create_pair(&self) {
        self.create_pair_with(&[]);
    }

    /// Pair `p` with more `pair create` flags (e.g. `--on-full stop`).
    pub fn create_pair_with(&self, extra: &[&str]) {
        wait_for(30, "the agent's volume report", || {
            let v = self.tern(&["agent", "volume", "list"]);
            v.as_array()?
                .iter()
                .any(|x| x["name"] == "vol" && x["export"].is_string())
                .then_some(())
        });
        let mut args = vec![
            "pair",
            "create",
            "p",
            "--source",
            "agent:vol",
            "--ps",
            "ps",
            "--target",
            "mt",
        ];
        args.extend_from_slice(extra);
        self.tern(&args);
    }

    /// Pair `p` as `pair show` gives it, if it is caught up as of `since`
    /// ([`is_caught_up`]).
    pub fn caught_up(&self, since: u64) -> Option<serde_json::Value> {
        self.try_pair("p").filter(|v| is_caught_up(v, since))
    }

    pub fn wait_caught_up(&self, secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let since = unix_ms();
        loop {
            if let Some(v) = self.try_pair("p") {
                if is_caught_up(&v, since) {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "pair did not catch up: {}\n{}",
                    serde_json::to_string_pretty(&v).unwrap(),
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pair did not catch up\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The replica's latest image equals the source, byte for byte.
    pub fn assert_identical(&self) {
        let out = self.dir.join("latest.img");
        self.tern(&[
            "pair",
            "image",
            "--wait",
            "p",
            "--to",
            out.to_str().unwrap(),
        ]);
        if let Err(e) = qemu_img_compare(&self.src, &out) {
            panic!("replica differs from the source: {e}\n{}", self.logs());
        }
    }
}
