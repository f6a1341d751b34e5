//! The server's metrics, written in the Prometheus text format (version 0.0.4) at
//! `/metrics`: requests by route and status, latency histograms by route, bytes in and out,
//! errors by `kind`, and each store's usage (refreshed on scrape by the ops route).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Tables {
    /// (method, route, status) → requests.
    requests: BTreeMap<(String, String, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
    /// error kind → errors.
    errors: BTreeMap<String, u64>,
}

/// Counters of a running server. Labels are route templates (`/v1/stores/{store}`), never
/// raw paths, so their number is bounded by the routes.
#[derive(Debug, Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(
        &self,
        method: &str,
        route: &str,
        status: u16,
        elapsed: Duration,
        error_kind: Option<&str>,
    ) {
        let Ok(mut t) = self.tables.lock() else {
            return;
        };
        *t.requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        let h = t.latency.entry(route.to_owned()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        if let Some(kind) = error_kind {
            *t.errors.entry(kind.to_owned()).or_default() += 1;
        }
    }

    /// Counts request body bytes received.
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts response body bytes sent.
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// A request started (`+1`) or finished (`-1`).
    pub(crate) fn in_flight(&self, started: bool) {
        if started {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The metrics in the Prometheus text format, followed by `usage` (store name, bytes
    /// used, quota) as gauges.
    pub fn render(&self, usage: &[(String, u64, Option<u64>)]) -> String {
        let mut out = String::new();
        let tables = match self.tables.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        out.push_str("# HELP imagestore_http_requests_total HTTP requests answered, by method, route and status.\n# TYPE imagestore_http_requests_total counter\n");
        for ((method, route, status), n) in &tables.requests {
            let _ = writeln!(
                out,
                "imagestore_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
        out.push_str("# HELP imagestore_http_request_duration_seconds Time to answer a request (until its response head), by route.\n# TYPE imagestore_http_request_duration_seconds histogram\n");
        for (route, h) in &tables.latency {
            let route = escape(route);
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "imagestore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "imagestore_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\nimagestore_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\nimagestore_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out.push_str("# HELP imagestore_http_errors_total Failed requests, by the error's kind.\n# TYPE imagestore_http_errors_total counter\n");
        for (kind, n) in &tables.errors {
            let _ = writeln!(
                out,
                "imagestore_http_errors_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        drop(tables);
        let _ = writeln!(
            out,
            "# HELP imagestore_http_request_bytes_total Request body bytes received.\n# TYPE imagestore_http_request_bytes_total counter\nimagestore_http_request_bytes_total {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP imagestore_http_response_bytes_total Response body bytes sent.\n# TYPE imagestore_http_response_bytes_total counter\nimagestore_http_response_bytes_total {}",
            self.bytes_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP imagestore_http_requests_in_flight Requests being answered.\n# TYPE imagestore_http_requests_in_flight gauge\nimagestore_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP imagestore_store_usage_bytes Bytes used by a store's images.\n# TYPE imagestore_store_usage_bytes gauge\n");
        for (store, used, _) in usage {
            let _ = writeln!(
                out,
                "imagestore_store_usage_bytes{{store=\"{}\"}} {used}",
                escape(store)
            );
        }
        out.push_str("# HELP imagestore_store_quota_bytes A store's quota (stores without one are not listed).\n# TYPE imagestore_store_quota_bytes gauge\n");
        for (store, _, quota) in usage {
            if let Some(q) = quota {
                let _ = writeln!(
                    out,
                    "imagestore_store_quota_bytes{{store=\"{}\"}} {q}",
                    escape(store)
                );
            }
        }
        out
    }
}

/// A label value as the text format writes it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.record("GET", "/v1/info", 200, Duration::from_millis(3), None);
        m.record(
            "GET",
            "/v1/stores/{store}",
            404,
            Duration::from_millis(30),
            Some("NotFound"),
        );
        m.add_bytes_in(7);
        let text = m.render(&[("s".into(), 42, Some(100))]);
        for line in [
            "imagestore_http_requests_total{method=\"GET\",route=\"/v1/info\",status=\"200\"} 1",
            "imagestore_http_request_duration_seconds_bucket{route=\"/v1/info\",le=\"0.005\"} 1",
            "imagestore_http_request_duration_seconds_bucket{route=\"/v1/stores/{store}\",le=\"0.025\"} 0",
            "imagestore_http_request_duration_seconds_count{route=\"/v1/info\"} 1",
            "imagestore_http_errors_total{kind=\"NotFound\"} 1",
            "imagestore_http_request_bytes_total 7",
            "imagestore_store_usage_bytes{store=\"s\"} 42",
            "imagestore_store_quota_bytes{store=\"s\"} 100",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
