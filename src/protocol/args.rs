//! Typed access to a request's `args`, tolerant of how Perl encodes values
//! (numbers as strings, booleans as 0/1/"1"/""), strict about everything else.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::invalid;

pub struct Args<'a>(&'a Map<String, Value>);

impl<'a> Args<'a> {
    pub fn new(m: &'a Map<String, Value>) -> Self {
        Args(m)
    }

    pub fn raw(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(invalid!("argument '{k}' must be a string, got {v}")),
        }
    }

    pub fn str(&self, k: &str) -> Result<&'a str> {
        self.opt_str(k)?.ok_or_else(|| invalid!("argument '{k}' is missing"))
    }

    pub fn opt_u64(&self, k: &str) -> Result<Option<u64>> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| invalid!("argument '{k}' must be a whole non-negative number, got {n}")),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map(Some).map_err(|_| invalid!("argument '{k}' is too big: {s}"))
            }
            Some(v) => Err(invalid!("argument '{k}' must be a number, got {v}")),
        }
    }

    pub fn vmid(&self, k: &str) -> Result<u32> {
        let v = self.opt_u64(k)?.ok_or_else(|| invalid!("argument '{k}' is missing"))?;
        crate::naming::check_vmid(v)
    }

    pub fn opt_vmid(&self, k: &str) -> Result<Option<u32>> {
        self.opt_u64(k)?.map(crate::naming::check_vmid).transpose()
    }

    /// Perl truth: absent/null/false/0/""/"0" are false.
    pub fn flag(&self, k: &str) -> Result<bool> {
        Ok(match self.raw(k) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => !(s.is_empty() || s == "0"),
            Some(v) => return Err(invalid!("argument '{k}' must be a boolean, got {v}")),
        })
    }

    pub fn str_list(&self, k: &str) -> Result<Option<Vec<&'a str>>> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().ok_or_else(|| invalid!("argument '{k}' must be a list of strings, got {v}")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(invalid!("argument '{k}' must be a list, got {v}")),
        }
    }
}
