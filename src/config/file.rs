//! The `--config PATH` TOML file: the node settings of the flags and `[pool.NAME]` tables.
//!
//! The file is parsed into a spanned tree (`toml::de::DeTable`) and walked by hand, so every
//! error, from the syntax to a bad `block`, names `PATH:LINE` and the dotted key, and the
//! value as written. Values are checked by the same code as the flags (in
//! [`super::Args::validate_with`]), which only sees them as text with the name to blame.
//!
//! ```toml
//! server-iface = "bat0"
//! client-iface = "br-client"
//! block = 5
//! options = ["6:4:10.0.0.53"]
//! [pool.clients]
//! network = "10.0.0.0/17"
//! spare = 4
//! ```

use std::io::Read;
use std::path::Path;

use super::pool::RawPool;
use super::{ConfigError, Raw};

/// Larger files are refused (a config is a few hundred bytes; this keeps `--config
/// /dev/zero` from eating the memory).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[cfg(feature = "config-file")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
}

#[cfg(feature = "config-file")]
impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::StrList => "an array of strings",
        }
    }
}

/// The node-level keys (the flag each stands for is in docs/operations.md).
#[cfg(feature = "config-file")]
const NODE_KEYS: &[(&str, Kind)] = &[
    ("server-iface", Kind::Str),
    ("client-iface", Kind::Str),
    ("location", Kind::Str),
    ("state-dir", Kind::Str),
    ("control", Kind::Str),
    ("control-group", Kind::Str),
    ("hook", Kind::Str),
    ("fsync", Kind::Str),
    ("commit-delay", Kind::Int),
    ("node-id", Kind::Str),
    ("log-file", Kind::Str),
    ("audit-log", Kind::Str),
    ("metrics", Kind::Str),
    ("api", Kind::Str),
    ("api-token", Kind::Str),
    ("replicas", Kind::Int),
    ("max-replica-lag", Kind::Int),
    ("replica-sync", Kind::Str),
    ("peer-key", Kind::StrList),
    ("peer-key-migrate", Kind::Bool),
    ("node-key", Kind::Bool),
    ("max-peer-blocks", Kind::Int),
    ("tentative-timeout", Kind::Int),
    ("block-timeout", Kind::Int),
    ("needless-timeout", Kind::Int),
    ("learning", Kind::Bool),
    ("block", Kind::Int),
    ("spare", Kind::Int),
    ("options", Kind::StrList),
];

/// The keys of a `[pool.NAME]` table.
#[cfg(feature = "config-file")]
const POOL_KEYS: &[(&str, Kind)] = &[
    ("network", Kind::Str),
    ("block", Kind::Int),
    ("use", Kind::Str),
    ("iface", Kind::Str),
    ("spare", Kind::Int),
    ("location", Kind::Str),
    ("options", Kind::StrList),
    ("standby", Kind::Int),
    ("min", Kind::Int),
    ("max-standby", Kind::Int),
    ("hysteresis", Kind::Int),
    ("cooldown", Kind::Int),
    ("test-target", Kind::Str),
    ("unmanaged", Kind::StrList),
];

