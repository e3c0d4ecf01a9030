//! A whole site (cx, ps, mt, agent) in one `tern serve` process, and the
//! checks tests make of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// All four roles in one `tern up`, with fast reports and a volume `vol`.
pub struct Site {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub up: Daemon,
    pub src: PathBuf,
}

impl Site {
    pub fn start_cfg(dir: &Path, cfg: &Path) -> Site {
        let data = dir.join("tern-data");
        let src = dir.join("src.img");
        let up = Daemon::spawn(
            dir,
            "up",
            &[
                "serve",
                "--role",
                "cx,ps,mt,agent",
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        wait_file(&data.join("cx.url"), 30, &up);
        Site {
            dir: dir.to_owned(),
            data,
            up,
            src,
        }
    }

    pub fn tern(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--data", self.data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(&self.dir, &a);
        assert!(
            o.status.success(),
            "tern {args:?} failed: {}\nlog:\n{}",
            stderr(&o),
            tail(&self.up.log())
        );
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn try_tern(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["--data", self.data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(&self.dir, &a);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null))
    }

    /// Volume `name` as the agent reports it, once `ready` holds (bounded).
    pub fn volume(
        &self,
        name: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(30, &format!("the agent to report volume {name}"), || {
            let v = self.tern(&["agent", "volume", "list"]);
            v.as_array()?
                .iter()
                .find(|x| x["name"] == name && ready(x))
                .cloned()
        })
    }

    pub fn nbd_url(&self) -> String {
        let v = self.volume("vol", |x| {
            x["export"]
                .as_str()
                .is_some_and(|e| e.starts_with("nbd://"))
        });
        v["export"].as_str().unwrap().to_owned()
    }

    /// `tern pair create NAME` from `aio:vol` through `aio` to `aio`, plus `extra`.
    pub fn create_pair(&self, name: &str, extra: &[&str]) -> serde_json::Value {
        let mut a = vec![
            "pair", "create", name, "--source", "aio:vol", "--ps", "aio", "--target", "aio",
        ];
        a.extend_from_slice(extra);
        self.tern(&a)
    }

    pub fn pair(&self, name: &str) -> serde_json::Value {
        self.tern(&["pair", "show", name])
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `qemu-img compare` of two raw images: Err with what it printed if they differ.
pub fn qemu_img_compare(a: &Path, b: &Path) -> Result<(), String> {
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img (apt install qemu-utils)");
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

pub fn qemu_io(url: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", url]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let o = c.output().expect("qemu-io (apt install qemu-utils)");
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed"),
        "qemu-io {cmds:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The pair has applied everything the agent captured and sits in
/// differential sync with RPO 0.
/// Only reports taken after the call count: every write acknowledged
/// before it is then in `agent.last_seq`.
pub fn wait_caught_up(site: &Site, pair: &str, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let since = unix_ms();
    loop {
        let v = site.pair(pair);
        if is_caught_up(&v, since) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "pair {pair} did not catch up: {}\nlog:\n{}",
            serde_json::to_string_pretty(&v).unwrap(),
            tail(&site.up.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
