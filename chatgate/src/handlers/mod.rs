//! One file per endpoint group; each handler parses, calls chatcore, and
//! shapes the answer. Errors go back to the router as [`ApiError`]s.
//!
//! [`ApiError`]: crate::error::ApiError

pub mod chat;
pub mod feedback;
pub mod meta;
pub mod session;
