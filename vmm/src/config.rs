//! The reference VMM's command-line options. `--tagged-memory` is the host model's
//! ([`tagmem_host`], re-exported here): its grammar, validation, grouping into chains and
//! resolution to backings are written once there for every VMM. This file holds the options only
//! this VMM has: `--memory`, `--serial` and `--api-socket`.

use std::path::PathBuf;
pub use tagmem_host::chains::{group_chains, parse_options, sequence_numbers};
pub use tagmem_host::error::{error_chain, ConfigError, OptionError};
pub use tagmem_host::grammar::{format_size, human_size, parse_size, split_option};
pub use tagmem_host::resolve::{BackingPlan, ExtentPlan, Resolver};
pub use tagmem_host::tagged::{TaggedMemoryConfig, GENERATED_ID_PREFIX, KEYS, MEMFD, OPTION, SYNTAX};
pub use tagmem_host::EXTENT_ALIGN;

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

    const MIB: u64 = 1 << 20;

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
