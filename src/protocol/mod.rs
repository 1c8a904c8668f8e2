//! TODO: see docs/ARCHITECTURE.md