#[cfg(feature = "config-file")]
fn key_names(keys: &[(&str, Kind)]) -> String {
    keys.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// A parsed `--config` file: values as written, each with `PATH:LINE KEY`; checked when
/// merged with the flags ([`super::Args::validate_with`]).
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    node: Vec<(&'static str, Raw)>,
    options: Vec<Raw>,
    peer_keys: Vec<Raw>,
    pools: Vec<RawPool>,
}

impl ConfigFile {
    /// Reads and parses `path`; errors name `--config`, the path and the OS error, or
    /// `PATH:LINE KEY`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let err = |why: String| ConfigError::new("--config", shown.clone(), why);
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(err(format!(
                "larger than {MAX_FILE_BYTES} bytes: not a config file"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = line_of(&String::from_utf8_lossy(e.as_bytes()), at);
            ConfigError::new(format!("{shown}:{line}"), "", "not UTF-8 text")
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses the text of a config file; `path` is only used to name places in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        #[cfg(feature = "config-file")]
        return toml_file::parse(path, text);
        #[cfg(not(feature = "config-file"))]
        {
            let _ = text;
            Err(ConfigError::new(
                "--config",
                path.to_string(),
                "this ddhcpd was built without the config-file feature (the router build); give the settings as flags",
            ))
        }
    }

    /// The names of the file's pools, in file order.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(|p| p.name.as_str())
    }

    pub(crate) fn node(&self, key: &str) -> Option<&Raw> {
        self.node.iter().find(|(k, _)| *k == key).map(|(_, r)| r)
    }

    pub(crate) fn options(&self) -> &[Raw] {
        &self.options
    }

    pub(crate) fn peer_keys(&self) -> &[Raw] {
        &self.peer_keys
    }

    pub(crate) fn pools(&self) -> &[RawPool] {
        &self.pools
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The parser proper; without the `config-file` feature (the router build) the toml crate is
/// not linked and `--config` is refused.
#[cfg(feature = "config-file")]
mod toml_file {
    use std::borrow::Cow;

    use toml::Spanned;
    use toml::de::{DeTable, DeValue};

    use super::super::pool::{RawPool, check_name};
    use super::super::{ConfigError, Raw};
    use super::{ConfigFile, Kind, NODE_KEYS, POOL_KEYS, key_names, line_of};

    /// [`ConfigFile::parse`] with the toml crate's spanned tree.
    pub(super) fn parse(path: &str, text: &str) -> Result<ConfigFile, ConfigError> {
        let cx = Cx { path, text };
        let doc = DeTable::parse(text).map_err(|e| {
            let (at, value) = match e.span() {
                Some(s) => {
                    let line = line_of(text, s.start);
                    let value = text.lines().nth(line - 1).unwrap_or_default();
                    (format!("{path}:{line}"), shorten(value.trim()))
                }
                None => (path.to_string(), String::new()),
            };
            ConfigError::new(at, value, e.message().to_string())
        })?;
        let mut file = ConfigFile::default();
        for (k, v) in in_file_order(doc.get_ref()) {
            let key = k.get_ref().as_ref();
            if key == "pool" {
                file.pools = cx.pools(v)?;
                continue;
            }
            let Some(&(name, kind)) = NODE_KEYS.iter().find(|(n, _)| *n == key) else {
                return Err(cx.err(
                    k.span().start,
                    &dotted(&[key]),
                    v,
                    format!(
                        "unknown key '{}' (keys: {}, pool)",
                        key.escape_debug(),
                        key_names(NODE_KEYS)
                    ),
                ));
            };
            if kind == Kind::StrList && name == "peer-key" {
                file.peer_keys = cx.list(name, v)?;
            } else if kind == Kind::StrList {
                file.options = cx.list(name, v)?;
            } else {
                file.node.push((name, cx.scalar(name, v, kind)?));
            }
        }
        Ok(file)
    }

    type Entry<'a, 'i> = (&'a Spanned<Cow<'i, str>>, &'a Spanned<DeValue<'i>>);

    /// A table's entries in the order they were written (the map itself is sorted by key).
    fn in_file_order<'a, 'i>(t: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
        let mut v: Vec<_> = t.iter().collect();
        v.sort_by_key(|(k, _)| k.span().start);
        v
    }

    /// At most 60 characters of `s`, so a long value keeps the line short.
    fn shorten(s: &str) -> String {
        match s.char_indices().nth(60) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s.to_string(),
        }
    }

    /// A key as TOML would write it: bare if it can be, else quoted.
    fn key_part(k: &str) -> Cow<'_, str> {
        if !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Cow::Borrowed(k)
        } else {
            Cow::Owned(format!("\"{}\"", k.escape_debug()))
        }
    }

    fn dotted(parts: &[&str]) -> String {
        parts
            .iter()
            .map(|p| key_part(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The file being walked.
    struct Cx<'a> {
        path: &'a str,
        text: &'a str,
    }

    impl Cx<'_> {
        /// `PATH:LINE KEY` for the value or key starting at byte `at`.
        fn at(&self, at: usize, key: &str) -> Cow<'static, str> {
            Cow::Owned(format!("{}:{} {key}", self.path, line_of(self.text, at)))
        }

        /// The value: a string's text, anything else as written (its first line, shortened).
        fn source(&self, v: &Spanned<DeValue<'_>>) -> String {
            if let DeValue::String(s) = v.get_ref() {
                return shorten(s);
            }
            let s = self.text.get(v.span()).unwrap_or_default();
            shorten(s.lines().next().unwrap_or_default().trim())
        }

        fn err(
            &self,
            at: usize,
            key: &str,
            v: &Spanned<DeValue<'_>>,
            why: impl Into<String>,
        ) -> ConfigError {
            ConfigError::new(self.at(at, key), self.source(v), why)
        }

        fn wrong_type(&self, key: &str, v: &Spanned<DeValue<'_>>, kind: Kind) -> ConfigError {
            self.err(
                v.span().start,
                key,
                v,
                format!(
                    "expected {}, found {}",
                    kind.what(),
                    article(v.get_ref().type_str())
                ),
            )
        }

        fn scalar(
            &self,
            key: &str,
            v: &Spanned<DeValue<'_>>,
            kind: Kind,
        ) -> Result<Raw, ConfigError> {
            let text = match (v.get_ref(), kind) {
                (DeValue::String(s), Kind::Str) => s.to_string(),
                (DeValue::Integer(i), Kind::Int) => i128::from_str_radix(i.as_str(), i.radix())
                    .map_or_else(|_| i.as_str().to_string(), |n| n.to_string()),
                (DeValue::Boolean(b), Kind::Bool) => b.to_string(),
                _ => return Err(self.wrong_type(key, v, kind)),
            };
            Ok(Raw {
                text,
                at: self.at(v.span().start, key),
            })
        }

        fn list(&self, key: &str, v: &Spanned<DeValue<'_>>) -> Result<Vec<Raw>, ConfigError> {
            let DeValue::Array(items) = v.get_ref() else {
                return Err(self.wrong_type(key, v, Kind::StrList));
            };
            items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(_) => self.scalar(key, item, Kind::Str),
                    _ => Err(self.wrong_type(key, item, Kind::StrList)),
                })
                .collect()
        }

        /// The `pool` key: a table of `[pool.NAME]` tables.
        fn pools(&self, v: &Spanned<DeValue<'_>>) -> Result<Vec<RawPool>, ConfigError> {
            let DeValue::Table(t) = v.get_ref() else {
                return Err(self.err(v.span().start, "pool", v, "expected tables [pool.NAME]"));
            };
            let mut pools = Vec::new();
            for (k, pv) in in_file_order(t) {
                let name = k.get_ref().as_ref();
                let key = dotted(&["pool", name]);
                let line = line_of(self.text, k.span().start);
                check_name(&format!("{}:{line} {key}", self.path), name)?;
                let DeValue::Table(pt) = pv.get_ref() else {
                    return Err(self.err(
                        pv.span().start,
                        &key,
                        pv,
                        format!("expected a table [pool.{name}]"),
                    ));
                };
                let mut pool = RawPool::new(
                    name,
                    Cow::Owned(format!("{}:{line} {key}", self.path)),
                    Cow::Owned(format!("{}:{line}", self.path)),
                    None,
                );
                for (pk, val) in in_file_order(pt) {
                    let pk_s = pk.get_ref().as_ref();
                    let full = dotted(&["pool", name, pk_s]);
                    let Some(&(_, kind)) = POOL_KEYS.iter().find(|(n, _)| *n == pk_s) else {
                        return Err(self.err(
                            pk.span().start,
                            &full,
                            val,
                            format!(
                                "unknown key '{}' in [pool.{name}] (keys: {})",
                                pk_s.escape_debug(),
                                key_names(POOL_KEYS)
                            ),
                        ));
                    };
                    if kind == Kind::StrList && pk_s == "unmanaged" {
                        pool.unmanaged = self.list(&full, val)?;
                    } else if kind == Kind::StrList {
                        pool.options = self.list(&full, val)?;
                    } else {
                        let raw = self.scalar(&full, val, kind)?;
                        pool.set(pk_s, raw)
                            .map_err(|why| self.err(pk.span().start, &full, val, why))?;
                    }
                }
                pools.push(pool);
            }
            Ok(pools)
        }
    }

    fn article(type_str: &str) -> String {
        match type_str.chars().next() {
            Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
            _ => format!("a {type_str}"),
        }
    }
}
