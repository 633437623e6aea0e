//! The user's description of tagged capacity: the `--tagged-memory` option of docs/interface.md,
//! its JSON form, validation, grouping into offer chains and resolution to host backings.
//!
//! One [`TaggedMemoryConfig`] is one extent. [`TaggedMemoryConfig::parse`] reads the option string
//! (`key=value,...`), [`TaggedMemoryConfig::validate`] checks what both the option and the JSON
//! form must satisfy, [`group_chains`] turns a list into offer chains (one per tag, in the order
//! given), and [`Resolver`] finds each extent's host backing, HMAT defaults and source class.

use crate::backing::{is_host_os_error, Backing, BackingError, DEVDAX_ALIGN};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tagmem_device::{ExtentFlags, ExtentSpec, Perf, SourceClass, SourceId, SourceRef};
use tagmem_lookup::{lookup, DaxDevice, LookupError, Mode, SysfsSource};
use uuid::Uuid;

/// The command-line option this module parses.
pub const OPTION: &str = "--tagged-memory";
/// Granularity of extent sizes and offsets (the device block size).
pub const EXTENT_ALIGN: u64 = 2 << 20;
/// The `path=` word that asks for an anonymous sparse memfd.
pub const MEMFD: &str = "memfd";
/// Prefix of generated extent ids; user ids may not start with `_`.
pub const GENERATED_ID_PREFIX: &str = "_tagmem";
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

/// What is wrong with one extent's description; the message names the key and value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Nothing was given.
    #[error("empty value; expected key=value pairs such as size=2M")]
    Empty,
    /// An item has no `=`.
    #[error("{item:?}: expected key=value")]
    NotKeyValue {
        /// The item as given.
        item: String,
    },
    /// A key the option does not know.
    #[error("{key}: unknown key; expected one of {expected}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// The keys accepted, comma-separated.
        expected: String,
    },
    /// A key given twice.
    #[error("{key}: given more than once")]
    DuplicateKey {
        /// The key.
        key: &'static str,
    },
    /// `key=` with nothing after it.
    #[error("{key}=: empty value")]
    EmptyValue {
        /// The key.
        key: &'static str,
    },
    /// A size that is not digits with an optional suffix.
    #[error("{key}={value}: expected bytes as digits with an optional K, M, G or T suffix")]
    BadSize {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
    },
    /// A size that does not fit in 64 bits.
    #[error("{key}={value}: too large (at most 2^64-1 bytes)")]
    SizeOverflow {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
    },
    /// A number that is not plain decimal digits or out of range.
    #[error("{key}={value}: expected a decimal number from 0 to {max}")]
    BadNumber {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// The largest value accepted.
        max: u64,
    },
    /// A tag that is not a UUID.
    #[error("tag={value}: not a UUID (expected e.g. 6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee)")]
    BadUuid {
        /// The value as given.
        value: String,
    },
    /// A switch that is neither `on` nor `off`.
    #[error("{key}={value}: expected on or off")]
    BadSwitch {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
    },
    /// `size=0`.
    #[error("size=0: must be at least 2 MiB")]
    ZeroSize,
    /// A size or offset that is not a multiple of the extent granularity.
    #[error("{key}={value}: not a multiple of {align}")]
    NotMultiple {
        /// `size` or `offset`.
        key: &'static str,
        /// The value, formatted as a size.
        value: String,
        /// The granularity, formatted (`2 MiB`, or a devdax device's alignment).
        align: String,
    },
    /// `offset + size` does not fit in 64 bits.
    #[error("offset={offset},size={size}: the range ends past 2^64")]
    RangeOverflow {
        /// The offset, formatted.
        offset: String,
        /// The size, formatted.
        size: String,
    },
    /// `shared=on` on untagged capacity.
    #[error("shared=on: sharable capacity needs a tag=<uuid>")]
    SharedUntagged,
    /// An id that cannot be used.
    #[error("id={value}: {reason}")]
    BadId {
        /// The id as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No size and nothing to take it from.
    #[error("size= is required with {backing}")]
    NoSize {
        /// What the backing is (`path=memfd`, or untagged capacity without `path=`).
        backing: &'static str,
    },
    /// A tag that no host dax device carries.
    #[error("tag={tag}: no dax device under {root} carries this tag; give path= to choose a backing")]
    TagNotFound {
        /// The tag.
        tag: Uuid,
        /// The sysfs tree searched.
        root: String,
    },
    /// A tag the host holds unclaimed: no dax device exists for it yet (CXL DCD).
    #[error("tag={tag}: unclaimed in {region} on the host; claim it first: {claim}")]
    TagUnclaimed {
        /// The tag.
        tag: Uuid,
        /// The dax region holding it.
        region: String,
        /// The command that claims it.
        claim: String,
    },
    /// A tag that several host dax devices carry.
    #[error("tag={tag}: carried by several dax devices ({devices}); give path= to choose one")]
    TagAmbiguous {
        /// The tag.
        tag: Uuid,
        /// The devices, comma-separated.
        devices: String,
    },
    /// Reading the host's dax devices failed.
    #[error("{what}: {source}")]
    Lookup {
        /// Which key needed the lookup and for what.
        what: String,
        /// The lookup error.
        #[source]
        source: LookupError,
    },
    /// The path is neither a regular file nor a devdax device.
    #[error("path={path}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The devdax device is not usable as devdax.
    #[error("path={path}: {chardev} is {state}; reconfigure it with `daxctl reconfigure-device -m devdax`")]
    DevDaxUnusable {
        /// The path.
        path: String,
        /// The device name.
        chardev: String,
        /// Its mode or state.
        state: String,
    },
    /// The devdax device carries a different tag.
    #[error("tag={tag}: path={path} carries tag {found}")]
    TagMismatch {
        /// The tag given.
        tag: Uuid,
        /// The path.
        path: String,
        /// The tag the device carries.
        found: Uuid,
    },
    /// The range runs past the end of the backing.
    #[error("offset={offset},size={size}: runs past the end of path={path} ({backing_size})")]
    PastEnd {
        /// The offset, formatted.
        offset: String,
        /// The size, formatted.
        size: String,
        /// The path.
        path: String,
        /// The backing's size, formatted.
        backing_size: String,
    },
    /// Opening or creating the backing failed.
    #[error("path={path}: {source}")]
    Backing {
        /// The path (or `memfd`).
        path: String,
        /// The backing error.
        #[source]
        source: BackingError,
    },
    /// Options of one tag disagree on `shared=`.
    #[error("tag={tag}: shared= differs between extents of the same tag")]
    MixedSharing {
        /// The tag.
        tag: Uuid,
    },
    /// Two extents with the same id.
    #[error("id={id}: used by more than one extent")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A key the option needs is missing.
    #[error("{key}= is required")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A socket mode that is not octal or not allowed.
    #[error("mode={value}: {reason}")]
    BadMode {
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A tag group too large for 16-bit sequence numbers.
    #[error("tag={tag}: more than 65536 extents in one group")]
    GroupTooLarge {
        /// The tag.
        tag: Uuid,
    },
}

impl ConfigError {
    /// Whether the host failed (out of descriptors or memory, an I/O error) rather than the
    /// value given: a control API answers such failures 5xx with the OS error, the rest 4xx.
    pub fn is_host_failure(&self) -> bool {
        match self {
            ConfigError::Backing { source, .. } => source.is_host_failure(),
            ConfigError::Lookup {
                source: LookupError::Read { source, .. },
                ..
            } => is_host_os_error(source),
            _ => false,
        }
    }
}

/// A [`ConfigError`] attributed to the option (or API field) it came from.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {error}")]
pub struct OptionError {
    /// The option, e.g. `--tagged-memory`, or the API field, e.g. `extents[2]`.
    pub option: String,
    /// What is wrong.
    pub error: ConfigError,
}

impl OptionError {
    /// Attributes `error` to `option`.
    pub fn new(option: impl Into<String>, error: ConfigError) -> Self {
        OptionError {
            option: option.into(),
            error,
        }
    }
}

impl OptionError {
    /// The message with the causes of the error appended (e.g. the OS error of a host failure).
    pub fn with_causes(&self) -> String {
        format!("{}: {}", self.option, error_chain(&self.error))
    }
}

/// `e` and its causes, as `e: cause: cause` (a cause already at the end of the text is skipped).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Formats a byte count the way the option accepts it: with the largest exact suffix.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A byte count for people: `2 MiB`, `1.5 GiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if bytes >> shift != 0 {
            let whole = bytes >> shift;
            let tenths = ((bytes & ((1u64 << shift) - 1)) * 10) >> shift;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// Parses a size: decimal digits with an optional `K`, `M`, `G` or `T` suffix (powers of 1024).
pub fn parse_size(key: &'static str, value: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize {
        key,
        value: value.to_string(),
    };
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K') => (&value[..value.len() - 1], 10),
        Some(b'M') => (&value[..value.len() - 1], 20),
        Some(b'G') => (&value[..value.len() - 1], 30),
        Some(b'T') => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let overflow = || ConfigError::SizeOverflow {
        key,
        value: value.to_string(),
    };
    let n: u64 = digits.parse().map_err(|_| overflow())?;
    n.checked_mul(1u64 << shift).ok_or_else(overflow)
}

