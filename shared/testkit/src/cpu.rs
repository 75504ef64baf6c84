//! CPU time of processes, for benchmarks that say where a run's cycles went (wall-clock
//! rates alone cannot tell contention from work on a shared two-core machine). Linux only:
//! read from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, per thread).

use std::collections::HashMap;
use std::time::Duration;

/// CPU time used so far by each of some processes (the threads alive at the reading).
#[derive(Debug, Clone)]
pub struct CpuSnapshot(HashMap<u32, u64>);

impl CpuSnapshot {
    pub fn of(pids: &[u32]) -> Self {
        Self(pids.iter().map(|&pid| (pid, on_cpu_nanos(pid))).collect())
    }

    /// CPU time used since `earlier` by the processes of this reading; one not in `earlier`
    /// (a PostgreSQL backend started in between) counts in full. A process that ended in
    /// between is not in this reading, and its time is lost: compare long-lived processes.
    pub fn used_since(&self, earlier: &CpuSnapshot) -> Duration {
        let nanos = self.0.iter().map(|(pid, now)| now.saturating_sub(earlier.0.get(pid).copied().unwrap_or(0))).sum();
        Duration::from_nanos(nanos)
    }
}

/// Nanoseconds on CPU of the threads of `pid` alive now.
fn on_cpu_nanos(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| {
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// `parent` and its direct children (a PostgreSQL postmaster and its backends).
pub fn with_children(parent: u32) -> Vec<u32> {
    let mut pids = vec![parent];
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // `pid (comm) state ppid …`: comm may hold spaces, so split after its closing paren.
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()));
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_in_its_process_cpu_time() {
        let me = std::process::id();
        let before = CpuSnapshot::of(&[me]);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = CpuSnapshot::of(&[me]).used_since(&before);
        assert!(used >= Duration::from_millis(30), "spun 50 ms, read {used:?}");
    }

    #[test]
    fn a_process_new_since_the_earlier_reading_counts_in_full_and_one_gone_not_at_all() {
        let earlier = CpuSnapshot(HashMap::from([(1, 100), (2, 50)]));
        let now = CpuSnapshot(HashMap::from([(1, 160), (3, 40)]));
        assert_eq!(now.used_since(&earlier), Duration::from_nanos(60 + 40));
    }

    #[test]
    fn a_child_process_is_found_under_its_parent() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        let found = with_children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?} lacks {}", child.id());
        assert_eq!(found[0], std::process::id());
    }
}
