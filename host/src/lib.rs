//! artifactapi: a caching proxy and package repository server whose
//! package-format knowledge lives in WebAssembly component plugins.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod error;
pub mod fill;
pub mod gc;
pub mod manage;
pub mod plugins;
pub mod server;
pub mod signing;
pub mod stats;
pub mod storage;
pub mod tls;
pub mod upstream_auth;
pub mod util;
pub mod watch;
