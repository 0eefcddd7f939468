//! Human units in the config: sizes (`8MiB`, `5GB`, `1024`) and durations (`10s`, `50m`).
//!
//! Both parse with well-kept crates (`bytesize`, `humantime`); this module only adapts them
//! to serde and gives them names that say what they hold.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A number of bytes. In TOML either an integer (bytes) or a string with a unit:
/// `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Self(n * 1024 * 1024 * 1024)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a size must not be empty".into());
        }
        if s.starts_with('-') {
            return Err(format!("`{s}` is negative; a size is 0 or more bytes"));
        }
        bytesize::ByteSize::from_str(s)
            .map(|b| Size(b.as_u64()))
            .map_err(|_| {
                format!("`{s}` is not a size; write e.g. `512KiB`, `8MiB`, `5GiB` or `5GB`")
            })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of time. In TOML a string with a unit: `ms`, `s`, `m`, `h` (`"10s"`, `"1h 30m"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }
    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Span).map_err(|_| {
            format!("`{s}` is not a duration; write e.g. `500ms`, `10s`, `5m` or `1h`")
        })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("8MiB".parse::<Size>().unwrap(), Size::mib(8));
        assert_eq!("5GiB".parse::<Size>().unwrap(), Size::gib(5));
        assert_eq!("5GB".parse::<Size>().unwrap(), Size(5_000_000_000));
        assert_eq!("100KB".parse::<Size>().unwrap(), Size(100_000));
        assert_eq!("512KiB".parse::<Size>().unwrap(), Size::kib(512));
        assert_eq!("17B".parse::<Size>().unwrap(), Size(17));
        assert!("".parse::<Size>().is_err());
        assert!("-5MiB".parse::<Size>().is_err());
        assert!("lots".parse::<Size>().is_err());
    }

    #[test]
    fn spans() {
        assert_eq!("10s".parse::<Span>().unwrap(), Span::secs(10));
        assert_eq!("50m".parse::<Span>().unwrap(), Span::secs(3000));
        assert_eq!("1h".parse::<Span>().unwrap(), Span::secs(3600));
        assert_eq!(
            "250ms".parse::<Span>().unwrap(),
            Span(Duration::from_millis(250))
        );
        assert!("10".parse::<Span>().is_err());
        assert!("soon".parse::<Span>().is_err());
    }
}
