//! Prometheus metrics and the `/healthz` and `/readyz` endpoints, served on
//! `--metrics-address` (default `0.0.0.0:9177`).
//!
//! Request counters and latencies are recorded through [`Metrics::observe_dra`] /
//! [`Metrics::observe_nri`] by two wrappers the daemon puts around the handlers:
//! [`MeteredPreparer`] (the kubelet's [`ClaimPreparer`]) and [`MeteredPods`] (the NRI
//! plugin's [`PodHandler`]); the method names and the outcome rule live here, next to
//! the series they feed. Data-path counters are not
//! copied into the registry: every scrape reads them from the pins under the bpf root
//! (the kernel is the only source of truth), so a scrape always shows what the
//! programs counted, also for devices the daemon adopted after a restart.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::{text::encode_registry, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::datapath::{AttachedDatapath, PinLayout};
use crate::kubelet::{ClaimPreparer, ClaimRef, PrepareResults, UnprepareResults};
use crate::nri::{PodHandler, PodSandbox};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// The driver's metrics registry.
pub struct Metrics {
    registry: Registry,
    dra_requests: Family<RequestLabels, Counter>,
    dra_latency: Family<MethodLabels, Histogram>,
    nri_requests: Family<RequestLabels, Counter>,
    nri_latency: Family<MethodLabels, Histogram>,
    published_devices: Gauge,
    status_write_errors: Counter,
    bpf_root: Option<PinLayout>,
}

impl Metrics {
    /// A registry; `bpf_root` is where scrapes read data-path counters from.
    pub fn new(bpf_root: Option<PinLayout>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("netclaim");
        let dra_requests = Family::<RequestLabels, Counter>::default();
        let dra_latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let nri_requests = Family::<RequestLabels, Counter>::default();
        let nri_latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let published_devices = Gauge::default();
        let status_write_errors = Counter::default();
        registry.register(
            "dra_requests",
            "kubelet DRA requests by method and outcome",
            dra_requests.clone(),
        );
        registry.register(
            "dra_request_duration_seconds",
            "kubelet DRA request latency",
            dra_latency.clone(),
        );
        registry.register(
            "nri_requests",
            "NRI pod events by method and outcome",
            nri_requests.clone(),
        );
        registry.register(
            "nri_request_duration_seconds",
            "NRI pod event latency",
            nri_latency.clone(),
        );
        registry.register(
            "published_devices",
            "devices in this node's ResourceSlices",
            published_devices.clone(),
        );
        registry.register(
            "status_write_errors",
            "failed ResourceClaim status writes",
            status_write_errors.clone(),
        );
        Arc::new(Self {
            registry,
            dra_requests,
            dra_latency,
            nri_requests,
            nri_latency,
            published_devices,
            status_write_errors,
            bpf_root,
        })
    }

    pub fn observe_dra(&self, method: &str, ok: bool, elapsed: Duration) {
        observe(&self.dra_requests, &self.dra_latency, method, ok, elapsed);
    }

    pub fn observe_nri(&self, method: &str, ok: bool, elapsed: Duration) {
        observe(&self.nri_requests, &self.nri_latency, method, ok, elapsed);
        tracing::debug!(
            hook = method,
            ok,
            hook_ms = elapsed.as_secs_f64() * 1000.0,
            "NRI hook finished"
        );
    }

    pub fn set_published_devices(&self, n: usize) {
        self.published_devices
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn status_write_failed(&self) {
        self.status_write_errors.inc();
    }

    /// The OpenMetrics text of a scrape.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode_registry(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        if let Some(layout) = &self.bpf_root {
            render_datapath(&mut out, layout);
        }
        out.push_str("# EOF\n");
        out
    }
}

