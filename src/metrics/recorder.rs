//! The recorder: where every series rproxy records lives, how `/metrics` renders it as
//! Prometheus text, and how a reload takes out the series of what it removed.
//!
//! Ours rather than metrics-exporter-prometheus's, because that exporter (0.18) keeps its
//! registry private and forgets a series only once it has gone unchanged for a set time
//! (`idle_timeout`), for every series of a kind alike: it cannot drop one removed backend, and
//! a configured backend that is merely idle would vanish with it. The series sit instead in the
//! metrics-util `Registry` the exporter is built on, which can delete entries (`retain_*`):
//! `forget_unconfigured` deletes those naming a listener, upstream or backend that the running
//! configuration no longer has, so later scrapes never show them, and one added back later
//! registers new storage that starts from zero. A handle still held by a request that began
//! before the reload records into storage no scrape reaches any more.
//!
//! The exporter still writes the text: each line goes through its `formatting` functions (help,
//! type and sample lines, label escaping), so the output is the exporter's format; only the
//! storage is ours.
//!
//! Counters and gauges are the registry's atomics. A histogram is a fixed set of bucket counts
//! plus a sum, all atomic: recording adds to them, and there is no sample queue to drain, so
//! no upkeep task. Names and label keys are rproxy's own constants, valid as written; label
//! values (listener and server names from the configuration) are escaped by the formatter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use indexmap::IndexMap;
use metrics::atomics::AtomicU64;
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::LabelSet;
use metrics_exporter_prometheus::formatting;
use metrics_util::registry::{Registry, Storage};
use parking_lot::Mutex;

/// The listeners, upstreams, backends and limits the running configuration has: series
/// labelled with any other leave the registry (`Recorder::forget_unconfigured`).
#[derive(Debug, Default)]
pub struct Configured<'c> {
    pub listeners: HashSet<&'c str>,
    pub upstreams: HashSet<&'c str>,
    /// `(upstream, backend label)`.
    pub backends: HashSet<(&'c str, &'c str)>,
    /// `[limits.NAME]`.
    pub limits: HashSet<&'c str>,
}

impl Configured<'_> {
    /// Whether every listener, upstream and backend that `key`'s labels name is configured.
    fn names_all_of(&self, key: &Key) -> bool {
        let (mut upstream, mut backend) = (None, None);
        for label in key.labels() {
            match label.key() {
                "listener" if !self.listeners.contains(label.value()) => return false,
                "limit" if !self.limits.contains(label.value()) => return false,
                "upstream" => upstream = Some(label.value()),
                "backend" => backend = Some(label.value()),
                _ => {}
            }
        }
        match (upstream, backend) {
            (Some(u), Some(b)) => self.backends.contains(&(u, b)),
            (Some(u), None) => self.upstreams.contains(u),
            // Every backend series carries its upstream; a lone backend label names nothing.
            (None, _) => true,
        }
    }
}

/// The Prometheus recorder; clones share the same series.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    series: Registry<Key, SeriesStorage>,
    /// Help text by metric name.
    help: Mutex<HashMap<String, SharedString>>,
}

impl Recorder {
    /// A recorder whose histograms count into buckets with upper bounds `bounds` (ascending).
    pub(super) fn new(bounds: &'static [f64]) -> Recorder {
        Recorder {
            inner: Arc::new(Inner {
                series: Registry::new(SeriesStorage { bounds }),
                help: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Deletes every series labelled with a listener, upstream or backend not in `configured`.
    pub fn forget_unconfigured(&self, configured: &Configured<'_>) {
        let series = &self.inner.series;
        series.retain_counters(|key, _| configured.names_all_of(key));
        series.retain_gauges(|key, _| configured.names_all_of(key));
        series.retain_histograms(|key, _| configured.names_all_of(key));
    }

    /// Every series, in the Prometheus text format (0.0.4): one family per name, in name
    /// order, each with its help text and type, then its series, sorted.
    pub fn render(&self) -> String {
        // Name -> (type, one text block per series).
        let mut families: BTreeMap<String, (&str, Vec<String>)> = BTreeMap::new();
        let mut family = |key: &Key, kind: &'static str, block: String| {
            let entry = families
                .entry(key.name().to_string())
                .or_insert_with(|| (kind, Vec::new()));
            entry.1.push(block);
        };
        self.inner.series.visit_counters(|key, value| {
            let value = value.load(Ordering::Relaxed);
            family(key, "counter", sample(key, None, None, value));
        });
        self.inner.series.visit_gauges(|key, value| {
            let value = f64::from_bits(value.load(Ordering::Relaxed));
            family(key, "gauge", sample(key, None, None, Float(value)));
        });
        self.inner.series.visit_histograms(|key, histogram| {
            family(key, "histogram", histogram.render(key));
        });
        let help = self.inner.help.lock();
        let mut out = String::new();
        for (name, (kind, mut blocks)) in families {
            if let Some(text) = help.get(&name) {
                formatting::write_help_line(&mut out, &name, None, None, text);
            }
            formatting::write_type_line(&mut out, &name, None, None, kind);
            blocks.sort_unstable();
            for block in blocks {
                out.push_str(&block);
            }
            out.push('\n');
        }
        out
    }

    fn describe(&self, name: &KeyName, text: SharedString) {
        self.inner
            .help
            .lock()
            .entry(name.as_str().to_string())
            .or_insert(text);
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, name: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&name, text);
    }

    fn describe_gauge(&self, name: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&name, text);
    }

    fn describe_histogram(&self, name: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&name, text);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let series = &self.inner.series;
        series.get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let series = &self.inner.series;
        series.get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let series = &self.inner.series;
        series.get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// The registry's storage: atomics for counters and gauges (a gauge holds `f64` bits), and
/// bucket counts with upper bounds `bounds` for histograms.
#[derive(Debug)]
struct SeriesStorage {
    bounds: &'static [f64],
}

impl Storage<Key> for SeriesStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<BucketCounts>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::new(AtomicU64::new(0))
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::new(AtomicU64::new(0))
    }

