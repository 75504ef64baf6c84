//! End-to-end tests on real servers: nats-server, SQLite or PostgreSQL
//! (`CUSTODIAN_TEST_BACKEND`), the OpenID provider. One binary, modules per capability.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod browser;
mod bus_trust;
mod consent_ledger;
mod dead_letters;
mod gateway_api;
mod gateway_edge;
mod incidents;
mod leadership;
mod migrations;
mod monitoring;
mod no_window;
mod reliability;
mod signals;
mod support;
mod sweeps;
mod traces;
mod vault;
