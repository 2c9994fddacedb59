//! Every statement the store runs, in one place: the schema they read
//! and write is `schema.rs`.

pub(super) const INSERT_SESSION: &str = "INSERT INTO sessions (id, created_at, active_hour, system_prompt, metadata, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
pub(super) const GET_SESSION: &str = "SELECT s.created_at, (SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), s.system_prompt, s.metadata, s.owner, s.target FROM sessions s WHERE s.id = ?1";
/// A page of sessions, most recently active first: each candidate's exact
/// last activity is read from its last turn, among the sessions whose
/// `active_hour` is at least `?5` (all of them when NULL) and, for an
/// owner's list (`?1`), its own.
pub(super) const LIST_SESSIONS: &str = "SELECT id, created_at, last_at, system_prompt, metadata, owner, target FROM (SELECT s.id, s.created_at, max(s.created_at, coalesce((SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), 0)) AS last_at, s.system_prompt, s.metadata, s.owner, s.target FROM sessions s WHERE s.active_hour >= coalesce(?5, -9223372036854775808) AND s.active_hour <= coalesce(?6, 9223372036854775807)) WHERE ?2 IS NULL OR last_at < ?2 OR (last_at = ?2 AND id < ?3) ORDER BY last_at DESC, id DESC LIMIT ?4";
pub(super) const LIST_OWN_SESSIONS: &str = "SELECT id, created_at, last_at, system_prompt, metadata, owner, target FROM (SELECT s.id, s.created_at, max(s.created_at, coalesce((SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), 0)) AS last_at, s.system_prompt, s.metadata, s.owner, s.target FROM sessions s WHERE s.owner = ?1 AND s.active_hour >= coalesce(?5, -9223372036854775808) AND s.active_hour <= coalesce(?6, 9223372036854775807)) WHERE ?2 IS NULL OR last_at < ?2 OR (last_at = ?2 AND id < ?3) ORDER BY last_at DESC, id DESC LIMIT ?4";
/// The `active_hour` of the session `?3` places down the activity order (at
/// or before hour `?4`): the oldest hour a page of that many can reach.
pub(super) const PAGE_FLOOR: &str = "SELECT active_hour FROM sessions WHERE active_hour <= coalesce(?4, 9223372036854775807) ORDER BY active_hour DESC LIMIT 1 OFFSET ?3";
pub(super) const OWN_PAGE_FLOOR: &str = "SELECT active_hour FROM sessions WHERE owner = ?1 AND active_hour <= coalesce(?4, 9223372036854775807) ORDER BY active_hour DESC LIMIT 1 OFFSET ?3";
pub(super) const REVIEW_FEEDBACK: &str = "SELECT seq, session_id, text, rating, created_at FROM feedback WHERE seq > ?1 AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at < ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR rating = ?5) ORDER BY seq LIMIT ?6";
pub(super) const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, name, hash, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";
pub(super) const GET_KEY: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys WHERE id = ?1";
pub(super) const LIST_KEYS: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys ORDER BY created_at, id";
pub(super) const REVOKE_KEY: &str =
    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
pub(super) const RECENT_TURNS: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM (SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq ASC";
pub(super) const INSERT_TURN: &str = "INSERT INTO turns (session_id, user_content, user_at, reply_content, reply_at, prompt_tokens, completion_tokens, cached_tokens, body, response_id, response) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// A response's turn (the columns `turn_row` reads), the position of its
/// reply (`seq` × the stride plus the reply's place in the turn), its
/// document and its turn's tokens.
pub(super) const GET_RESPONSE: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body, seq * ?3 + CASE WHEN body IS NULL THEN 1 ELSE json_array_length(body) - 1 END, response, prompt_tokens, completion_tokens, cached_tokens FROM turns WHERE session_id = ?1 AND response_id = ?2 ORDER BY seq DESC LIMIT 1";
pub(super) const TURNS_THROUGH: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 AND seq <= ?2 ORDER BY seq";
pub(super) const HEAD_RESPONSE: &str =
    "SELECT response_id FROM turns WHERE session_id = ?1 ORDER BY seq DESC LIMIT 1";
pub(super) const DELETE_RESPONSE: &str =
    "UPDATE turns SET response_id = NULL, response = NULL WHERE session_id = ?1 AND response_id = ?2";
/// Copies session `?2`'s turns up to `seq` `?3` into session `?1`, in
/// order, without their tokens (spent by the original) or responses.
pub(super) const FORK_TURNS: &str = "INSERT INTO turns (session_id, user_content, user_at, reply_content, reply_at, body) SELECT ?1, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?2 AND seq <= ?3 ORDER BY seq";
pub(super) const SESSION_USAGE: &str = "SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(cached_tokens), 0) FROM turns WHERE session_id = ?1";
pub(super) const SET_METADATA: &str = "UPDATE sessions SET metadata = ?2 WHERE id = ?1";
pub(super) const TURN_ROW: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 AND seq = ?2";
pub(super) const SET_TURN_BODY: &str =
    "UPDATE turns SET user_content = '', reply_content = '', body = ?2 WHERE seq = ?1";
pub(super) const SET_TARGET: &str = "UPDATE sessions SET target = ?2 WHERE id = ?1";
pub(super) const TOUCH_SESSION: &str =
    "UPDATE sessions SET active_hour = ?2 WHERE id = ?1 AND active_hour < ?2";
pub(super) const INSERT_FEEDBACK: &str = "INSERT INTO feedback (session_id, text, rating, created_at) SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?1)";
pub(super) const LIST_FEEDBACK: &str =
    "SELECT text, rating, created_at FROM feedback WHERE session_id = ?1 ORDER BY seq";
pub(super) const PURGE_CANDIDATES: &str = "SELECT s.id FROM sessions s WHERE s.active_hour <= ?1 AND max(s.created_at, coalesce((SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), 0)) < ?2 LIMIT ?3";
pub(super) const SESSION_EXISTS: &str = "SELECT 1 FROM sessions WHERE id = ?1";
pub(super) const PAGE_TURNS: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3";
pub(super) const COUNT_MESSAGES: &str = "SELECT coalesce(sum(CASE WHEN body IS NULL THEN 2 ELSE json_array_length(body) END), 0) FROM turns WHERE session_id = ?1";
pub(super) const PURGE_TURNS: &str = "DELETE FROM turns WHERE session_id = ?1";
pub(super) const PURGE_FEEDBACK: &str = "DELETE FROM feedback WHERE session_id = ?1";
pub(super) const PURGE_SESSION: &str = "DELETE FROM sessions WHERE id = ?1";
