//! One tagged extent as the user describes it: the `--tagged-memory` option of
//! docs/interface.md and the JSON objects of `vm.add-tagged-memory`, with the rules both obey.

use crate::error::ConfigError;
use crate::grammar::{format_size, human_size, parse_decimal, parse_size, parse_switch, split_option};
use crate::EXTENT_ALIGN;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use uuid::Uuid;

/// The command-line option this module parses.
pub const OPTION: &str = "--tagged-memory";
/// The `path=` word that asks for an anonymous sparse memfd.
pub const MEMFD: &str = "memfd";
/// Prefix of generated extent ids; user ids may not start with `_`.
pub const GENERATED_ID_PREFIX: &str = "_tagmem";
/// The option's syntax, for help texts (every VMM shows this one). `path=` is optional: without
/// it a tagged extent is the host dax device that carries the tag (found in sysfs, as on a DCD
/// host), and untagged capacity is a sparse memfd (then `size=` is required).
pub const SYNTAX: &str = "tag=<uuid>,path=<file|/dev/daxX.Y|memfd>,size=<bytes>,offset=<bytes>,\
shared=on|off,readonly=on|off,read_latency=<ns>,write_latency=<ns>,read_bandwidth=<MB/s>,\
write_bandwidth=<MB/s>,node=<guest_numa_node>,id=<name>";
/// Every key `--tagged-memory` accepts, in the order docs/interface.md lists them.
pub const KEYS: [&str; 12] = [
    "tag",
    "path",
    "size",
    "offset",
    "shared",
    "readonly",
    "read_latency",
    "write_latency",
    "read_bandwidth",
    "write_bandwidth",
    "node",
    "id",
];

/// One tagged extent as the user describes it: the option `--tagged-memory` and the JSON objects
/// of `PUT /api/v1/vm.add-tagged-memory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaggedMemoryConfig {
    /// The tag; `None` (or the nil UUID) for untagged capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<Uuid>,
    /// Backing: a file, a devdax device `/dev/daxX.Y`, or [`MEMFD`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Bytes; the rest of the backing after `offset` when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Byte offset into the backing.
    pub offset: u64,
    /// Sharable capacity.
    pub shared: bool,
    /// Read-only for the guest.
    pub readonly: bool,
    /// Read latency, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_latency: Option<u32>,
    /// Write latency, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_latency: Option<u32>,
    /// Read bandwidth, MB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bandwidth: Option<u32>,
    /// Write bandwidth, MB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bandwidth: Option<u32>,
    /// Guest NUMA node / proximity domain.
    pub node: u16,
    /// Name of the extent in API answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl TaggedMemoryConfig {
    /// Parses and validates one option value (`tag=...,path=...,size=...`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut c = TaggedMemoryConfig::default();
        for (key, value) in split_option(s, &KEYS)? {
            match key {
                "tag" => {
                    let tag = Uuid::parse_str(value).map_err(|_| ConfigError::BadUuid {
                        value: value.to_string(),
                    })?;
                    c.tag = Some(tag);
                }
                "path" => c.path = Some(PathBuf::from(value)),
                "size" => c.size = Some(parse_size(key, value)?),
                "offset" => c.offset = parse_size(key, value)?,
                "shared" => c.shared = parse_switch(key, value)?,
                "readonly" => c.readonly = parse_switch(key, value)?,
                "read_latency" => c.read_latency = Some(parse_decimal(key, value)?),
                "write_latency" => c.write_latency = Some(parse_decimal(key, value)?),
                "read_bandwidth" => c.read_bandwidth = Some(parse_decimal(key, value)?),
                "write_bandwidth" => c.write_bandwidth = Some(parse_decimal(key, value)?),
                "node" => c.node = parse_decimal(key, value)?,
                "id" => c.id = Some(value.to_string()),
                _ => unreachable!("split_option returns only known keys"),
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// The tag, nil for untagged capacity.
    pub fn tag(&self) -> Uuid {
        self.tag.unwrap_or_else(Uuid::nil)
    }

    /// True if the backing is an anonymous memfd (`path=memfd`, or no path on untagged capacity).
    pub fn is_memfd(&self) -> bool {
        match &self.path {
            Some(p) => p.as_os_str() == MEMFD,
            None => self.tag().is_nil(),
        }
    }

    /// Checks the rules both the option and the JSON form obey; the backing is not touched.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.size {
            Some(0) => return Err(ConfigError::ZeroSize),
            Some(size) if size % EXTENT_ALIGN != 0 => {
                return Err(ConfigError::NotMultiple {
                    key: "size",
                    value: format_size(size),
                    align: human_size(EXTENT_ALIGN),
                })
            }
            _ => {}
        }
        if self.offset % EXTENT_ALIGN != 0 {
            return Err(ConfigError::NotMultiple {
                key: "offset",
                value: format_size(self.offset),
                align: human_size(EXTENT_ALIGN),
            });
        }
        if let Some(size) = self.size {
            if self.offset.checked_add(size).is_none() {
                return Err(ConfigError::RangeOverflow {
                    offset: format_size(self.offset),
                    size: format_size(size),
                });
            }
        }
        if self.shared && self.tag().is_nil() {
            return Err(ConfigError::SharedUntagged);
        }
        if let Some(path) = &self.path {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::EmptyValue { key: "path" });
            }
        }
        if self.size.is_none() && self.is_memfd() {
            return Err(ConfigError::NoSize {
                backing: if self.path.is_some() {
                    "path=memfd"
                } else {
                    "untagged capacity without path="
                },
            });
        }
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        Ok(())
    }

    /// The option string that parses back to this configuration.
    pub fn to_option_string(&self) -> String {
        let mut items = Vec::new();
        if let Some(tag) = self.tag {
            items.push(format!("tag={tag}"));
        }
        if let Some(path) = &self.path {
            items.push(format!("path={}", path.display()));
        }
        if let Some(size) = self.size {
            items.push(format!("size={}", format_size(size)));
        }
        if self.offset != 0 {
            items.push(format!("offset={}", format_size(self.offset)));
        }
        if self.shared {
            items.push("shared=on".to_string());
        }
        if self.readonly {
            items.push("readonly=on".to_string());
        }
        let perf = [
            ("read_latency", self.read_latency),
            ("write_latency", self.write_latency),
            ("read_bandwidth", self.read_bandwidth),
            ("write_bandwidth", self.write_bandwidth),
        ];
        for (key, value) in perf {
            if let Some(v) = value {
                items.push(format!("{key}={v}"));
            }
        }
        if self.node != 0 {
            items.push(format!("node={}", self.node));
        }
        if let Some(id) = &self.id {
            items.push(format!("id={id}"));
        }
        items.join(",")
    }
}