/// Parses plain decimal digits into an unsigned integer type.
fn parse_decimal<T>(key: &'static str, value: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Into<u64> + Bounded,
{
    let bad = || ConfigError::BadNumber {
        key,
        value: value.to_string(),
        max: T::MAX_U64,
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Integer types with a known maximum, for error messages.
trait Bounded {
    const MAX_U64: u64;
}

impl Bounded for u16 {
    const MAX_U64: u64 = u16::MAX as u64;
}

impl Bounded for u32 {
    const MAX_U64: u64 = u32::MAX as u64;
}

fn parse_switch(key: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ConfigError::BadSwitch {
            key,
            value: value.to_string(),
        }),
    }
}

/// Splits a CH-style option string into `(key, value)` pairs, refusing unknown, repeated and empty
/// keys. `keys` lists what is accepted; the returned keys are those static strings.
pub fn split_option<'a>(
    s: &'a str,
    keys: &[&'static str],
) -> Result<Vec<(&'static str, &'a str)>, ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::Empty);
    }
    let mut out: Vec<(&'static str, &'a str)> = Vec::new();
    for item in s.split(',') {
        let (key, value) = item.split_once('=').ok_or_else(|| ConfigError::NotKeyValue {
            item: item.to_string(),
        })?;
        let key = keys
            .iter()
            .copied()
            .find(|k| *k == key)
            .ok_or_else(|| ConfigError::UnknownKey {
                key: key.to_string(),
                expected: keys.join(", "),
            })?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::DuplicateKey { key });
        }
        if value.is_empty() {
            return Err(ConfigError::EmptyValue { key });
        }
        out.push((key, value));
    }
    Ok(out)
}

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

