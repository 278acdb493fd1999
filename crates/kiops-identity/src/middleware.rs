//! The tower plumbing the server's boxed gRPC middleware share (request id,
//! metrics, load shedding): each is a [`Middleware`], a single `call` given
//! the next service, and [`Layered`] makes it a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The answer of a middleware's `call`.
pub type Answer<R, E> = Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send>>;

/// One middleware: what it does around (or instead of) the next service.
pub trait Middleware: Clone {
    fn call<S, B, R>(&self, next: &mut S, req: http::Request<B>) -> Answer<R, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<R>> + Send,
        S::Future: Send + 'static,
        R: Default + Send + 'static;
}

/// A [`Middleware`] as a tower layer, and as the service it wraps `S` in.
#[derive(Clone, Default)]
pub struct Layered<M, S = ()> {
    middleware: M,
    next: S,
}

impl<M> Layered<M> {
    pub fn new(middleware: M) -> Self {
        Self {
            middleware,
            next: (),
        }
    }
}

impl<M: Clone, S> Layer<S> for Layered<M> {
    type Service = Layered<M, S>;

    fn layer(&self, next: S) -> Self::Service {
        Layered {
            middleware: self.middleware.clone(),
            next,
        }
    }
}

impl<M, S, B, R> Service<http::Request<B>> for Layered<M, S>
where
    M: Middleware,
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answer<R, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.middleware.call(&mut self.next, req)
    }
}
