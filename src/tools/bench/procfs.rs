//! What the bench reads of the worker, of itself and of the machine: CPU time and peak memory
//! from `/proc` and getrusage(2).

use std::time::Duration;

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` writes them (empty if unreadable).
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A process's CPU time (user + system, all threads) so far.
pub(super) fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    stat_cpu(&stat, u64::try_from(hz).ok().filter(|h| *h > 0)?)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_sec as f64,
    ))
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmHWM:` (peak resident set).
pub(super) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The whole machine's (busy, total) CPU ticks from `/proc/stat`.
pub(super) fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// This process's CPU time so far: the publisher, the simulator and the collector.
pub(super) fn self_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// The CPU time (user + system) getrusage(2) reports for `who`: this process or its reaped
/// children.
pub(super) fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU fields are found even when the command name holds spaces and parentheses.
    #[test]
    fn stat_cpu_counts_fields_from_the_last_parenthesis() {
        let line = "4242 (wx (d) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(stat_cpu("garbage", 100), None);
    }
}
