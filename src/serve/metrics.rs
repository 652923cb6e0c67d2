//! `GET /metrics`: Prometheus text format. Runs by status, HTTP requests by code, pool
//! state and warm-hit ratio, and a request latency histogram.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::pool::PoolStats;
use crate::report::RunReport;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Counts {
    runs: BTreeMap<String, u64>,
    requests: BTreeMap<u16, u64>,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics(Mutex<Counts>);

impl Metrics {
    pub fn run(&self, r: &RunReport) {
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *self.0.lock().unwrap().runs.entry(status).or_default() += 1;
    }

    pub fn request(&self, code: u16, took: Duration) {
        let mut c = self.0.lock().unwrap();
        *c.requests.entry(code).or_default() += 1;
        if c.buckets.is_empty() {
            c.buckets = vec![0; BUCKETS.len()];
        }
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                c.buckets[i] += 1;
            }
        }
        c.sum += s;
        c.count += 1;
    }

    pub fn render(&self, pool: &PoolStats, size: usize) -> String {
        let c = self.0.lock().unwrap();
        let mut o = String::new();
        let _ = writeln!(o, "# HELP pysandbox_runs_total Runs by final status.");
        let _ = writeln!(o, "# TYPE pysandbox_runs_total counter");
        for (s, n) in &c.runs {
            let _ = writeln!(o, "pysandbox_runs_total{{status=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP pysandbox_http_requests_total HTTP requests by response code."
        );
        let _ = writeln!(o, "# TYPE pysandbox_http_requests_total counter");
        for (code, n) in &c.requests {
            let _ = writeln!(o, "pysandbox_http_requests_total{{code=\"{code}\"}} {n}");
        }
        let total = pool.warm + pool.cold;
        let ratio = if total == 0 {
            0.0
        } else {
            pool.warm as f64 / total as f64
        };
        let single: [(&str, &str, String); 6] = [
            ("pysandbox_pool_size", "gauge", size.to_string()),
            ("pysandbox_pool_idle", "gauge", pool.idle.to_string()),
            (
                "pysandbox_pool_starting",
                "gauge",
                pool.starting.to_string(),
            ),
            ("pysandbox_pool_warm_ratio", "gauge", ratio.to_string()),
            (
                "pysandbox_pool_retired_total",
                "counter",
                pool.retired.to_string(),
            ),
            (
                "pysandbox_pool_failed_starts_total",
                "counter",
                pool.failed_starts.to_string(),
            ),
        ];
        for (name, kind, v) in &single {
            let _ = writeln!(o, "# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(o, "# TYPE pysandbox_pool_runs_total counter");
        for (kind, n) in [("warm", pool.warm), ("cold", pool.cold)] {
            let _ = writeln!(o, "pysandbox_pool_runs_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP pysandbox_request_seconds Request latency.");
        let _ = writeln!(o, "# TYPE pysandbox_request_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = c.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(o, "pysandbox_request_seconds_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "pysandbox_request_seconds_bucket{{le=\"+Inf\"}} {}",
            c.count
        );
        let _ = writeln!(o, "pysandbox_request_seconds_sum {}", c.sum);
        let _ = writeln!(o, "pysandbox_request_seconds_count {}", c.count);
        o
    }
}
