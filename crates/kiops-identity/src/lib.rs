//! kiops-identity: the identity and membership service of the KIOPS platform.
//!
//! Layout (a request flows one way, api → domain → store → api):
//! - [`domain`]: rules R1–R20 as plain functions, no tonic, no sea-orm;
//! - [`store`]: sea-orm, SQL and transactions (the only place SQL is built);
//! - [`api`]: one module per gRPC service;
//! - [`auth`]: password hashing pool, secret tokens, token minting;
//! - [`server`], [`http`], [`config`], [`cli`], [`bootstrap`]: running it.

pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod domain;
pub mod grpc_metrics;
pub mod http;
pub mod keys_cli;
pub mod mail;
pub mod metrics;
pub mod overload;
pub mod request_id;
pub mod server;
pub mod service;
pub mod store;
pub mod stream_limits;
pub mod telemetry;
