//! kv-http's integration tests: every route and every bad input through the service called
//! directly (no socket), and the server's connection handling over loopback.

mod bad_input;
mod cluster;
mod conditional;
mod fuzz_corpus;
mod routes;
mod server;
mod stream;
mod support;
