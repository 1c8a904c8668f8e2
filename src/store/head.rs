//! The head of a NodeState without its volumes: what `status` needs (pvestatd
//! asks every 10 s on every node). Since the shards (store/state.rs) the head file
//! holds no volumes; a format-1 state written before them has its `volumes` map
//! (~420 bytes per replica) after `format`, `node`, `updated` and `storages`, and
//! reading stops as soon as the head is complete, so `status` costs the same at 10 and
//! at 10,000 volumes either way (docs/BENCHMARKS.md). A document in another field
//! order is still read correctly, only to its end.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::BufReader;
use std::path::Path;

use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};

use crate::backend::Space;
use super::state::STATE_FORMAT as FORMAT;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateHead {
    pub format: u32,
    pub updated: u64,
    pub storages: BTreeMap<String, Space>,
}

/// `None` if the file does not exist. A newer format is refused, as `read_doc` does.
pub fn read_state_head(path: &Path) -> Result<Option<StateHead>> {
    let f = match crate::fsio::open_settled(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::Store(format!("cannot read {}: {e}", path.display()))),
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(16 * 1024, f));
    let out = RefCell::new(None);
    // Stopping inside the map makes serde_json report the unread rest as an error
    // once the visitor returns: what the visitor stored is the answer then.
    let r = (&mut de).deserialize_map(HeadVisitor { out: &out });
    let head = match (out.into_inner(), r) {
        (Some(h), _) => h,
        (None, Err(e)) => return Err(Error::Store(format!("{} is not a valid drbdpool document: {e}", path.display()))),
        (None, Ok(())) => unreachable!("the visitor stores a head whenever it succeeds"),
    };
    if head.format > FORMAT {
        return Err(Error::Store(format!(
            "{} has format {} but this drbdpool understands up to {FORMAT}: it was written by a newer drbdpool; upgrade this node",
            path.display(),
            head.format
        )));
    }
    Ok(Some(head))
}

struct HeadVisitor<'a> {
    out: &'a RefCell<Option<StateHead>>,
}

impl<'de> Visitor<'de> for HeadVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a drbdpool node state (JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        let (mut format, mut updated, mut storages) = (None, None, None);
        while let Some(k) = m.next_key::<String>()? {
            match k.as_str() {
                "format" => {
                    let f: u32 = m.next_value()?;
                    format = Some(f);
                    if f > FORMAT {
                        // Not ours to read further: the caller refuses it.
                        *self.out.borrow_mut() = Some(StateHead { format: f, updated: 0, storages: BTreeMap::new() });
                        return Ok(());
                    }
                }
                "updated" => updated = Some(m.next_value::<u64>()?),
                "storages" => storages = Some(m.next_value::<BTreeMap<String, Space>>()?),
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            if let (Some(f), Some(u), Some(_)) = (format, updated, storages.as_ref()) {
                *self.out.borrow_mut() = Some(StateHead { format: f, updated: u, storages: storages.take().unwrap_or_default() });
                return Ok(());
            }
        }
        // The whole map was read (no format, or an unusual field order): NodeState's defaults.
        let updated = updated.ok_or_else(|| A::Error::missing_field("updated"))?;
        *self.out.borrow_mut() = Some(StateHead { format: format.unwrap_or(1), updated, storages: storages.unwrap_or_default() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::docs::{NodeState, VolumeObserved};

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn head_of_a_real_state_matches_the_full_read() {
        let d = tempfile::tempdir().unwrap();
        let mut st = NodeState { format: FORMAT, node: "n1".into(), updated: 42, storages: BTreeMap::new(), volumes: BTreeMap::new() };
        st.storages.insert("dp".into(), Space { total: 10, avail: 7, used: 3 });
        for i in 0..500 {
            st.volumes.insert(format!("dp.vm-{i}-disk-0"), VolumeObserved { role: "Secondary".into(), disk: "UpToDate".into(), ..Default::default() });
        }
        let p = d.path().join("n1.json");
        crate::store::write_doc(&p, &st).unwrap();
        let h = read_state_head(&p).unwrap().unwrap();
        assert_eq!((h.format, h.updated, h.storages), (FORMAT, 42, st.storages.clone()));
    }

    #[test]
    fn other_field_orders_missing_files_and_bad_documents() {
        let d = tempfile::tempdir().unwrap();
        // volumes first, no format: read to the end, defaults applied
        let p = write(d.path(), "a.json", r#"{"volumes":{"r":{"x":[1,2]}},"node":"a","storages":{"dp":{"total":1,"avail":1,"used":0}},"updated":7}"#);
        let h = read_state_head(&p).unwrap().unwrap();
        assert_eq!((h.format, h.updated, h.storages.len()), (1, 7, 1));
        // no storages at all: empty
        let p = write(d.path(), "b.json", r#"{"format":1,"node":"b","updated":9,"volumes":{}}"#);
        assert!(read_state_head(&p).unwrap().unwrap().storages.is_empty());
        assert!(read_state_head(&d.path().join("missing.json")).unwrap().is_none());
        // newer format: refused with the upgrade hint, even if the rest would not parse
        let p = write(d.path(), "c.json", r#"{"format":99,"updated":"later","storages":[]}"#);
        let e = read_state_head(&p).unwrap_err().to_string();
        assert!(e.contains("newer drbdpool"), "{e}");
        // garbage and a missing `updated` are store errors naming the file
        let p = write(d.path(), "d.json", "not json");
        let e = read_state_head(&p).unwrap_err();
        assert!(e.to_string().contains("d.json") && e.kind() == "store", "{e}");
        let p = write(d.path(), "e.json", r#"{"format":1,"storages":{}}"#);
        assert!(read_state_head(&p).unwrap_err().to_string().contains("updated"));
        // a broken volumes map after a complete head does not matter to status
        let p = write(d.path(), "f.json", r#"{"format":1,"node":"f","updated":3,"storages":{},"volumes":{"#);
        assert_eq!(read_state_head(&p).unwrap().unwrap().updated, 3);
    }
}