/// Groups extents into offer chains: every extent of one tag forms one chain, in the order given;
/// each untagged extent is a chain of its own. Chains come in the order of their first extent.
/// Fails if extents of one tag disagree on `shared=` or two extents share an id.
pub fn group_chains(configs: &[TaggedMemoryConfig]) -> Result<Vec<Vec<usize>>, OptionError> {
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        if let Some(id) = &c.id {
            if configs[..i].iter().any(|o| o.id.as_ref() == Some(id)) {
                return Err(OptionError::new(
                    OPTION,
                    ConfigError::DuplicateId { id: id.clone() },
                ));
            }
        }
        let tag = c.tag();
        let group = (!tag.is_nil())
            .then(|| chains.iter_mut().find(|ch| configs[ch[0]].tag() == tag))
            .flatten();
        match group {
            Some(chain) => {
                if configs[chain[0]].shared != c.shared {
                    return Err(OptionError::new(OPTION, ConfigError::MixedSharing { tag }));
                }
                if chain.len() > usize::from(u16::MAX) {
                    return Err(OptionError::new(OPTION, ConfigError::GroupTooLarge { tag }));
                }
                chain.push(i);
            }
            None => chains.push(vec![i]),
        }
    }
    Ok(chains)
}

/// Parses every `--tagged-memory` value and groups them into chains (see [`group_chains`]).
pub fn parse_options<S: AsRef<str>>(
    values: &[S],
) -> Result<(Vec<TaggedMemoryConfig>, Vec<Vec<usize>>), OptionError> {
    let configs = values
        .iter()
        .map(|v| TaggedMemoryConfig::parse(v.as_ref()).map_err(|e| OptionError::new(OPTION, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let chains = group_chains(&configs)?;
    Ok((configs, chains))
}

/// Where an extent's bytes will come from, decided before anything is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingPlan {
    /// A new sparse memfd of `offset + length` bytes.
    Memfd,
    /// A regular (or hugetlbfs) file.
    File(PathBuf),
    /// A devdax character device, with what sysfs says about it.
    DevDax {
        /// The device node.
        path: PathBuf,
        /// The device as sysfs describes it.
        device: Box<DaxDevice>,
    },
}

/// One extent with everything decided: backing, range, metadata, class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentPlan {
    /// The user's id, if any.
    pub id: Option<String>,
    /// The backing.
    pub backing: BackingPlan,
    /// Byte offset into the backing.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// Tag (nil for untagged).
    pub tag: Uuid,
    /// Flags.
    pub flags: ExtentFlags,
    /// Performance metadata (user values, else the host's HMAT values, else zero).
    pub perf: Perf,
    /// Guest NUMA node.
    pub node: u16,
    /// Sequence number in a sharable group.
    pub seq: u16,
    /// Class of the host capacity.
    pub class: SourceClass,
}

impl ExtentPlan {
    /// A short description of the backing for tables and logs.
    pub fn backing_name(&self) -> String {
        match &self.backing {
            BackingPlan::Memfd => MEMFD.to_string(),
            BackingPlan::File(p) | BackingPlan::DevDax { path: p, .. } => p.display().to_string(),
        }
    }

    /// Opens or creates the backing. A memfd is named after `name` and sized `offset + length`.
    pub fn open(&self, name: &str) -> Result<Backing, ConfigError> {
        let wrap = |path: String| move |source| ConfigError::Backing { path, source };
        let backing = match &self.backing {
            BackingPlan::Memfd => {
                let size =
                    self.offset
                        .checked_add(self.length)
                        .ok_or_else(|| ConfigError::RangeOverflow {
                            offset: format_size(self.offset),
                            size: format_size(self.length),
                        })?;
                Backing::memfd(name, size).map_err(wrap(MEMFD.to_string()))?
            }
            BackingPlan::File(p) => {
                Backing::file(p, !self.flags.readonly).map_err(wrap(p.display().to_string()))?
            }
            BackingPlan::DevDax { path, .. } => {
                Backing::devdax(path).map_err(wrap(path.display().to_string()))?
            }
        };
        check_range(
            self.offset,
            Some(self.length),
            backing.size(),
            &self.backing_name(),
        )?;
        Ok(backing)
    }

    /// The device's extent description, once the backing is registered as `source`.
    pub fn spec(&self, source: SourceId) -> ExtentSpec {
        ExtentSpec {
            tag: self.tag,
            length: self.length,
            source: SourceRef {
                id: source,
                offset: self.offset,
            },
            gpa: None,
            flags: self.flags,
            perf: self.perf,
            node: self.node,
            seq: self.seq,
            class: self.class,
        }
    }
}

/// Checks `offset + size` against a backing of `backing_size` bytes; returns the length (the
/// rest of the backing when `size` is `None`).
fn check_range(offset: u64, size: Option<u64>, backing_size: u64, path: &str) -> Result<u64, ConfigError> {
    let past_end = |size: String| ConfigError::PastEnd {
        offset: format_size(offset),
        size,
        path: path.to_string(),
        backing_size: human_size(backing_size),
    };
    match size {
        Some(size) => match offset.checked_add(size) {
            Some(end) if end <= backing_size => Ok(size),
            _ => Err(past_end(format_size(size))),
        },
        None => match backing_size.checked_sub(offset) {
            Some(rest) if rest > 0 => Ok(rest),
            _ => Err(past_end("(rest)".to_string())),
        },
    }
}

/// Decides each extent's backing, size, HMAT defaults and source class, reading the host's dax
/// devices below a configurable sysfs root.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    sysfs: SysfsSource,
}

