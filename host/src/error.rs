//! What is wrong with a tagged-memory description, attributed to the option or API field it
//! came from.

use crate::backing::{is_host_os_error, BackingError};
use tagmem_lookup::LookupError;
use uuid::Uuid;

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
