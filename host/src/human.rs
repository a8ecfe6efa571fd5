//! Durations and sizes as people write them in a configuration: `"250ms"`, `"1s"`, `"2m"`,
//! `"1h"`; `"64KiB"`, `"256MiB"`, `"1GiB"` (or a plain number of bytes). The forms written before
//! (`{ secs = 1, nanos = 0 }`) are still read. Durations are written back as text; sizes as
//! plain numbers.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};
use std::time::Duration;

/// `#[serde(with = "crate::human::duration")]`.
pub(crate) mod duration {
    use super::{Deserialize, Deserializer, Duration, Serializer, de};

    /// The form a duration may come in.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Legacy { secs: u64, nanos: u32 },
    }

    pub(crate) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let millis = value.as_millis();
        let text = if !value.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ns", value.as_nanos())
        } else if !millis.is_multiple_of(1000) {
            format!("{millis}ms")
        } else {
            format!("{}s", value.as_secs())
        };
        serializer.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        match Written::deserialize(deserializer)
            .map_err(|_| de::Error::custom("a duration is written like \"250ms\", \"1s\", \"2m\", \"1h\" or \"7d\""))?
        {
            Written::Legacy { secs, nanos } => Duration::new(secs, 0)
                .checked_add(Duration::from_nanos(u64::from(nanos)))
                .ok_or_else(|| de::Error::custom("the duration is out of range")),
            Written::Text(text) => parse(&text).map_err(de::Error::custom),
        }
    }

    /// `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`, `"7d"`, `"100us"`, `"10ns"`.
    pub(crate) fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let nanos_per: f64 = match unit.trim() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            _ => return Err(format!("`{text}`: give a unit: ns, us, ms, s, m, h or d (like \"250ms\")")),
        };
        let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration (like \"250ms\")"))?;
        let nanos = number * nanos_per;
        if !nanos.is_finite() || nanos < 0.0 || nanos > u64::MAX as f64 {
            return Err(format!("`{text}` is out of range"));
        }
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked to be within u64 above")]
        Ok(Duration::from_nanos(nanos.round() as u64))
    }
}

/// `#[serde(with = "crate::human::optional_duration")]`: a duration or nothing (`null`).
pub(crate) mod optional_duration {
    use super::{Deserialize, Deserializer, Duration, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::duration::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Given(#[serde(with = "super::duration")] Duration);
        Ok(Option::<Given>::deserialize(deserializer)?.map(|Given(duration)| duration))
    }
}

/// `#[serde(deserialize_with = "crate::human::bytes")]` for a size in bytes.
pub(crate) fn bytes<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    struct Size;
    impl Visitor<'_> for Size {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size in bytes, like 65536 or \"64KiB\"")
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom("a size can't be negative"))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_bytes(text).map_err(E::custom)
        }
    }
    let value = deserializer.deserialize_any(Size)?;
    T::try_from(value).map_err(|_| de::Error::custom(format!("{value} bytes is more than this field can hold")))
}

/// `"65536"`, `"64KiB"`, `"64KB"`, `"256MiB"`, `"1GiB"` (KB/MB/GB are read as powers of 1024 too:
/// memory sizes are).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "k" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return Err(format!("`{text}`: give a size like 65536, \"64KiB\", \"256MiB\" or \"1GiB\"")),
    };
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size (like \"64KiB\")"))?;
    number.checked_mul(scale).ok_or_else(|| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(duration::parse("5").expect_err("no unit").contains("give a unit"));
        assert!(duration::parse("1e400s").is_err());
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("12"), Ok(12));
        assert!(parse_bytes("64 parsecs").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn the_old_form_out_of_range_is_refused_not_a_panic() {
        #[derive(serde::Deserialize, Debug)]
        struct Holder(
            #[serde(with = "duration")]
            #[expect(dead_code, reason = "only ever refused")]
            Duration,
        );
        let huge = serde_json::json!({ "secs": u64::MAX, "nanos": 1_000_000_000u32 });
        let refused = serde_json::from_value::<Holder>(huge).expect_err("out of range");
        assert!(refused.to_string().contains("out of range"), "{refused}");
    }
}
