//! Logging: JSON lines by default (the access log is one JSON object per request), written
//! through a non-blocking writer so a slow stdout never stalls the data path.

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if format == "text" {
        builder.with_ansi(false).init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).init();
    }
    guard
}
