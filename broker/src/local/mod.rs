//! Local clients (placeholder).
