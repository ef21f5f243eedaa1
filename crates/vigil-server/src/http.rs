//! The HTTP layer: router, state, error shape, auth extraction, handlers.

pub mod alerting;
pub mod error;
pub mod extract;
pub mod health;
pub mod ingest;
pub mod openapi;
pub mod prom;
pub mod router;
pub mod serve;
pub mod state;
