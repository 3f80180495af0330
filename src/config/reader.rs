//! Reading a config tree key by key, collecting every problem.
//!
//! The merged file and environment are first read into a plain tree of
//! text, lists and tables ([`Raw`]): every scalar becomes text, since an
//! environment override is text whatever the key's type. A [`Section`] then
//! hands out its keys one at a time; each section's own file asks for the
//! keys it owns with a parser from `value.rs`. A bad value is recorded with
//! its full key and the default stands in, so reading goes on and one pass
//! reports every problem. Whatever a section was not asked for is reported
//! as an unknown key when the section is dropped; so a route key of another
//! kind is an unknown key without any table of who owns what.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ConfigIssue;

/// A config value as written, before its key's parser sees it.
#[derive(Debug, Clone)]
pub enum Raw {
    Text(String),
    List(Vec<Raw>),
    Table(BTreeMap<String, Raw>),
}

impl Raw {
    fn kind(&self) -> &'static str {
        match self {
            Raw::Text(_) => "a value",
            Raw::List(_) => "a list",
            Raw::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Text(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Text(String::new()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Text(String::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut table = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, Raw>()? {
            table.insert(k, v);
        }
        Ok(Raw::Table(table))
    }
}

/// Every problem found so far, each with its key.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn push(&mut self, key: String, problem: impl Into<String>) {
        self.0.push(ConfigIssue {
            key,
            problem: problem.into(),
        });
    }
}

/// One table of the config (`[limits]`, `routes[2]`), read key by key.
pub struct Section<'a> {
    issues: &'a mut Issues,
    /// `limits`, `routes[2]`; empty for the top level.
    prefix: String,
    /// The keys not asked for yet.
    keys: BTreeMap<String, Raw>,
    /// Said after "unknown key" for what is left (`for kind = "echo"`).
    unknown_hint: String,
}

impl<'a> Section<'a> {
    pub fn new(issues: &'a mut Issues, prefix: String, keys: BTreeMap<String, Raw>) -> Self {
        Section {
            issues,
            prefix,
            keys,
            unknown_hint: String::new(),
        }
    }

    /// The full key of `name` in this section: `limits.idle_timeout`.
    pub fn key(&self, name: &str) -> String {
        // A key TOML can only write quoted (`""`, `"a b"`) is shown quoted;
        // `routes[2]` names a table of a list.
        let bare = |c: char| c.is_ascii_alphanumeric() || "_-[]".contains(c);
        let name = match !name.is_empty() && name.chars().all(bare) {
            true => name.to_owned(),
            false => format!("{name:?}"),
        };
        if self.prefix.is_empty() {
            name
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This section's own key: `limits`, `routes[2]`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn issue(&mut self, name: &str, problem: impl Into<String>) {
        let key = self.key(name);
        self.issues.push(key, problem);
    }

    /// A file the key `name` points at must open now, not at first use.
    pub fn readable(&mut self, name: &str, path: &std::path::Path) {
        if let Err(e) = std::fs::File::open(path) {
            self.issue(name, format!("cannot open {}: {e}", path.display()));
        }
    }

    /// How many items the list `name` has (0 when absent or not a list).
    pub fn count(&self, name: &str) -> usize {
        match self.keys.get(name) {
            Some(Raw::List(items)) => items.len(),
            _ => 0,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    /// Forget the keys not asked for yet: they cannot be judged.
    pub fn skip_rest(&mut self) {
        self.keys.clear();
    }

    /// Explain what is left over at the end, after "unknown key".
    pub fn hint_unknown(&mut self, hint: String) {
        self.unknown_hint = hint;
    }

    /// The text of a scalar key, if present; a list or table is a problem.
    fn text(&mut self, name: &str) -> Option<String> {
        self.take(name, "a value", |raw| match raw {
            Raw::Text(s) => Ok(s),
            other => Err(other),
        })
    }

    /// Remove `name`, if present, as what `pick` takes; anything else is
    /// recorded as not being `expected`.
    fn take<T>(
        &mut self,
        name: &str,
        expected: &str,
        pick: fn(Raw) -> Result<T, Raw>,
    ) -> Option<T> {
        let raw = self.keys.remove(name)?;
        match pick(raw) {
            Ok(v) => Some(v),
            Err(other) => {
                let problem = format!("expected {expected}, got {}", other.kind());
                self.issue(name, problem);
                None
            }
        }
    }

    /// `name` parsed, if present and valid; a bad value is recorded.
    pub fn opt<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.text(name)?;
        match parse(s.trim()) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.issue(name, format!("{problem} (got {s:?})"));
                None
            }
        }
    }

    /// `name` parsed, or `default` when absent. A bad value is recorded and
    /// the default stands in, so reading can go on to the next key.
    pub fn get<T>(
        &mut self,
        name: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.keys.contains_key(name) {
            true => self.opt(name, parse).unwrap_or(default),
            false => default,
        }
    }

    /// A text key as written, if present.
    pub fn string(&mut self, name: &str) -> Option<String> {
        self.text(name)
    }

    /// A text key that must be present and not blank.
    pub fn required(&mut self, name: &str) -> Option<String> {
        match self.text(name) {
            Some(v) if !v.trim().is_empty() => Some(v),
            _ => {
                self.issue(name, "is required");
                None
            }
        }
    }

    /// A list of values, each parsed; a bad item is recorded as `name[i]`.
    pub fn list<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Vec<T> {
        let mut out = Vec::new();
        for (i, raw) in self.raw_list(name).into_iter().enumerate() {
            let item = format!("{name}[{i}]");
            match raw {
                Raw::Text(s) => match parse(s.trim()) {
                    Ok(v) => out.push(v),
                    Err(problem) => self.issue(&item, format!("{problem} (got {s:?})")),
                },
                other => {
                    let problem = format!("expected a value, got {}", other.kind());
                    self.issue(&item, problem);
                }
            }
        }
        out
    }

    /// Read each table of a list of tables (`[[routes]]`) as a section of
    /// its own (`routes[2]`).
    pub fn each_table(&mut self, name: &str, mut read: impl FnMut(Section<'_>)) {
        for (i, raw) in self.raw_list(name).into_iter().enumerate() {
            let item = format!("{name}[{i}]");
            match raw {
                Raw::Table(keys) => read(Section::new(self.issues, self.key(&item), keys)),
                other => {
                    let problem = format!("expected a table, got {}", other.kind());
                    self.issue(&item, problem);
                }
            }
        }
    }

    fn raw_list(&mut self, name: &str) -> Vec<Raw> {
        self.take(name, "a list", |raw| match raw {
            Raw::List(items) => Ok(items),
            other => Err(other),
        })
        .unwrap_or_default()
    }

    /// A sub-table (`[limits]` of the top level); absent: an empty one.
    pub fn section(&mut self, name: &str) -> Section<'_> {
        let prefix = self.key(name);
        let keys = self
            .take(name, "a table", |raw| match raw {
                Raw::Table(keys) => Ok(keys),
                other => Err(other),
            })
            .unwrap_or_default();
        Section::new(self.issues, prefix, keys)
    }
}

impl Drop for Section<'_> {
    /// What nobody asked for is an unknown key.
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.keys).into_keys() {
            let problem = format!("unknown key{}", self.unknown_hint);
            self.issue(&name, problem);
        }
    }
}
