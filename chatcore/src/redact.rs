//! Credentials kept out of what is shown: one rule for every URL an
//! operator configures (upstream, database, Redis), wherever it is printed
//! or logged.

use percent_encoding::percent_decode_str;

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
/// The key-value form of a PostgreSQL connection string
/// (`host=db user=chat password=***`) is hidden the same way.
///
/// Use it wherever a URL the operator configured is shown: a gateway's
/// `check-config`, its startup line, configuration errors, a store's
/// `Debug`.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") && url.split_whitespace().nth(1).is_some() {
        return url
            .split_whitespace()
            .map(redact_pair)
            .collect::<Vec<_>>()
            .join(" ");
    }
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
            (
                "postgres://chat:s3cret@db:5432/chat",
                "postgres://***@db:5432/chat",
            ),
            ("postgres://chat@db/chat", "postgres://***@db/chat"),
            (
                "postgres://db/chat?user=chat&password=s3cret&sslmode=disable",
                "postgres://db/chat?user=chat&password=***&sslmode=disable",
            ),
            (
                "host=db user=chat password=s3cret",
                "host=db user=chat password=***",
            ),
            ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
