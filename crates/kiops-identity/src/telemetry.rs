//! Logs and traces. Logs go to stdout as text or JSON lines, filtered by
//! `RUST_LOG`. With `--otlp-endpoint`, the same spans (one `rpc` span per
//! gRPC call, named after its method and carrying the request id) are also
//! exported to an OpenTelemetry collector over OTLP/HTTP, continuing the
//! caller's trace when it sends a W3C `traceparent` header.

use crate::config::LogFormat;
use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";

/// Whether spans leave the process: only then does the `rpc` span carry the
/// `otel.*` fields the exporter reads. Without an exporter they would be
/// formatted into every request's span, and printed in every log line of
/// it, for nobody.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// See `EXPORTING`.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps the trace exporter alive; `shutdown` flushes what is buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes buffered spans. The exporter blocks on HTTP, so it runs on a
    /// plain thread rather than a runtime worker.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = std::thread::spawn(move || provider.shutdown()).join();
            if !matches!(flushed, Ok(Ok(()))) {
                eprintln!("kiops-identity: flushing traces to the OTLP collector failed");
            }
        }
    }
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber. Call once, inside the runtime.
pub fn init(format: LogFormat, otlp: Option<(&str, &str)>) -> anyhow::Result<Telemetry> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_filter(log_filter()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_target(false)
                    .with_filter(log_filter()),
            ),
        ),
    };
    let (provider, otel) = match otlp {
        Some((endpoint, service)) => {
            let provider = tracer_provider(endpoint, service)?;
            let tracer = provider.tracer("kiops-identity");
            // The exporter's own HTTP client must not trace itself into a loop.
            let filter = EnvFilter::new(
                "info,sqlx=warn,sea_orm=warn,h2=off,hyper=off,hyper_util=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off",
            );
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter);
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    if let Some((endpoint, _)) = otlp {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(endpoint = %traces_url(endpoint), "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`; a URL that
/// already names the traces path is kept.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

fn tracer_provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let url = traces_url(endpoint);
    url.parse::<http::Uri>()
        .with_context(|| format!("--otlp-endpoint {endpoint} is not a URL"))?;
    let service = service.to_string();
    // Building the blocking HTTP client inside the async runtime is not
    // allowed; a short-lived thread sidesteps it.
    std::thread::spawn(move || -> anyhow::Result<SdkTracerProvider> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .context("OTLP exporter")?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))?
}

/// Reads a W3C trace context from request headers.
pub fn parent_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator;
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn traceparent_is_read() {
        use opentelemetry::trace::TraceContextExt;
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = parent_context(&h);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(!parent_context(&http::HeaderMap::new())
            .span()
            .span_context()
            .is_valid());
    }
}
