//! How one config value is read from its text and printed back: sizes,
//! durations, rates, `"off"`, fixed sets of names. Every parser takes the
//! text (environment overrides are text too) and says what is wrong without
//! repeating the value; the reader adds the key and the value.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serializer;
use serde::de::DeserializeOwned;
use serde::de::value::{Error as DeError, StrDeserializer};

pub fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an IP:port socket address".to_owned())
}

/// A whole number, zero allowed.
pub fn whole(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| "not a whole number".to_owned())
}

/// A whole number greater than 0.
pub fn positive(s: &str) -> Result<usize, String> {
    match whole(s)? {
        0 => Err("must be greater than 0".to_owned()),
        n => Ok(n),
    }
}

/// A count that fits `u32`, greater than 0.
pub fn positive_u32(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err("must be a whole number greater than 0".to_owned()),
    }
}

/// A rate per second: a number greater than 0 (fractions allowed).
pub fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("must be a number per second greater than 0".to_owned()),
    }
}

/// `"off"` → `None`, else `parse`.
pub fn off_or<T>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<Option<T>, String> {
    move |s| {
        if s == "off" {
            Ok(None)
        } else {
            parse(s).map(Some).map_err(|e| format!("{e} (or \"off\")"))
        }
    }
}

/// `"10s"`, `"1m 30s"`, `"250ms"`; must be greater than zero.
pub fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("not a duration like \"10s\" or \"250ms\": {e}")),
    }
}

/// Like [`duration`], but `"0s"` (or `"off"`) turns the feature off.
pub fn duration_or_off(s: &str) -> Result<Option<Duration>, String> {
    if s == "off" {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok((!d.is_zero()).then_some(d)),
        Err(e) => Err(format!("not a duration like \"30s\" (or \"off\"): {e}")),
    }
}

/// `"16MiB"`, `"64 KiB"`, `"1000"`, `"1MB"` (decimal units are powers of 1000).
pub fn size(s: &str) -> Result<usize, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "not a size like \"16MiB\" or \"4096\"".to_owned())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    match n.checked_mul(mult).and_then(|v| usize::try_from(v).ok()) {
        Some(0) => Err("must be greater than 0".to_owned()),
        Some(v) => Ok(v),
        None => Err("too large".to_owned()),
    }
}

/// One of a fixed set of names: the enum's own serde names, so that reading
/// and printing (`check-config`) share one list.
pub fn choice<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    T::deserialize(StrDeserializer::<DeError>::new(s)).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Printing, for `#[serde(serialize_with = ...)]`: the file's own spelling.

pub fn show_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

pub fn show_duration_or_off<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => show_duration(d, s),
        None => s.serialize_str("off"),
    }
}

pub fn show_or_off<T: fmt::Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_str("off"),
    }
}

/// Each entry as `(set)`: secrets are never printed.
pub fn show_hidden<T, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "(set)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(size("16MiB"), Ok(16 << 20));
        assert_eq!(size("64 KiB"), Ok(64 << 10));
        assert_eq!(size("1MB"), Ok(1_000_000));
        assert_eq!(size("4096"), Ok(4096));
        assert!(size("0").is_err());
        assert!(size("1 parsec").is_err());
        assert!(size("99999999999999999999").is_err());
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("0s").is_err());
        assert_eq!(duration_or_off("0s"), Ok(None));
        assert_eq!(duration_or_off("off"), Ok(None));
        assert_eq!(off_or(positive)("off"), Ok(None));
        assert_eq!(off_or(positive)("3"), Ok(Some(3)));
        assert!(off_or(positive)("0").unwrap_err().ends_with("(or \"off\")"));
    }
}