impl Resolver {
    /// A resolver reading sysfs (and `dev/`) below `root`; `/` for the running host.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Resolver {
            sysfs: SysfsSource::new(root),
        }
    }

    /// The sysfs root.
    pub fn root(&self) -> &Path {
        self.sysfs.root()
    }

    /// Plans every extent of `configs`, grouped as `chains` (from [`group_chains`]); sequence
    /// numbers of sharable groups follow the order within each chain. Errors name the option.
    pub fn plan_chains(
        &self,
        configs: &[TaggedMemoryConfig],
        chains: &[Vec<usize>],
        option: &str,
    ) -> Result<Vec<Vec<ExtentPlan>>, OptionError> {
        chains
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .enumerate()
                    .map(|(pos, &i)| {
                        let c = &configs[i];
                        let seq = if c.shared {
                            u16::try_from(pos)
                                .map_err(|_| ConfigError::GroupTooLarge { tag: c.tag() })
                                .map_err(|e| OptionError::new(option, e))?
                        } else {
                            0
                        };
                        self.plan(c, seq).map_err(|e| OptionError::new(option, e))
                    })
                    .collect()
            })
            .collect()
    }

    /// Plans one extent; `seq` is its sequence number in a sharable group.
    pub fn plan(&self, c: &TaggedMemoryConfig, seq: u16) -> Result<ExtentPlan, ConfigError> {
        c.validate()?;
        let tag = c.tag();
        let (backing, length, host_perf, class) = if c.is_memfd() {
            let length = c.size.ok_or(ConfigError::NoSize {
                backing: "path=memfd",
            })?;
            (BackingPlan::Memfd, length, None, SourceClass::File)
        } else {
            let (path, device) = match &c.path {
                Some(p) => (p.clone(), None),
                None => {
                    let dev = self.device_for_tag(tag)?;
                    (self.sysfs.root().join("dev").join(&dev.chardev), Some(dev))
                }
            };
            let device = match device {
                Some(d) => Some(d),
                None => self.devdax_at(&path)?,
            };
            match device {
                Some(dev) => self.plan_devdax(c, path, dev)?,
                None => {
                    let shown = path.display().to_string();
                    let meta = fs::metadata(&path).map_err(|e| ConfigError::BadPath {
                        path: shown.clone(),
                        reason: e.to_string(),
                    })?;
                    if !meta.file_type().is_file() {
                        return Err(ConfigError::BadPath {
                            path: shown,
                            reason: "neither a regular file nor a devdax device".to_string(),
                        });
                    }
                    let length = check_range(c.offset, c.size, meta.len(), &shown)?;
                    if length % EXTENT_ALIGN != 0 {
                        return Err(ConfigError::NotMultiple {
                            key: "size",
                            value: format!("{} (the rest of {shown})", format_size(length)),
                            align: human_size(EXTENT_ALIGN),
                        });
                    }
                    (BackingPlan::File(path), length, None, SourceClass::File)
                }
            }
        };
        let pick = |given: Option<u32>, host: fn(&tagmem_lookup::Perf) -> u32| {
            given.or_else(|| host_perf.as_ref().map(host)).unwrap_or(0)
        };
        Ok(ExtentPlan {
            id: c.id.clone(),
            backing,
            offset: c.offset,
            length,
            tag,
            flags: ExtentFlags {
                sharable: c.shared,
                readonly: c.readonly,
            },
            perf: Perf {
                read_latency_ns: pick(c.read_latency, |p| p.read_latency_ns),
                write_latency_ns: pick(c.write_latency, |p| p.write_latency_ns),
                read_bandwidth_mbps: pick(c.read_bandwidth, |p| p.read_bandwidth_mbps),
                write_bandwidth_mbps: pick(c.write_bandwidth, |p| p.write_bandwidth_mbps),
            },
            node: c.node,
            seq,
            class,
        })
    }

    /// The one host dax device carrying `tag`.
    fn device_for_tag(&self, tag: Uuid) -> Result<DaxDevice, ConfigError> {
        let found = lookup(&self.sysfs, &tag).map_err(|source| ConfigError::Lookup {
            what: format!("tag={tag}: looking it up on the host"),
            source,
        })?;
        if let (true, Some(u)) = (found.devices.is_empty(), found.unclaimed.first()) {
            return Err(ConfigError::TagUnclaimed {
                tag,
                region: u.region.clone(),
                claim: u.claim_command(),
            });
        }
        let mut found = found.devices.into_iter();
        match (found.next(), found.next()) {
            (Some(dev), None) => Ok(dev),
            (None, _) => Err(ConfigError::TagNotFound {
                tag,
                root: self
                    .sysfs
                    .root()
                    .join("sys/bus/dax/devices")
                    .display()
                    .to_string(),
            }),
            (Some(a), Some(b)) => {
                let mut names = vec![a.chardev, b.chardev];
                names.extend(found.map(|d| d.chardev));
                Err(ConfigError::TagAmbiguous {
                    tag,
                    devices: names.join(", "),
                })
            }
        }
    }

    /// The dax device behind `path` if it is a devdax character device, read from sysfs.
    fn devdax_at(&self, path: &Path) -> Result<Option<DaxDevice>, ConfigError> {
        let Ok(meta) = fs::metadata(path) else {
            return Ok(None);
        };
        if !meta.file_type().is_char_device() {
            return Ok(None);
        }
        let rdev = meta.rdev();
        let link = self.sysfs.root().join(format!(
            "sys/dev/char/{}:{}",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        let chardev = fs::canonicalize(&link)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("dax"))
            .ok_or_else(|| ConfigError::BadPath {
                path: path.display().to_string(),
                reason: format!(
                    "a character device but not a dax device ({} is no dax device)",
                    link.display()
                ),
            })?;
        self.sysfs
            .read_device(&chardev)
            .map(Some)
            .map_err(|source| ConfigError::Lookup {
                what: format!("path={}: reading {chardev} from sysfs", path.display()),
                source,
            })
    }

    fn plan_devdax(
        &self,
        c: &TaggedMemoryConfig,
        path: PathBuf,
        dev: DaxDevice,
    ) -> Result<(BackingPlan, u64, Option<tagmem_lookup::Perf>, SourceClass), ConfigError> {
        let shown = path.display().to_string();
        if dev.mode != Mode::Devdax || !dev.enabled {
            let state = if dev.enabled {
                format!("in {} mode", dev.mode)
            } else {
                "disabled".to_string()
            };
            return Err(ConfigError::DevDaxUnusable {
                path: shown,
                chardev: dev.chardev,
                state,
            });
        }
        if let Some(tag) = c.tag.filter(|t| !t.is_nil()) {
            if dev.is_tagged() && dev.uuid != tag {
                return Err(ConfigError::TagMismatch {
                    tag,
                    path: shown,
                    found: dev.uuid,
                });
            }
        }
        let align = dev.align.max(DEVDAX_ALIGN);
        for (key, value) in [("offset", Some(c.offset)), ("size", c.size)] {
            if let Some(v) = value.filter(|v| v % align != 0) {
                return Err(ConfigError::NotMultiple {
                    key,
                    value: format_size(v),
                    align: format!("{} (the alignment of {})", human_size(align), dev.chardev),
                });
            }
        }
        let length = check_range(c.offset, c.size, dev.size, &shown)?;
        let class = self.devdax_class(&dev);
        let perf = dev.perf;
        Ok((
            BackingPlan::DevDax {
                path,
                device: Box::new(dev),
            },
            length,
            perf,
            class,
        ))
    }

    /// CXL Dynamic Capacity when sysfs lists its extents; soft-reserved or pmem when the device
    /// sits below an `hmem` platform device or an nvdimm bus; unspecified otherwise.
    fn devdax_class(&self, dev: &DaxDevice) -> SourceClass {
        if dev.source_class == Some(tagmem_lookup::SourceClass::CxlDc) {
            return SourceClass::CxlDc;
        }
        let link = self.sysfs.root().join("sys/bus/dax/devices").join(&dev.chardev);
        let real = fs::canonicalize(link).unwrap_or_default();
        let parts: Vec<String> = real
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.iter().any(|p| p.starts_with("hmem")) {
            SourceClass::SoftReserved
        } else if parts.iter().any(|p| p.starts_with("ndbus")) {
            SourceClass::Pmem
        } else {
            SourceClass::Unspecified
        }
    }
}

