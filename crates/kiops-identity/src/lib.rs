//! kiops-identity: the identity and membership service of the KIOPS platform.
//!
//! The modules in layers, top to bottom; a module uses only its own layer
//! and those below (`.ci/check-layers` checks it, with no cycles):
//! - [`cli`], [`keys_cli`], [`service_accounts_cli`]: the commands;
//! - [`server`]: wiring, listeners, background tasks, shutdown; with
//!   [`http`], [`bootstrap`], [`config`], [`telemetry`], [`request_id`],
//!   [`grpc_metrics`];
//! - [`api`]: one module per gRPC service, decode → call → encode;
//! - [`service`]: the use cases, one module per gRPC service;
//! - [`app`]: the shared state; [`stream_limits`];
//! - [`auth`] (hashing, secret tokens, token minting), [`mail`] (R20),
//!   [`overload`], [`client_addr`], [`metrics`], [`middleware`];
//! - [`store`]: sea-orm, SQL and transactions (the only place SQL is built);
//! - [`domain`]: rules R1–R20 as plain functions, no tonic, no sea-orm;
//!   [`clock`].

pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod browser;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod grpc_metrics;
pub mod http;
pub mod keys_cli;
pub mod mail;
pub mod metrics;
pub mod middleware;
pub mod overload;
pub mod request_body;
pub mod request_id;
pub mod server;
pub mod service;
pub mod service_accounts_cli;
pub mod store;
pub mod stream_limits;
pub mod telemetry;
