//! The query strings of listings: a page's `limit` and `after`.

use std::borrow::Cow;

use crate::error::ApiError;

/// The most messages one page of `GET /session/{id}/messages` holds (and
/// its default size).
pub const MAX_PAGE: usize = 1000;

/// `GET /session/{id}/messages` query: `limit` (1 to [`MAX_PAGE`]) and
/// `after` (a cursor from an earlier page).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Messages per page.
    pub limit: usize,
    /// Continue after this cursor.
    pub after: Option<chatcore::MessageCursor>,
}

/// Cuts `rows`, fetched one more than `limit` (the extra one says whether
/// another page follows), to the page, and gives the cursor after its
/// last row when another page follows.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(cursor)
}

/// A 422 about query parameter `name`.
pub fn bad_query(name: &str, msg: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::invalid_query(name, msg)
}

/// The `limit` (1 to `max`, default `max`) and raw `after` of a listing's
/// query string; other parameters go to `other`, which may refuse them.
///
/// # Errors
/// 422 naming the parameter at fault.
pub fn parse_listing<'q>(
    query: Option<&'q str>,
    max: usize,
    mut other: impl FnMut(&str, &'q str) -> Result<(), ApiError>,
) -> Result<(usize, Option<&'q str>), ApiError> {
    let mut limit = max;
    let mut after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        bad_query(
                            "limit",
                            format!("Input should be an integer from 1 to {max}"),
                        )
                    })?;
            }
            "after" => after = Some(value),
            _ => other(key, value)?,
        }
    }
    Ok((limit, after))
}

/// Parses the query string of `GET /session/{id}/messages`.
///
/// # Errors
/// 422 naming the parameter at fault.
pub fn parse_page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut out = PageQuery {
        limit: MAX_PAGE,
        after: None,
    };
    let bad = |name: &str, msg: String| ApiError::invalid_query(name, msg);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                out.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "limit",
                            format!("Input should be an integer from 1 to {MAX_PAGE}"),
                        )
                    })?;
            }
            "after" => {
                out.after = Some(chatcore::MessageCursor::parse(value).ok_or_else(|| {
                    bad(
                        "after",
                        "Input should be a cursor from an earlier page".into(),
                    )
                })?);
            }
            // Unknown parameters are ignored, as FastAPI does.
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_are_bounded() {
        assert_eq!(parse_page_query(None).unwrap().limit, MAX_PAGE);
        let q = parse_page_query(Some("limit=10&after=7&x=1")).unwrap();
        assert_eq!((q.limit, q.after.map(|c| c.position())), (10, Some(7)));
        for bad in ["limit=0", "limit=1001", "limit=x", "after=-1", "after=abc"] {
            assert!(parse_page_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
