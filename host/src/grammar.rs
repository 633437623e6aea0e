//! The option grammar shared by every `key=value,...` option: sizes with binary suffixes,
//! decimal numbers, `on`/`off` switches and the splitting of an option string into its keys.

use crate::error::ConfigError;

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
pub(crate) fn parse_decimal<T>(key: &'static str, value: &str) -> Result<T, ConfigError>
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
pub(crate) trait Bounded {
    const MAX_U64: u64;
}

impl Bounded for u16 {
    const MAX_U64: u64 = u16::MAX as u64;
}

impl Bounded for u32 {
    const MAX_U64: u64 = u32::MAX as u64;
}

/// Parses `on` or `off`.
pub(crate) fn parse_switch(key: &'static str, value: &str) -> Result<bool, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

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
}
