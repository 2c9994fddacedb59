//! Values as a person writes and reads them: durations in their largest
//! exact unit, an `f32` as its own shortest decimal, and URLs with their
//! credentials hidden. `check-config` prints what these produce, so its
//! output reads like the `config.toml` an operator wrote.

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// `#[serde(with = "human::duration")]`: humantime strings both ways.
pub(super) mod duration {
    use super::*;

    /// Writes `d` in its largest exact unit (`"183d"`, `"30m"`, `"250ms"`),
    /// where humantime's own formatter would break 183 days into
    /// `"6months 8h 38m 24s"` (its month is 30.44 days).
    pub(in crate::config) fn serialize<S: Serializer>(
        d: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Reads any humantime string (`"1h 30m"`, `"90min"`, `"5400s"`).
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d)
    }

    /// `d` as a count of its largest exact unit. Weeks, months and years are
    /// left out: nobody reads `"26w1d"` faster than `"183d"`, and humantime's
    /// months and years are not whole days.
    pub(in crate::config) fn format(d: Duration) -> String {
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let nanos = d.as_nanos();
        if nanos == 0 {
            return "0s".to_owned();
        }
        let (size, unit) = UNITS
            .iter()
            .find(|(size, _)| nanos.is_multiple_of(*size))
            .expect("every duration is a whole number of nanoseconds");
        format!("{}{unit}", nanos / size)
    }
}

/// `#[serde(serialize_with = "human::shortest_f32")]`: serializers widen an
/// `f32` to `f64`, and the widened 0.7 prints as `0.699999988079071`. The
/// `f32`'s own shortest round-trip decimal, read as an `f64`, prints as the
/// `0.7` that was written, and still reads back as the same `f32`.
pub(super) fn shortest_f32<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    let shortest: f64 = v
        .to_string()
        .parse()
        .expect("an f32's Display output parses as an f64");
    s.serialize_f64(shortest)
}

pub use chatcore::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        let cases = [
            (Duration::from_secs(183 * 86_400), "183d"),
            (Duration::from_secs(30 * 60), "30m"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(61), "61s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(7), "7us"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, text) in cases {
            assert_eq!(duration::format(d), text);
            // What is printed reads back as the same duration.
            assert_eq!(humantime::parse_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn f32_prints_as_written() {
        #[derive(serde::Serialize)]
        struct T {
            #[serde(serialize_with = "shortest_f32")]
            t: f32,
        }
        for (v, text) in [(0.7f32, "t = 0.7"), (1.0, "t = 1.0"), (0.1, "t = 0.1")] {
            assert_eq!(toml::to_string(&T { t: v }).unwrap().trim(), text);
        }
    }
}
