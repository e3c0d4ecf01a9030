//! What a node tells the CX about its machine (seed table 5-1: system load,
//! CPU, memory, free space, disk activity, service status), read through
//! `sysinfo`. Every node sends it in its sync report; the CX turns it into
//! trends and disk-space alerts.
//!
//! Counters (disk and network bytes) are totals since boot: the CX derives
//! rates from two reports, so a missed report loses no bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sysinfo::{Disks, Networks, Pid, ProcessesToUpdate, System};

/// CPU time (user and system) the calling thread has used, in µs: what a
/// stretch of work on one thread cost, whatever else the process does.
pub fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// This host's interface addresses peers could dial: every address of
/// every interface except loopback, unspecified and IPv6 link-local ones
/// (a certificate cannot name those with their zone).
pub fn interface_ips() -> Vec<std::net::IpAddr> {
    let Ok(nets) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut v: Vec<std::net::IpAddr> = nets
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskStats {
    #[schema(value_type = String)]
    pub mount: PathBuf,
    pub fs: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// This disk holds the node's data directory (caches, journals, state).
    pub holds_data: bool,
    /// Totals since boot for the disk's device.
    pub read_bytes: u64,
    pub written_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemStats {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub cpus: u32,
    /// All CPUs, 0..=100, over the last refresh interval.
    pub cpu_pct: f64,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub disks: Vec<DiskStats>,
    /// Totals since boot over every interface but loopback.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// This tern process.
    pub process_rss_bytes: u64,
    pub process_cpu_pct: f64,
    pub uptime_s: u64,
}

impl SystemStats {
    /// The disk holding the data directory, if known.
    pub fn data_disk(&self) -> Option<&DiskStats> {
        self.disks.iter().find(|d| d.holds_data)
    }
}

/// Keeps sysinfo's handles between reports (CPU usage needs two readings).
pub struct Collector {
    data_dir: PathBuf,
    sys: Option<System>,
    disks: Option<Disks>,
    nets: Option<Networks>,
    last: Option<(Instant, SystemStats)>,
    min_interval: Duration,
}

/// Pseudo and read-only image filesystems: never "full" in a sense that matters.
fn ignored_fs(fs: &str) -> bool {
    matches!(
        fs,
        "squashfs" | "iso9660" | "tmpfs" | "devtmpfs" | "overlay" | "proc" | "sysfs" | "fuse"
    ) || fs.starts_with("fuse.")
}

impl Collector {
    pub fn new(data_dir: &Path) -> Collector {
        Collector {
            data_dir: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned()),
            sys: System::new_all().ok(),
            disks: Disks::new_with_refreshed_list().ok(),
            nets: Networks::new_with_refreshed_list().ok(),
            last: None,
            min_interval: Duration::from_secs(2),
        }
    }

    /// Current figures (re-read at most every two seconds).
    pub fn collect(&mut self) -> SystemStats {
        if let Some((t, s)) = &self.last
            && t.elapsed() < self.min_interval
        {
            return s.clone();
        }
        let mut st = SystemStats::default();
        if let Ok(l) = System::load_average() {
            st.load1 = l.one;
            st.load5 = l.five;
            st.load15 = l.fifteen;
        }
        if let Some(sys) = &mut self.sys {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            st.cpus = sys.cpus().len() as u32;
            st.cpu_pct = sys.global_cpu_usage() as f64;
            st.mem_total_bytes = sys.total_memory();
            st.mem_used_bytes = sys.used_memory();
            st.swap_total_bytes = sys.total_swap();
            st.swap_used_bytes = sys.used_swap();
            let pid = Pid::from_u32(std::process::id());
            sys.refresh_processes(ProcessesToUpdate::Some(&[pid]), false);
            if let Some(p) = sys.process(pid) {
                st.process_rss_bytes = p.memory();
                st.process_cpu_pct = p.cpu_usage() as f64;
            }
            st.uptime_s = System::uptime().unwrap_or(0);
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            // The data directory lives on the longest mount point that prefixes it.
            let best = disks
                .iter()
                .filter(|d| self.data_dir.starts_with(d.mount_point()))
                .map(|d| d.mount_point().as_os_str().len())
                .max();
            for d in disks.iter() {
                let fs = d.file_system().to_string_lossy().into_owned();
                let holds = best == Some(d.mount_point().as_os_str().len())
                    && self.data_dir.starts_with(d.mount_point());
                if ignored_fs(&fs) && !holds {
                    continue;
                }
                let u = d.usage();
                st.disks.push(DiskStats {
                    mount: d.mount_point().to_owned(),
                    fs,
                    total_bytes: d.total_space(),
                    free_bytes: d.available_space(),
                    holds_data: holds,
                    read_bytes: u.total_read_bytes,
                    written_bytes: u.total_written_bytes,
                });
            }
        }
        if let Some(nets) = &mut self.nets {
            nets.refresh(true);
            for (name, n) in nets.iter() {
                if name == "lo" {
                    continue;
                }
                st.net_rx_bytes += n.total_received();
                st.net_tx_bytes += n.total_transmitted();
            }
        }
        self.last = Some((Instant::now(), st.clone()));
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_disk_holding_the_data_directory() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Collector::new(d.path());
        let s = c.collect();
        assert!(s.cpus >= 1);
        assert!(s.mem_total_bytes > 0);
        assert!(s.process_rss_bytes > 0);
        let disk = s.data_disk().expect("the data directory's disk");
        assert!(disk.total_bytes >= disk.free_bytes && disk.total_bytes > 0);
    }
}
