//! End-to-end tests: every test starts the real `kiops-identity` binary and
//! talks to it with the generated tonic client, once on SQLite and once on
//! PostgreSQL.

mod support;

mod accounts;
mod audit;
mod audit_writes;
mod auth;
mod bad_input;
mod browser;
mod bulk_check;
mod concurrency;
mod crash;
mod db_faults;
mod downstream;
mod ecosystem;
mod grpc_web;
mod hardening_admin;
mod hardening_login;
mod hardening_mail;
mod hardening_sessions;
mod hostile;
mod interop;
mod invitations_ready;
mod isolation;
mod keys;
mod matrix;
mod memberships;
mod organizations;
mod readme;
mod redteam;
mod redteam_browser;
mod redteam_service;
mod redteam_sessions;
mod redteam_ways_in;
mod revocation_dating;
mod second_factor_policy;
mod server;
mod service_accounts;
mod service_scopes;
mod service_tokens;
mod sessions;
mod stress;
mod totp;
mod ways_in;
