//! Error kinds every layer reports. The `kind` travels in the plugin protocol so
//! the Perl shim and scripts can tell bad input from a refused action from a
//! transient failure; the message is meant for the Proxmox GUI.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The caller passed something malformed. Nothing was changed.
    #[error("{0}")]
    InvalidInput(String),
    /// The named volume, snapshot or node does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The action is unsafe now (stale replica, volume open, ...). Nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// Something already exists / a conflicting operation holds it.
    #[error("{0}")]
    Conflict(String),
    /// A bounded wait ran out (lock, peer agent, tool).
    #[error("{0}")]
    Timeout(String),
    /// An external tool failed.
    #[error("{0}")]
    Tool(String),
    /// The cluster store could not be read or written.
    #[error("{0}")]
    Store(String),
    /// Anything else, with context.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// Stable machine-readable name used in the plugin protocol and exit codes.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid-input",
            Error::NotFound(_) => "not-found",
            Error::Refused(_) => "refused",
            Error::Conflict(_) => "conflict",
            Error::Timeout(_) => "timeout",
            Error::Tool(_) => "tool",
            Error::Store(_) => "store",
            Error::Other(_) => "internal",
        }
    }

    /// Process exit code for the CLI (documented in README and `--help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidInput(_) => 2,
            Error::NotFound(_) => 3,
            Error::Refused(_) => 4,
            Error::Conflict(_) => 5,
            Error::Timeout(_) => 6,
            Error::Tool(_) => 7,
            Error::Store(_) => 8,
            Error::Other(_) => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthands so call sites stay short: `bail_invalid!("...")`.
#[macro_export]
macro_rules! invalid {
    ($($t:tt)*) => { $crate::error::Error::InvalidInput(format!($($t)*)) };
}
#[macro_export]
macro_rules! refused {
    ($($t:tt)*) => { $crate::error::Error::Refused(format!($($t)*)) };
}
