//! TODO(core): see docs/ARCHITECTURE.md
