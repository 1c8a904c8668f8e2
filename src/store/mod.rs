//! The cluster store. TODO(core): Store (open, atomic writes), lock, alloc. See docs/ARCHITECTURE.md.
pub mod docs;
