//! Shared pieces of the benchmarks: process figures from `/proc` and Prometheus text parsing.

use std::collections::BTreeMap;

pub mod wer;
pub mod worker;

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds (user + system) of a process and every process below it, including children
/// already reaped: what a worker and the engines it runs as subprocesses have used.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let mut parents = Vec::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited while we looked
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime, stime, cutime, cstime: own time plus reaped children's.
        ticks.insert(pid, field(11) + field(12) + field(13) + field(14));
        if let Some(ppid) = f.get(1).and_then(|v| v.parse::<u32>().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut total = *ticks.get(&root)?;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            total += ticks.get(&pid).copied().unwrap_or(0.0);
            frontier.push(pid);
        }
    }
    Some(total / clock_ticks())
}

/// Resident set size now of a process and every process below it, in MiB. Found by parent
/// pid: `/proc/<pid>/task/<pid>/children` lists only what the main thread started, and a
/// worker starts its speech process from a runtime thread.
pub fn tree_rss_mib(root: u32) -> Option<f64> {
    let rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .unwrap_or(0.0)
    };
    std::fs::metadata(format!("/proc/{root}")).ok()?;
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let (mut total, mut frontier) = (0.0, vec![root]);
    while let Some(parent) = frontier.pop() {
        total += rss(parent);
        frontier.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
    }
    Some(total / 1024.0)
}

/// Peak resident set size of a process in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Sums the samples of `metric` in Prometheus text whose labels contain every `key="value"`
/// of `labels`, grouped by the label `by` (or one group "" when `by` is empty).
pub fn sum_by(text: &str, metric: &str, labels: &[&str], by: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let (label_text, value) = match rest.rfind(' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => continue,
        };
        if !labels.iter().all(|l| label_text.contains(l)) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = if by.is_empty() {
            String::new()
        } else {
            label_text
                .split(&format!("{by}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        *out.entry(key).or_default() += value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples_by_label() {
        let text = "# HELP x\nreq_total{verb=\"PATCH\",resource=\"voicebackends\"} 3\nreq_total{verb=\"GET\",resource=\"voicebackends\"} 5\nreq_total{verb=\"PATCH\",resource=\"pods\"} 7\nreq_total_other 9\n";
        let by_verb = sum_by(text, "req_total", &["resource=\"voicebackends\""], "verb");
        assert_eq!(by_verb.get("PATCH"), Some(&3.0));
        assert_eq!(by_verb.get("GET"), Some(&5.0));
        assert_eq!(sum_by(text, "req_total", &[], "").get(""), Some(&15.0));
    }

    #[test]
    fn reads_our_own_process_figures() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        // Our tree includes a child we start, whose CPU we burn and reap.
        let before = tree_cpu_seconds(pid).unwrap();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(tree_cpu_seconds(pid).unwrap() > before);
        assert!(tree_rss_mib(pid).unwrap() > 0.0);
        assert!(peak_rss_mib(pid).unwrap() > 0.0);
    }
}
