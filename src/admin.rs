//! The admin server on its own port: `/metrics`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ready: Readiness,
}

/// Whether the daemon is ready, with the text `/readyz` answers (the detail names what is not
/// served).
pub type Readiness = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// The admin routes. `ready` says whether the initial watches have synced.
pub fn router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, ready })
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let (ready, text) = (state.ready)();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, text)
}

/// Serves the admin routes on a bound listener until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, ready: Readiness) {
    let app = router(metrics, ready);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String) {
        let res = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_cache_sync_flag_and_says_what_is_not_served() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let metrics = Metrics::new().expect("metrics");
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let app = router(
            metrics,
            Arc::new(move || {
                let ready = f.load(Ordering::SeqCst);
                (ready, format!("ready={ready}\nregistry quay not served\n"))
            }),
        );
        assert_eq!(
            get_path(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_path(app.clone(), "/livez").await.0, StatusCode::OK);
        flag.store(true, Ordering::SeqCst);
        let (status, body) = get_path(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("registry quay not served"), "{body}");
        let (status, body) = get_path(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("pullkeeper_build_info"));
    }
}
