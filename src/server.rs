//! The operator's HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Readiness, set once the controller is running.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the operator ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

fn answer(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

fn metrics_answer(metrics: &crate::metrics::Metrics) -> Response<Full<Bytes>> {
    Response::builder()
        .status(200)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(metrics.encode())))
        .expect("valid response")
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let health = health.clone();
                let metrics = metrics.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(match req.uri().path() {
                        "/metrics" => metrics_answer(&metrics),
                        "/healthz" => answer(200, "ok\n"),
                        "/readyz" if health.ready.load(Ordering::Relaxed) => answer(200, "ready\n"),
                        "/readyz" => answer(503, "starting\n"),
                        _ => answer(404, "not found\n"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