/// `--memory size=<bytes>[,hotplug_size=<bytes>][,hotplugged_size=<bytes>]`: boot RAM and the
/// base virtio-mem region, with Cloud Hypervisor's key names (its `hotplug_method=virtio-mem`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of boot RAM; `None` keeps the guest's default.
    pub size: Option<u64>,
    /// Size of the base virtio-mem region (0: none).
    pub hotplug_size: u64,
    /// Bytes of the region requested (plugged by the guest's driver) from boot on.
    pub hotplugged_size: u64,
}

/// Granularity of `hotplug_size` and `hotplugged_size`: one Linux memory block.
pub const HOTPLUG_ALIGN: u64 = 128 << 20;

/// Errors of `--memory` beyond the key grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hotplugged_size={hotplugged}: more than hotplug_size={hotplug}")]
pub struct HotpluggedTooLarge {
    /// `hotplugged_size`, formatted.
    pub hotplugged: String,
    /// `hotplug_size`, formatted.
    pub hotplug: String,
}

impl MemoryConfig {
    /// Parses `size=..,hotplug_size=..,hotplugged_size=..` (every key optional, at least one).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut c = MemoryConfig::default();
        for (key, value) in split_option(s, &["size", "hotplug_size", "hotplugged_size"])? {
            let v = parse_size(key, value)?;
            let align = if key == "size" {
                EXTENT_ALIGN
            } else {
                HOTPLUG_ALIGN
            };
            if (key == "size" && v == 0) || v % align != 0 {
                return Err(ConfigError::NotMultiple {
                    key,
                    value: format_size(v),
                    align: human_size(align),
                });
            }
            match key {
                "size" => c.size = Some(v),
                "hotplug_size" => c.hotplug_size = v,
                _ => c.hotplugged_size = v,
            }
        }
        Ok(c)
    }

    /// Checks `hotplugged_size <= hotplug_size`.
    pub fn validate(&self) -> Result<(), HotpluggedTooLarge> {
        if self.hotplugged_size > self.hotplug_size {
            return Err(HotpluggedTooLarge {
                hotplugged: format_size(self.hotplugged_size),
                hotplug: format_size(self.hotplug_size),
            });
        }
        Ok(())
    }
}

/// `--serial tty|file=<path>|null|off`: where a Linux guest's serial console goes (Cloud
/// Hypervisor's values; `off` and `null` both discard it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOption {
    /// Standard output, and standard input typed into the guest.
    Tty,
    /// A file.
    File(PathBuf),
    /// Discarded.
    Null,
}

impl SerialOption {
    /// Parses the option value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "tty" => return Ok(SerialOption::Tty),
            "null" | "off" => return Ok(SerialOption::Null),
            _ => {}
        }
        let items = split_option(s, &["file"])?;
        match items.into_iter().find(|(k, _)| *k == "file") {
            Some((_, v)) => Ok(SerialOption::File(PathBuf::from(v))),
            None => Err(ConfigError::Empty),
        }
    }
}

/// Socket modes `--api-socket mode=` accepts: owner only, or owner and group.
pub const API_SOCKET_MODES: [u32; 2] = [0o600, 0o660];

/// `--api-socket path=<file>,mode=<0600|0660>`: where the HTTP API listens, and who may reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSocketConfig {
    /// The Unix socket path.
    pub path: PathBuf,
    /// Permission bits of the socket file: `0o600` (the default) or `0o660`.
    pub mode: u32,
}