impl std::str::FromStr for TaggedMemoryConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaggedMemoryConfig::parse(s)
    }
}

impl fmt::Display for TaggedMemoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_option_string())
    }
}

fn check_id(id: &str) -> Result<(), ConfigError> {
    let bad = |reason| ConfigError::BadId {
        value: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(ConfigError::EmptyValue { key: "id" });
    }
    if id.len() > 64 {
        return Err(bad("longer than 64 bytes"));
    }
    if id.starts_with('_') {
        return Err(bad("ids starting with '_' are reserved for generated ones"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'=') {
        return Err(bad("only printable ASCII without spaces, ',' or '=' is allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn every_key_parses() {
        let c = parse(&format!(
            "tag={TAG},path=/tmp/x,size=4M,offset=2M,shared=on,readonly=on,read_latency=250,\
             write_latency=300,read_bandwidth=20000,write_bandwidth=10000,node=3,id=tm0"
        ));
        assert_eq!(
            c,
            TaggedMemoryConfig {
                tag: Some(TAG.parse().unwrap()),
                path: Some("/tmp/x".into()),
                size: Some(4 * MIB),
                offset: 2 * MIB,
                shared: true,
                readonly: true,
                read_latency: Some(250),
                write_latency: Some(300),
                read_bandwidth: Some(20000),
                write_bandwidth: Some(10000),
                node: 3,
                id: Some("tm0".into()),
            }
        );
        assert_eq!(TaggedMemoryConfig::parse(&c.to_option_string()).unwrap(), c);
    }

    #[test]
    fn defaults() {
        let c = parse("size=2M");
        assert_eq!(c.tag(), Uuid::nil());
        assert!(c.is_memfd() && !c.shared && !c.readonly);
        assert_eq!((c.offset, c.node, c.read_latency), (0, 0, None));
        assert_eq!(c.to_option_string(), "size=2M");
    }

    #[test]
    fn errors_name_option_key_and_value() {
        assert_eq!(
            err("size=3M"),
            "--tagged-memory: size=3M: not a multiple of 2 MiB"
        );
        assert_eq!(err("size=0"), "--tagged-memory: size=0: must be at least 2 MiB");
        assert_eq!(
            err("size=2M,offset=1M"),
            "--tagged-memory: offset=1M: not a multiple of 2 MiB"
        );
        assert_eq!(
            err("size=2M,colour=red"),
            "--tagged-memory: colour: unknown key; expected one of tag, path, size, offset, shared, \
             readonly, read_latency, write_latency, read_bandwidth, write_bandwidth, node, id"
        );
        assert_eq!(
            err("size=2M,size=4M"),
            "--tagged-memory: size: given more than once"
        );
        assert_eq!(err("size=2M,node="), "--tagged-memory: node=: empty value");
        assert_eq!(
            err("size=2M,shared"),
            "--tagged-memory: \"shared\": expected key=value"
        );
        assert_eq!(
            err(""),
            "--tagged-memory: empty value; expected key=value pairs such as size=2M"
        );
        assert_eq!(err("size=2M,"), "--tagged-memory: \"\": expected key=value");
        assert!(err("tag=nope,size=2M").starts_with("--tagged-memory: tag=nope: not a UUID"));
        assert_eq!(
            err("size=2M,shared=yes"),
            "--tagged-memory: shared=yes: expected on or off"
        );
        assert_eq!(
            err("size=2M,readonly=1"),
            "--tagged-memory: readonly=1: expected on or off"
        );
        assert_eq!(
            err("size=2M,node=65536"),
            "--tagged-memory: node=65536: expected a decimal number from 0 to 65535"
        );
        assert_eq!(
            err("size=2M,read_latency=-1"),
            "--tagged-memory: read_latency=-1: expected a decimal number from 0 to 4294967295"
        );
        assert_eq!(
            err("size=2M,write_bandwidth=4294967296"),
            "--tagged-memory: write_bandwidth=4294967296: expected a decimal number from 0 to 4294967295"
        );
        assert_eq!(
            err("size=2M,read_bandwidth=1K"),
            "--tagged-memory: read_bandwidth=1K: expected a decimal number from 0 to 4294967295"
        );
        assert_eq!(
            err("size=2M,shared=on"),
            "--tagged-memory: shared=on: sharable capacity needs a tag=<uuid>"
        );
        assert_eq!(
            err("tag=00000000-0000-0000-0000-000000000000,size=2M,shared=on"),
            "--tagged-memory: shared=on: sharable capacity needs a tag=<uuid>"
        );
        assert_eq!(
            err("size=16777215T,offset=2T"),
            "--tagged-memory: offset=2T,size=16777215T: the range ends past 2^64"
        );
        assert_eq!(
            err("size=20000000T"),
            "--tagged-memory: size=20000000T: too large (at most 2^64-1 bytes)"
        );
        assert_eq!(
            err("path=memfd"),
            "--tagged-memory: size= is required with path=memfd"
        );
        assert_eq!(
            err("node=1"),
            "--tagged-memory: size= is required with untagged capacity without path="
        );
        assert!(err("size=2M,id=_tagmem0").contains("id=_tagmem0: ids starting with '_' are reserved"));
    }

    #[test]
    fn json_form_denies_unknown_fields_and_validates() {
        let c: TaggedMemoryConfig = serde_json::from_str(&format!(
            r#"{{"tag":"{TAG}","path":"memfd","size":4194304,"id":"a"}}"#
        ))
        .unwrap();
        assert_eq!(c, parse(&format!("tag={TAG},path=memfd,size=4M,id=a")));
        let e = serde_json::from_str::<TaggedMemoryConfig>(r#"{"size":2097152,"colour":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let c: TaggedMemoryConfig = serde_json::from_str(r#"{"size":3145728}"#).unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "size=3M: not a multiple of 2 MiB"
        );
        let c: TaggedMemoryConfig = serde_json::from_str(r#"{"size":2097152,"path":""}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().to_string(), "path=: empty value");
        let json = serde_json::to_string(&parse("size=2M")).unwrap();
        assert_eq!(
            json,
            r#"{"size":2097152,"offset":0,"shared":false,"readonly":false,"node":0}"#
        );
    }
}
