//! `SimBackend`: the file backend without the loop device, for machines where a node of
//! many volumes cannot have a loop device for each (benchmarks: `drbdpool-bench agent-rss`).
//! The sparse image `<dir>/<name>.img` itself is the backing device, which the simulated
//! DRBD (drbd/sim.rs) takes as any file. It reads zeroes where nothing was written (thin),
//! reports a fixed space and has no snapshots.

use std::path::PathBuf;

use super::{Backend, Backing, Space};
use crate::error::{Error, Result};

pub struct SimBackend {
    dir: PathBuf,
}

impl SimBackend {
    /// Images go to `dir`, which must exist.
    pub fn new(dir: impl Into<PathBuf>) -> SimBackend {
        SimBackend { dir: dir.into() }
    }

    fn img(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }
}

impl Backend for SimBackend {
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing> {
        let p = self.img(name);
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| Error::Tool(e.to_string()))?;
        let len = f.metadata().map_err(|e| Error::Tool(e.to_string()))?.len();
        if len < size_kib * 1024 {
            f.set_len(size_kib * 1024).map_err(|e| Error::Tool(e.to_string()))?;
        }
        Ok(Backing { path: p.to_string_lossy().into_owned(), size_kib: len.max(size_kib * 1024) / 1024 })
    }
    fn remove(&self, name: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.img(name));
        Ok(())
    }
    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing> {
        self.create(name, size_kib)
    }
    fn lookup(&self, name: &str) -> Result<Option<Backing>> {
        let p = self.img(name);
        Ok(std::fs::metadata(&p).ok().map(|m| Backing { path: p.to_string_lossy().into_owned(), size_kib: m.len() / 1024 }))
    }
    fn space(&self) -> Result<Space> {
        Ok(Space { total: 4 << 40, avail: 3 << 40, used: 1 << 40 })
    }
    fn thin(&self) -> bool {
        true
    }
    fn snapshot(&self, name: &str, _: &str) -> Result<()> {
        Err(Error::Refused(format!("{name}: no snapshots in the simulated backend")))
    }
    fn remove_snapshot(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    fn rollback(&self, name: &str, _: &str) -> Result<()> {
        Err(Error::Refused(format!("{name}: no snapshots in the simulated backend")))
    }
    fn can_snapshot(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_sparse_grow_only_and_removable() {
        let d = tempfile::tempdir().unwrap();
        let b = SimBackend::new(d.path());
        assert_eq!(b.lookup("dp.vm-1-disk-0").unwrap(), None);
        let made = b.create("dp.vm-1-disk-0", 4096).unwrap();
        assert_eq!((made.path.as_str(), made.size_kib), (d.path().join("dp.vm-1-disk-0.img").to_str().unwrap(), 4096));
        assert_eq!(b.resize("dp.vm-1-disk-0", 8192).unwrap().size_kib, 8192);
        assert_eq!(b.resize("dp.vm-1-disk-0", 1024).unwrap().size_kib, 8192);
        assert_eq!(b.lookup("dp.vm-1-disk-0").unwrap(), Some(Backing { path: made.path.clone(), size_kib: 8192 }));
        b.remove("dp.vm-1-disk-0").unwrap();
        b.remove("dp.vm-1-disk-0").unwrap();
        assert_eq!(b.lookup("dp.vm-1-disk-0").unwrap(), None);
        assert!(b.thin() && !b.can_snapshot());
    }
}