    fn histogram(&self, _: &Key) -> Self::Histogram {
        Arc::new(BucketCounts {
            bounds: self.bounds,
            counts: self.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            above: AtomicU64::new(0),
            sum: AtomicU64::new(0.0f64.to_bits()),
        })
    }
}

/// One histogram series.
#[derive(Debug)]
struct BucketCounts {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative: `counts[i]` holds those above `bounds[i - 1]`
    /// and at most `bounds[i]`.
    counts: Box<[AtomicU64]>,
    /// Observations above every bound.
    above: AtomicU64,
    /// The sum of every observation, as `f64` bits.
    sum: AtomicU64,
}

impl HistogramFn for BucketCounts {
    fn record(&self, value: f64) {
        let bucket = self.bounds.partition_point(|&le| le < value);
        self.counts
            .get(bucket)
            .unwrap_or(&self.above)
            .fetch_add(1, Ordering::Relaxed);
        // The closure always returns `Some`: the update cannot fail.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some((f64::from_bits(sum) + value).to_bits())
            });
    }
}

impl BucketCounts {
    /// The `_bucket` lines (cumulative, then `+Inf`), `_sum` and `_count` of series `key`.
    fn render(&self, key: &Key) -> String {
        let mut out = String::new();
        let mut seen = 0;
        for (le, count) in self.bounds.iter().zip(self.counts.iter()) {
            seen += count.load(Ordering::Relaxed);
            out.push_str(&sample(key, Some("bucket"), Some(Float(*le)), seen));
        }
        seen += self.above.load(Ordering::Relaxed);
        out.push_str(&sample(
            key,
            Some("bucket"),
            Some(Float(f64::INFINITY)),
            seen,
        ));
        let sum = Float(f64::from_bits(self.sum.load(Ordering::Relaxed)));
        out.push_str(&sample(key, Some("sum"), None, sum));
        out.push_str(&sample(key, Some("count"), None, seen));
        out
    }
}

/// One line, written by the exporter's formatter: `name[_suffix]{labels of key[,le="le"]}
/// value`.
fn sample(
    key: &Key,
    suffix: Option<&'static str>,
    le: Option<Float>,
    value: impl std::fmt::Display,
) -> String {
    let mut line = String::new();
    let labels = LabelSet::from_key_and_global(key, &IndexMap::new());
    formatting::write_metric_line(
        &mut line,
        key.name(),
        suffix,
        &labels,
        le.map(|le| ("le", le)),
        value,
        None,
    );
    line
}