fn observe(
    requests: &Family<RequestLabels, Counter>,
    latency: &Family<MethodLabels, Histogram>,
    method: &str,
    ok: bool,
    elapsed: Duration,
) {
    requests
        .get_or_create(&RequestLabels {
            method: method.to_string(),
            outcome: if ok { "success" } else { "error" }.to_string(),
        })
        .inc();
    latency
        .get_or_create(&MethodLabels {
            method: method.to_string(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Counts and times DRA calls (`NodePrepareResources`, `NodeUnprepareResources`),
/// then returns what `inner` answered. A call counts as a success when every claim in
/// it succeeded.
pub struct MeteredPreparer {
    inner: Arc<dyn ClaimPreparer>,
    metrics: Arc<Metrics>,
}

impl MeteredPreparer {
    pub fn new(inner: Arc<dyn ClaimPreparer>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait::async_trait]
impl ClaimPreparer for MeteredPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let started = Instant::now();
        let results = self.inner.prepare(claims).await;
        let ok = results.values().all(Result::is_ok);
        self.metrics
            .observe_dra("NodePrepareResources", ok, started.elapsed());
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let started = Instant::now();
        let results = self.inner.unprepare(claims).await;
        let ok = results.values().all(Result::is_ok);
        self.metrics
            .observe_dra("NodeUnprepareResources", ok, started.elapsed());
        results
    }
}

/// Counts and times NRI pod events (`RunPodSandbox`, `StopPodSandbox`,
/// `RemovePodSandbox`, `Synchronize`), then returns what `inner` answered.
/// `Synchronize` has no outcome and always counts as a success.
pub struct MeteredPods {
    inner: Arc<dyn PodHandler>,
    metrics: Arc<Metrics>,
}

impl MeteredPods {
    pub fn new(inner: Arc<dyn PodHandler>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait::async_trait]
impl PodHandler for MeteredPods {
    async fn run_pod(&self, pod: &PodSandbox, budget: Option<Duration>) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.run_pod(pod, budget).await;
        self.metrics
            .observe_nri("RunPodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.stop_pod(pod).await;
        self.metrics
            .observe_nri("StopPodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.remove_pod(pod).await;
        self.metrics
            .observe_nri("RemovePodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn synchronize(&self, pods: &[PodSandbox]) {
        let started = Instant::now();
        self.inner.synchronize(pods).await;
        self.metrics
            .observe_nri("Synchronize", true, started.elapsed());
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends per-device data-path counters read from the pins.
fn render_datapath(out: &mut String, layout: &PinLayout) {
    let mut packets = String::new();
    let mut bytes = String::new();
    let mut drops = String::new();
    let mut hits = String::new();
    for key in layout.devices() {
        let Ok(dp) = AttachedDatapath::adopt(layout, key.clone()) else {
            continue;
        };
        let Ok(c) = dp.counters() else { continue };
        let claim = escape(&format!("{}/{}", key.claim_namespace, key.claim_name));
        let device = escape(&key.device);
        let l = format!("claim=\"{claim}\",device=\"{device}\"");
        let _ = writeln!(
            packets,
            "netclaim_datapath_packets_total{{{l},direction=\"rx\"}} {}",
            c.rx_packets
        );
        let _ = writeln!(
            packets,
            "netclaim_datapath_packets_total{{{l},direction=\"tx\"}} {}",
            c.tx_packets
        );
        let _ = writeln!(
            bytes,
            "netclaim_datapath_bytes_total{{{l},direction=\"rx\"}} {}",
            c.rx_bytes
        );
        let _ = writeln!(
            bytes,
            "netclaim_datapath_bytes_total{{{l},direction=\"tx\"}} {}",
            c.tx_bytes
        );
        for (reason, n) in &c.drops {
            let _ = writeln!(
                drops,
                "netclaim_datapath_drops_total{{{l},reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        for (prefix, n) in &c.route_hits {
            let _ = writeln!(
                hits,
                "netclaim_datapath_route_hits_total{{{l},prefix=\"{}\"}} {n}",
                escape(prefix)
            );
        }
    }
    for (name, help, body) in [
        (
            "netclaim_datapath_packets",
            "packets seen by a device's data path",
            packets,
        ),
        (
            "netclaim_datapath_bytes",
            "bytes seen by a device's data path",
            bytes,
        ),
        (
            "netclaim_datapath_drops",
            "packets dropped by a device's data path, by reason",
            drops,
        ),
        (
            "netclaim_datapath_route_hits",
            "egress packets per allowed prefix",
            hits,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} counter");
        out.push_str(&body);
    }
}

/// What `/readyz` checks. Each flag is set by the part that owns the state.
#[derive(Debug, Default)]
pub struct Readiness {
    pub kubelet_registered: AtomicBool,
    pub nri_connected: AtomicBool,
    pub slices_published: AtomicBool,
}

impl Readiness {
    /// Whether everything is ready, and a line per check.
    pub fn report(&self) -> (bool, String) {
        let checks = [
            ("kubelet registration", &self.kubelet_registered),
            ("NRI connection", &self.nri_connected),
            ("ResourceSlices published", &self.slices_published),
        ];
        let mut ok = true;
        let mut text = String::new();
        for (name, flag) in checks {
            let v = flag.load(Ordering::Relaxed);
            ok &= v;
            let _ = writeln!(text, "[{}] {name}", if v { "+" } else { "-" });
        }
        (ok, text)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the listener fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, readiness });
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // Reading pins is blocking I/O; keep it off the async workers.
    let metrics = s.metrics.clone();
    let body = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    let (ok, text) = s.readiness.report();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_request_metrics_and_eof() {
        let m = Metrics::new(None);
        m.observe_dra("NodePrepareResources", true, Duration::from_millis(3));
        m.observe_nri("RunPodSandbox", false, Duration::from_millis(7));
        m.set_published_devices(5);
        let text = m.render();
        assert!(text.contains(
            "netclaim_dra_requests_total{method=\"NodePrepareResources\",outcome=\"success\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "netclaim_nri_requests_total{method=\"RunPodSandbox\",outcome=\"error\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("netclaim_published_devices 5"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Fails the claim with UID `bad`, prepares every other.
    struct OneBad;

    #[async_trait::async_trait]
    impl ClaimPreparer for OneBad {
        async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
            claims
                .into_iter()
                .map(|c| {
                    let result = if c.uid == "bad" {
                        Err("no".to_string())
                    } else {
                        Ok(Vec::new())
                    };
                    (c.uid, result)
                })
                .collect()
        }

        async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
            claims.into_iter().map(|c| (c.uid, Ok(()))).collect()
        }
    }

    #[tokio::test]
    async fn metered_preparer_counts_calls_before_the_notification() {
        let m = Metrics::new(None);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let notify: Arc<dyn Fn() + Send + Sync> = {
            let (m, seen) = (m.clone(), seen.clone());
            Arc::new(move || seen.lock().unwrap().push(m.render()))
        };
        let metered = MeteredPreparer::new(Arc::new(OneBad), m.clone());
        let p = crate::kubelet::NotifyingPreparer::new(Arc::new(metered), notify);
        let claim = |uid: &str| ClaimRef {
            uid: uid.into(),
            ..Default::default()
        };
        let results = p.prepare(vec![claim("ok"), claim("bad")]).await;
        assert_eq!(results.len(), 2);
        p.unprepare(vec![claim("ok")]).await;
        let failed =
            "netclaim_dra_requests_total{method=\"NodePrepareResources\",outcome=\"error\"} 1";
        let unprepared =
            "netclaim_dra_requests_total{method=\"NodeUnprepareResources\",outcome=\"success\"} 1";
        let text = m.render();
        assert!(text.contains(failed) && text.contains(unprepared), "{text}");
        // Whoever is notified already sees the call counted.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].contains(failed), "{}", seen[0]);
    }

    #[test]
    fn readiness_lists_every_check() {
        let r = Readiness::default();
        let (ok, text) = r.report();
        assert!(!ok);
        assert!(text.contains("[-] NRI connection"));
        r.kubelet_registered.store(true, Ordering::Relaxed);
        r.nri_connected.store(true, Ordering::Relaxed);
        r.slices_published.store(true, Ordering::Relaxed);
        assert!(r.report().0);
    }
}
