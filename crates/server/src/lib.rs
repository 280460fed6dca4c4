//! backstop-server: the HTTP tier over `backstop-engine`.
//!
//! Empty until the server issue lands; the crate exists so the workspace has its final shape
//! and the dependency direction (server -> engine, never back) is fixed from the start.
