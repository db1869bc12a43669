//! Shared pieces of the benchmarks: process figures from `/proc` and Prometheus text parsing.

use std::collections::BTreeMap;

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
        assert!(peak_rss_mib(pid).unwrap() > 0.0);
    }
}
