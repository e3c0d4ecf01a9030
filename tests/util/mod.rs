//! Run the built `tern` binary in a fresh directory per test.
#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod site;
pub mod tlsproxy;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use netns::Netns;
#[allow(unused_imports)]
pub use site::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `tern` binary under test: this build's, or `TERN_BIN` (e.g. the
/// static appliance binary from `scripts/build-static`, to measure it).
pub fn bin() -> PathBuf {
    std::env::var_os("TERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tern")))
}

/// The `tern` binary as a command, inside `ns` if given.
fn tern_command(ns: Option<&Netns>) -> Command {
    match ns {
        Some(ns) => ns.command(&bin()),
        None => Command::new(bin()),
    }
}

/// `tern ARGS` to completion, with a private login file.
pub fn tern(dir: &Path, args: &[&str]) -> Output {
    tern_in(None, dir, args)
}

/// [`tern`] inside `ns` if given.
pub fn tern_in(ns: Option<&Netns>, dir: &Path, args: &[&str]) -> Output {
    tern_command(ns)
        .args(args)
        .current_dir(dir)
        .env("TERN_LOGIN_FILE", dir.join("login.json"))
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_CX")
        .output()
        .expect("run tern")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A long-running `tern` process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Daemon {
        Daemon::spawn_in(None, dir, name, args)
    }

    /// [`Daemon::spawn`] inside `ns` if given (`ip netns exec` execs the
    /// program, so the child is `tern` itself and signals reach it).
    pub fn spawn_in(ns: Option<&Netns>, dir: &Path, name: &str, args: &[&str]) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = tern_command(ns)
            .args(args)
            .current_dir(dir)
            .env("TERN_LOGIN_FILE", dir.join("login.json"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn tern");
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = t + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "tern exited with {st}; log:\n{}", self.log());
                return t.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "tern ignored SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `f` returns Some, or panic with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a file a daemon writes once it is listening; returns its trimmed content.
pub fn wait_file(path: &Path, secs: u64, d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_owned();
        }
        if Instant::now() > deadline {
            panic!("{} never appeared; log:\n{}", path.display(), d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Resident set of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An all-in-one config at `dir/FILE` (data in `dir/tern-data`, loopback
/// ports picked by the kernel, reports every 200 ms) followed by `sections`:
/// TOML tables such as `[agent]`, `[ps]` and [`volume`] entries.
pub fn aio_config(dir: &Path, file: &str, sections: &str) -> PathBuf {
    config_file(
        dir,
        file,
        "tern-data",
        &format!(
            r#"[node]
name = "aio"
data_listen = "127.0.0.1:0"
heartbeat_interval = "1s"
report_interval = "200ms"
[cx]
api_listen = "127.0.0.1:0"
{sections}"#
        ),
    )
}

/// `dir/file`: a config whose data directory is `dir/data`, then `body`.
pub fn config_file(dir: &Path, file: &str, data: &str, body: &str) -> PathBuf {
    let p = dir.join(file);
    write(
        &p,
        &format!("data_dir = \"{}\"\n{body}", dir.join(data).display()),
    );
    p
}

/// One `[[agent.volumes]]` entry named `vol` over `dir/src.img`; `capture`
/// is `nbd` (served on a kernel-picked loopback port), `fuse` or `scan`.
pub fn volume(dir: &Path, size: u64, capture: &str) -> String {
    volume_named(dir, "vol", "src.img", size, capture)
}

/// The same for volume `name` over `dir/file`.
pub fn volume_named(dir: &Path, name: &str, file: &str, size: u64, capture: &str) -> String {
    let how = match capture {
        "nbd" => "listen = \"127.0.0.1:0\"".to_owned(),
        c => format!("capture = \"{c}\""),
    };
    format!(
        "[[agent.volumes]]\nname = \"{name}\"\npath = \"{}\"\nsize = {size}\n{how}\n",
        dir.join(file).display()
    )
}

/// `pair show` output `v` says the pair has applied everything the agent
/// captured and sits in differential sync with RPO 0, from reports taken at
/// or after `since` (Unix ms): every write acknowledged before `since` is
/// then in `agent.last_seq`.
pub fn is_caught_up(v: &serde_json::Value, since: u64) -> bool {
    let agent_last = v["agent"]["last_seq"].as_u64();
    v["status_as_of_ms"].as_u64().is_some_and(|t| t >= since)
        && v["state"] == "differential-sync"
        && v["transit_agent_bytes"] == 0
        && v["transit_ps_bytes"] == 0
        && agent_last.is_some()
        && agent_last == v["mt"]["last_seq"].as_u64()
        && v["latest_point"]["seq"].as_u64() == agent_last
}

/// The events `role` ("agent" or "ps_status") keeps for the pair in
/// `pair show` output `v`: each as its `event` name, with its `mode` for
/// mode changes (`mode:resync-step2`).
pub fn pair_events(v: &serde_json::Value, role: &str) -> Vec<String> {
    v[role]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let name = e["event"].as_str().unwrap_or("?").to_owned();
                    match e["mode"].as_str() {
                        Some(m) => format!("{name}:{m}"),
                        None => name,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The files in `dir` named `*.EXT`, in name order.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Now, in Unix milliseconds (the clock node reports are stamped with).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Enroll the node configured in `cfg` with the CX whose data directory is
/// `cx_data` (a fresh token from it), as `tern enroll` on that node would.
pub fn enroll(dir: &Path, cx_data: &Path, url: &str, cfg: &Path) {
    enroll_in(None, dir, cx_data, url, cfg)
}

/// [`enroll`], the node's side run inside `ns` if given (its certificate
/// then names the namespace's addresses).
pub fn enroll_in(ns: Option<&Netns>, dir: &Path, cx_data: &Path, url: &str, cfg: &Path) {
    let o = tern(
        dir,
        &[
            "--data",
            cx_data.to_str().unwrap(),
            "token",
            "create",
            "--json",
        ],
    );
    assert!(o.status.success(), "token create: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = tern_in(
        ns,
        dir,
        &[
            "enroll",
            "--cx",
            url,
            "--token",
            v["token"].as_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "enroll {}: {}",
        cfg.display(),
        stderr(&o)
    );
}
