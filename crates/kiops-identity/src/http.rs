//! The plain-HTTP side port: health for load balancers, Prometheus metrics,
//! and the JWKS for verifiers that fetch keys over HTTP.

use crate::app::App;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub fn router(app: App, unsafe_test_clock: bool) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks));
    if unsafe_test_clock {
        r = r.route("/test/clock/advance", post(advance_clock));
    }
    r.with_state(app)
}

/// Ready when the database answers; a load balancer then stops sending
/// traffic to a replica that lost its database.
async fn readyz(State(app): State<App>) -> impl IntoResponse {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    for u in app.store.pool_usage() {
        app.metrics.set_pool(&u);
    }
    if let Some((transactions, rotations)) = app.store.claim_batch_totals() {
        app.metrics.set_refresh_batches(transactions, rotations);
    }
    app.metrics.set_password_hashes(&app.hasher.stats);
    if let Some((statements, reads)) = app.store.check_batch_totals() {
        app.metrics.set_check_batches(statements, reads);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn jwks(State(app): State<App>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        app.tokens.jwks().to_json(),
    )
}

#[derive(Deserialize)]
struct Advance {
    ms: i64,
}

async fn advance_clock(State(app): State<App>, Query(q): Query<Advance>) -> impl IntoResponse {
    app.clock.advance(q.ms);
    tracing::warn!(ms = q.ms, "test clock advanced");
    (StatusCode::OK, format!("{}\n", app.clock.now_ms()))
}
