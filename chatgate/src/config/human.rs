//! Values as a person writes and reads them: durations in their largest
//! exact unit, an `f32` as its own shortest decimal, and URLs with their
//! credentials hidden. `check-config` prints what these produce, so its
//! output reads like the `config.toml` an operator wrote.

use std::time::Duration;

use percent_encoding::percent_decode_str;
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

/// What stands in for a hidden credential.
const HIDDEN: &str = "***";

/// Query parameter names (lowercased, percent-decoded) that carry
/// credentials, matched as substrings: `api-key`, `key`, `access_token`,
/// `sig` (Azure SAS), `x-goog-api-key`… Matching too much only hides a
/// harmless value; matching too little prints a secret.
const SECRET_PARAMS: [&str; 9] = [
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "auth",
    "credential",
];

/// `url` with its credentials replaced by `***`: the userinfo
/// (`https://***@host/v1`) and the values of query parameters whose name
/// looks like a credential (`?api-key=***&api-version=2024-02-01`).
///
/// Use it wherever `openai.base_url` is shown: `check-config`, the startup
/// log line, configuration errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before_query, after) = rest.split_at(query_at);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    // The last '@' before the query ends the userinfo even when an
    // unencoded '/' in a password would end the authority for a URL parser:
    // hiding part of an odd path is harmless, printing half a password is not.
    match before_query.rfind('@') {
        Some(at) => {
            out.push_str(HIDDEN);
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    let (query, fragment) = match after.find('#') {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        let pairs: Vec<String> = query.split('&').map(redact_pair).collect();
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

fn redact_pair(pair: &str) -> String {
    let Some((name, _value)) = pair.split_once('=') else {
        return pair.to_owned();
    };
    let decoded = percent_decode_str(name).decode_utf8_lossy().to_lowercase();
    if SECRET_PARAMS.iter().any(|s| decoded.contains(s)) {
        format!("{name}={HIDDEN}")
    } else {
        pair.to_owned()
    }
}

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

    #[test]
    fn credentials_in_urls_are_hidden() {
        let cases = [
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
            (
                "https://user:pa55@proxy.example/v1",
                "https://***@proxy.example/v1",
            ),
            ("https://tok3n@proxy.example", "https://***@proxy.example"),
            (
                "https://u:pa/ss@proxy.example/v1",
                "https://***@proxy.example/v1",
            ),
            (
                "https://x.example/v1?api-key=s3cr3t&api-version=2024-02-01",
                "https://x.example/v1?api-key=***&api-version=2024-02-01",
            ),
            (
                "https://x.example/v1?key=s3cr3t#frag",
                "https://x.example/v1?key=***#frag",
            ),
            (
                "https://x.example/v1?access_token=s3cr3t&Sig=abc&API%2DKEY=z",
                "https://x.example/v1?access_token=***&Sig=***&API%2DKEY=***",
            ),
            ("user:pw@host/v1", "***@host/v1"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