impl ApiSocketConfig {
    /// Parses `path=<file>[,mode=<octal>]`; a bare path without `=` is accepted too, as Cloud
    /// Hypervisor does. `mode` is `0600` (owner only, the default) or `0660` (owner and group):
    /// whoever can connect can make the VMM open and map files, so other users never can.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut config = ApiSocketConfig {
            path: PathBuf::new(),
            mode: API_SOCKET_MODES[0],
        };
        if !s.contains('=') && !s.is_empty() {
            config.path = s.into();
            return Ok(config);
        }
        let mut path = None;
        for (key, value) in split_option(s, &["path", "mode"])? {
            match key {
                "path" => path = Some(PathBuf::from(value)),
                _ => config.mode = parse_socket_mode(value)?,
            }
        }
        config.path = path.ok_or(ConfigError::MissingKey { key: "path" })?;
        Ok(config)
    }
}

/// Parses an `--api-socket mode=` value: octal digits, one of [`API_SOCKET_MODES`].
fn parse_socket_mode(value: &str) -> Result<u32, ConfigError> {
    let bad = |reason| ConfigError::BadMode {
        value: value.to_string(),
        reason,
    };
    let digits = value.strip_prefix("0o").unwrap_or(value);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad("expected octal permission bits such as 0600"));
    }
    let mode =
        u32::from_str_radix(digits, 8).map_err(|_| bad("expected octal permission bits such as 0600"))?;
    if API_SOCKET_MODES.contains(&mode) {
        Ok(mode)
    } else if mode & 0o007 != 0 {
        Err(bad(
            "other users may never reach the API; use 0600 (owner) or 0660 (owner and group)",
        ))
    } else {
        Err(bad("use 0600 (owner) or 0660 (owner and group)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
    const MIB: u64 = 1 << 20;

    fn parse(s: &str) -> TaggedMemoryConfig {
        TaggedMemoryConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match TaggedMemoryConfig::parse(s) {
            Ok(c) => panic!("{s} parsed as {c:?}"),
            Err(e) => OptionError::new(OPTION, e).to_string(),
        }
    }

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
    fn size_suffixes_are_powers_of_1024() {
        assert_eq!(parse_size("size", "2097152").unwrap(), 2 * MIB);
        assert_eq!(parse_size("size", "2048K").unwrap(), 2 * MIB);
        assert_eq!(parse_size("size", "2M").unwrap(), 2 * MIB);
        assert_eq!(parse_size("size", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("size", "1T").unwrap(), 1 << 40);
        for bad in [
            "", "M", "2m", "2MB", "0x200000", "-2M", "+2M", " 2M", "2.5G", "2 M",
        ] {
            assert!(
                matches!(parse_size("size", bad), Err(ConfigError::BadSize { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_size("size", "16777216T"),
            Err(ConfigError::SizeOverflow { .. })
        ));
        assert!(matches!(
            parse_size("size", "99999999999999999999"),
            Err(ConfigError::SizeOverflow { .. })
        ));
        assert_eq!(parse_size("size", "16777215T").unwrap(), 16777215 << 40);
    }

    #[test]
    fn size_formatting() {
        assert_eq!(format_size(3 * MIB), "3M");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(0), "0");
        assert_eq!(human_size(2 * MIB), "2 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(512), "512 B");
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

    #[test]
    fn same_tag_forms_one_chain_in_order() {
        let other = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let opts = [
            format!("tag={TAG},path=memfd,size=2M,shared=on,id=a"),
            "size=2M".to_string(),
            format!("tag={other},path=memfd,size=2M"),
            format!("tag={TAG},path=memfd,size=4M,shared=on,id=b"),
            "size=4M".to_string(),
        ];
        let (configs, chains) = parse_options(&opts).unwrap();
        assert_eq!(configs.len(), 5);
        assert_eq!(chains, vec![vec![0, 3], vec![1], vec![2], vec![4]]);
        let plans = Resolver::new("/nonexistent")
            .plan_chains(&configs, &chains, OPTION)
            .unwrap();
        let seqs: Vec<Vec<u16>> = plans.iter().map(|c| c.iter().map(|p| p.seq).collect()).collect();
        assert_eq!(seqs, vec![vec![0, 1], vec![0], vec![0], vec![0]]);
        assert_eq!(plans[0][1].id.as_deref(), Some("b"));
    }

    #[test]
    fn grouping_errors() {
        let mixed = [
            format!("tag={TAG},path=memfd,size=2M,shared=on"),
            format!("tag={TAG},path=memfd,size=2M"),
        ];
        assert_eq!(
            parse_options(&mixed).unwrap_err().to_string(),
            format!("--tagged-memory: tag={TAG}: shared= differs between extents of the same tag")
        );
        let dup = ["size=2M,id=x", "size=2M,id=x"];
        assert_eq!(
            parse_options(&dup).unwrap_err().to_string(),
            "--tagged-memory: id=x: used by more than one extent"
        );
        let bad = ["size=2M", "size=1M"];
        assert_eq!(
            parse_options(&bad).unwrap_err().to_string(),
            "--tagged-memory: size=1M: not a multiple of 2 MiB"
        );
    }

    #[test]
    fn memfd_plan_has_file_class_and_user_perf() {
        let c = parse(&format!(
            "tag={TAG},path=memfd,size=4M,offset=2M,readonly=on,read_latency=250,node=1"
        ));
        let p = Resolver::new("/nonexistent").plan(&c, 0).unwrap();
        assert_eq!(p.backing, BackingPlan::Memfd);
        assert_eq!((p.offset, p.length, p.node), (2 * MIB, 4 * MIB, 1));
        assert_eq!(p.class, SourceClass::File);
        assert!(p.flags.readonly && !p.flags.sharable);
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: 250,
                ..Perf::default()
            }
        );
        let b = p.open("tagmem-test").unwrap();
        assert_eq!(b.size(), 6 * MIB);
        let spec = p.spec(SourceId(9));
        assert_eq!(
            (spec.source.id, spec.source.offset, spec.length),
            (SourceId(9), 2 * MIB, 4 * MIB)
        );
    }

    #[test]
    fn file_plan_takes_size_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backing");
        fs::File::create(&path).unwrap().set_len(8 * MIB).unwrap();
        let r = Resolver::new("/nonexistent");
        let c = parse(&format!("path={},offset=2M", path.display()));
        let p = r.plan(&c, 0).unwrap();
        assert_eq!(p.backing, BackingPlan::File(path.clone()));
        assert_eq!((p.length, p.class), (6 * MIB, SourceClass::File));
        assert_eq!(p.open("x").unwrap().size(), 8 * MIB);

        let c = parse(&format!("path={},offset=4M,size=6M", path.display()));
        let e = r.plan(&c, 0).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "offset=4M,size=6M: runs past the end of path={} (8 MiB)",
                path.display()
            )
        );
        let c = parse(&format!("path={},offset=8M", path.display()));
        assert!(r
            .plan(&c, 0)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));

        let odd = dir.path().join("odd");
        fs::File::create(&odd).unwrap().set_len(3 * MIB).unwrap();
        let e = r
            .plan(&parse(&format!("path={}", odd.display())), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of 2 MiB"), "{e}");

        let e = r
            .plan(&parse("path=/nonexistent/file,size=2M"), 0)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("path=/nonexistent/file: No such file"), "{e}");
        let e = r
            .plan(&parse(&format!("path={},size=2M", dir.path().display())), 0)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("neither a regular file nor a devdax device"), "{e}");
        let e = r
            .plan(&parse("path=/dev/null,size=2M"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("path=/dev/null: a character device but not a dax device"),
            "{e}"
        );
    }

    /// A sysfs tree with one tagged devdax device `dax0.0` on node 1 (with HMAT values), below
    /// an `hmem` platform device, and an untagged `dax1.0` bound to kmem.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("{v}\n")).unwrap();
        };
        let devs = [
            ("dax0.0", "devices/platform/hmem.0/dax0.0", TAG, "1", "device_dax"),
            (
                "dax1.0",
                "devices/platform/ACPI0012:00/ndbus0/region1/dax1.0",
                "00000000-0000-0000-0000-000000000000",
                "0",
                "kmem",
            ),
        ];
        fs::create_dir_all(root.join("sys/bus/dax/devices")).unwrap();
        for (name, real, uuid, node, driver) in devs {
            let base = format!("sys/{real}");
            w(&format!("{base}/size"), &(64 * MIB).to_string());
            w(&format!("{base}/uuid"), uuid);
            w(&format!("{base}/target_node"), node);
            w(&format!("{base}/numa_node"), "0");
            w(&format!("{base}/align"), &(2 * MIB).to_string());
            w(&format!("{base}/mapping0/start"), "0x100000000");
            w(
                &format!("{base}/mapping0/end"),
                &format!("{:#x}", 0x1_0000_0000u64 + 64 * MIB - 1),
            );
            w(&format!("{base}/mapping0/page_offset"), "0");
            let drv = root.join(format!("sys/bus/dax/drivers/{driver}"));
            fs::create_dir_all(&drv).unwrap();
            symlink(&drv, root.join(format!("{base}/driver"))).unwrap();
            symlink(root.join(&base), root.join(format!("sys/bus/dax/devices/{name}"))).unwrap();
        }
        // HMAT of node 1: CPUs (access1) and a faster non-CPU initiator (access0).
        for (class, values) in [
            ("1", ["250", "300", "20000", "10000"]),
            ("0", ["90", "95", "60000", "50000"]),
        ] {
            let keys = [
                "read_latency",
                "write_latency",
                "read_bandwidth",
                "write_bandwidth",
            ];
            for (k, v) in keys.iter().zip(values) {
                w(
                    &format!("sys/devices/system/node/node1/access{class}/initiators/{k}"),
                    v,
                );
            }
        }
        dir
    }

    #[test]
    fn tag_alone_resolves_to_the_host_device_with_hmat_defaults() {
        let t = fixture();
        let r = Resolver::new(t.path());
        let p = r
            .plan(&parse(&format!("tag={TAG},offset=2M,write_latency=999")), 0)
            .unwrap();
        match &p.backing {
            BackingPlan::DevDax { path, device } => {
                assert_eq!(path, &t.path().join("dev/dax0.0"));
                assert_eq!(device.chardev, "dax0.0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.length, 62 * MIB);
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: 250,
                write_latency_ns: 999,
                read_bandwidth_mbps: 20000,
                write_bandwidth_mbps: 10000,
            }
        );
        assert_eq!(p.class, SourceClass::SoftReserved);

        let e = r
            .plan(&parse(&format!("tag={TAG},size=128M")), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("offset=0,size=128M: runs past the end of path="),
            "{e}"
        );
        let absent = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let e = r
            .plan(&parse(&format!("tag={absent}")), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "tag={absent}: no dax device under {} carries this tag; give path= to choose a backing",
                t.path().join("sys/bus/dax/devices").display()
            )
        );
        let e = Resolver::new("/nonexistent")
            .plan(&parse(&format!("tag={absent}")), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("tag={absent}: looking it up on the host: ")),
            "{e}"
        );
    }

    #[test]
    fn dcd_host_defaults_are_cpu_access_and_an_unclaimed_tag_names_the_claim() {
        use tagmem_lookup::fixture::{dcd_host, dcd_host_unclaimed, REGION2_CPU_PERF, TAG_A};
        // Target node 2 is devdax-only (no HMAT attributes): the CXL region's `access1` gives
        // the extent's performance, not its `access0`.
        let host = dcd_host();
        let p = Resolver::new(host.root())
            .plan(&parse(&format!("tag={TAG_A}")), 0)
            .unwrap();
        let ((rl, wl), (rb, wb)) = REGION2_CPU_PERF;
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: rl,
                write_latency_ns: wl,
                read_bandwidth_mbps: rb,
                write_bandwidth_mbps: wb,
            }
        );
        assert_eq!((p.length, p.class), (6 * MIB, SourceClass::CxlDc));
        let host = dcd_host_unclaimed();
        let e = Resolver::new(host.root())
            .plan(&parse(&format!("tag={TAG_A}")), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "tag={TAG_A}: unclaimed in region2 on the host; claim it first: \
                 daxctl create-device -r region2 --uuid {TAG_A}"
            )
        );
    }

    #[test]
    fn devdax_rules() {
        let t = fixture();
        let r = Resolver::new(t.path());
        let mut dev = r.sysfs.read_device("dax1.0").unwrap();
        let c = parse("path=/dev/dax1.0");
        let e = r
            .plan_devdax(&c, "/dev/dax1.0".into(), dev.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("path=/dev/dax1.0: dax1.0 is in system-ram mode"),
            "{e}"
        );
        dev.mode = Mode::Devdax;
        let (_, len, perf, class) = r.plan_devdax(&c, "/dev/dax1.0".into(), dev.clone()).unwrap();
        assert_eq!((len, perf, class), (64 * MIB, None, SourceClass::Pmem));
        dev.align = 1 << 30;
        let e = r.plan_devdax(
            &parse("path=/dev/dax1.0,size=2M"),
            "/dev/dax1.0".into(),
            dev.clone(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "size=2M: not a multiple of 1 GiB (the alignment of dax1.0)"
        );
        let tagged = r.sysfs.read_device("dax0.0").unwrap();
        let other = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let c = parse(&format!("tag={other},path=/dev/dax0.0"));
        let e = r
            .plan_devdax(&c, "/dev/dax0.0".into(), tagged)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("tag={other}: path=/dev/dax0.0 carries tag {TAG}"));
    }

    #[test]
    fn memory_and_api_socket_options() {
        assert_eq!(MemoryConfig::parse("size=128M").unwrap().size, Some(128 * MIB));
        assert_eq!(
            MemoryConfig::parse("size=1M").unwrap_err().to_string(),
            "size=1M: not a multiple of 2 MiB"
        );
        let m = MemoryConfig::parse("size=512M,hotplug_size=1G,hotplugged_size=256M").unwrap();
        assert_eq!(
            m,
            MemoryConfig {
                size: Some(512 * MIB),
                hotplug_size: 1024 * MIB,
                hotplugged_size: 256 * MIB
            }
        );
        m.validate().unwrap();
        assert_eq!(
            MemoryConfig::parse("hotplug_size=100M").unwrap_err().to_string(),
            "hotplug_size=100M: not a multiple of 128 MiB"
        );
        assert_eq!(
            MemoryConfig::parse("hotplug_size=128M,hotplugged_size=256M")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string(),
            "hotplugged_size=256M: more than hotplug_size=128M"
        );
        assert_eq!(SerialOption::parse("tty").unwrap(), SerialOption::Tty);
        assert_eq!(SerialOption::parse("off").unwrap(), SerialOption::Null);
        assert_eq!(
            SerialOption::parse("file=/tmp/console.log").unwrap(),
            SerialOption::File("/tmp/console.log".into())
        );
        assert!(SerialOption::parse("socket=/x")
            .unwrap_err()
            .to_string()
            .starts_with("socket: unknown key"));
        assert!(MemoryConfig::parse("sizes=1M")
            .unwrap_err()
            .to_string()
            .starts_with("sizes: unknown key"));
        assert_eq!(
            ApiSocketConfig::parse("path=/tmp/a.sock").unwrap().path,
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            ApiSocketConfig::parse("/tmp/b.sock").unwrap().path,
            PathBuf::from("/tmp/b.sock")
        );
        assert!(ApiSocketConfig::parse("fd=3").is_err());
        assert!(ApiSocketConfig::parse("path=").is_err());
    }

    #[test]
    fn c13_api_socket_mode_is_owner_only_unless_group_is_asked_for() {
        let parse = |s: &str| ApiSocketConfig::parse(s).map_err(|e| e.to_string());
        assert_eq!(parse("/tmp/a.sock").unwrap().mode, 0o600);
        assert_eq!(parse("path=/tmp/a.sock").unwrap().mode, 0o600);
        for m in ["0660", "660", "0o660"] {
            let c = parse(&format!("path=/tmp/a.sock,mode={m}")).unwrap();
            assert_eq!((c.path, c.mode), (PathBuf::from("/tmp/a.sock"), 0o660), "{m}");
        }
        assert_eq!(parse("mode=0600,path=/s").unwrap().mode, 0o600);
        assert_eq!(
            parse("path=/s,mode=0666").unwrap_err(),
            "mode=0666: other users may never reach the API; use 0600 (owner) or 0660 (owner and group)"
        );
        assert_eq!(
            parse("path=/s,mode=0640").unwrap_err(),
            "mode=0640: use 0600 (owner) or 0660 (owner and group)"
        );
        for bad in ["rw", "0x180", "0900", "00600", ""] {
            assert_eq!(
                parse(&format!("path=/s,mode={bad}")).unwrap_err(),
                if bad.is_empty() {
                    "mode=: empty value".to_string()
                } else {
                    format!("mode={bad}: expected octal permission bits such as 0600")
                }
            );
        }
        assert_eq!(parse("mode=0600").unwrap_err(), "path= is required");
    }
}