/// An `f64` as Prometheus writes it: `+Inf`, `-Inf` and `NaN` spelled its way.
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BackendMetrics, ListenerMetrics, PoolMetrics, SECONDS_BUCKETS};

    fn configured<'c>(
        listeners: &[&'c str],
        upstreams: &[&'c str],
        backends: &[(&'c str, &'c str)],
    ) -> Configured<'c> {
        Configured {
            listeners: listeners.iter().copied().collect(),
            upstreams: upstreams.iter().copied().collect(),
            backends: backends.iter().copied().collect(),
            limits: HashSet::new(),
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_removed_backend_leaves_the_registry_and_comes_back_from_zero() {
        let recorder = Recorder::new(SECONDS_BUCKETS);
        let backend = |label: &str| {
            metrics::with_local_recorder(&recorder, || BackendMetrics::new("app", label))
        };
        let (a, b) = (backend("a:80"), backend("b:80"));
        a.response(200, std::time::Duration::from_millis(3));
        b.response(200, std::time::Duration::from_millis(3));
        let a_2xx =
            "rproxy_upstream_requests_total{upstream=\"app\",backend=\"a:80\",code=\"2xx\"}";
        let a_count = "rproxy_upstream_response_seconds_count{upstream=\"app\",backend=\"a:80\"}";
        assert_eq!(value(&recorder.render(), a_2xx), Some(1.0));

        recorder.forget_unconfigured(&configured(&[], &["app"], &[("app", "b:80")]));
        a.response(200, std::time::Duration::from_millis(3)); // a request still running
        let text = recorder.render();
        assert!(!text.contains("a:80"), "{text}");
        let b_2xx =
            "rproxy_upstream_requests_total{upstream=\"app\",backend=\"b:80\",code=\"2xx\"}";
        assert_eq!(value(&text, b_2xx), Some(1.0), "{text}");

        let again = backend("a:80");
        let text = recorder.render();
        assert_eq!(value(&text, a_2xx), Some(0.0), "{text}");
        assert_eq!(value(&text, a_count), Some(0.0), "{text}");
        again.response(500, std::time::Duration::from_millis(3));
        assert_eq!(value(&recorder.render(), a_count), Some(1.0));
    }

    #[test]
    fn a_removed_listener_or_upstream_leaves_with_everything_labelled_with_it() {
        let recorder = Recorder::new(SECONDS_BUCKETS);
        metrics::with_local_recorder(&recorder, || {
            ListenerMetrics::new("web").request(200, std::time::Duration::from_millis(1));
            ListenerMetrics::new("gone").request(200, std::time::Duration::from_millis(1));
            PoolMetrics::new("app").retries.increment(1);
            PoolMetrics::new("old").retries.increment(1);
            BackendMetrics::new("old", "c:80").error(crate::metrics::ErrorKind::Connect);
            metrics::counter!("t", "listener" => "gone", "upstream" => "app", "backend" => "a:80")
                .increment(1);
            metrics::counter!("t", "listener" => "web", "upstream" => "app", "backend" => "a:80")
                .increment(1);
            metrics::gauge!("unlabelled").set(2.0);
        });
        recorder.forget_unconfigured(&configured(&["web"], &["app"], &[("app", "a:80")]));
        let text = recorder.render();
        for gone in ["\"gone\"", "\"old\"", "c:80"] {
            assert!(!text.contains(gone), "{gone} in\n{text}");
        }
        assert_eq!(
            value(
                &text,
                "rproxy_http_requests_total{listener=\"web\",code=\"2xx\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "rproxy_upstream_retries_total{upstream=\"app\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "t{listener=\"web\",upstream=\"app\",backend=\"a:80\"}"
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "unlabelled"), Some(2.0));
    }

    #[test]
    fn renders_the_prometheus_text_format() {
        static BOUNDS: &[f64] = &[0.5, 1.0];
        let recorder = Recorder::new(BOUNDS);
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("c_total", "Things\\counted\nhere");
            metrics::counter!("c_total", "name" => "a \"b\"\\ c\n").increment(3);
            metrics::describe_histogram!("h_seconds", "Times");
            let h = metrics::histogram!("h_seconds", "l" => "x");
            for v in [0.25, 0.5, 0.75, 2.0] {
                h.record(v);
            }
            metrics::gauge!("g").set(f64::INFINITY);
        });
        assert_eq!(
            recorder.render(),
            "# HELP c_total Things\\\\counted\\nhere\n\
             # TYPE c_total counter\n\
             c_total{name=\"a \\\"b\\\"\\\\ c\\n\"} 3\n\
             \n\
             # TYPE g gauge\n\
             g +Inf\n\
             \n\
             # HELP h_seconds Times\n\
             # TYPE h_seconds histogram\n\
             h_seconds_bucket{l=\"x\",le=\"0.5\"} 2\n\
             h_seconds_bucket{l=\"x\",le=\"1\"} 3\n\
             h_seconds_bucket{l=\"x\",le=\"+Inf\"} 4\n\
             h_seconds_sum{l=\"x\"} 3.5\n\
             h_seconds_count{l=\"x\"} 4\n\
             \n"
        );
    }
}
