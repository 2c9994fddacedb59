DROP SCHEMA IF EXISTS pgb CASCADE;
CREATE SCHEMA pgb;
SET search_path = pgb;
CREATE TABLE sessions (
 id uuid PRIMARY KEY, created_at timestamptz NOT NULL, last_active timestamptz NOT NULL,
 system_prompt text, metadata jsonb, owner text, turns bigint NOT NULL DEFAULT 0,
 claim uuid, claim_until timestamptz, messages bigint NOT NULL DEFAULT 0, target text, head uuid);
CREATE INDEX sessions_by_last_active ON sessions (last_active, id);
CREATE INDEX sessions_by_owner ON sessions (owner, last_active, id) WHERE owner IS NOT NULL;
CREATE TABLE messages (
 session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE, position bigint NOT NULL,
 role text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL,
 prompt_tokens bigint, completion_tokens bigint, body text, cached_tokens bigint,
 PRIMARY KEY (session_id, position));
INSERT INTO sessions (id, created_at, last_active, turns, messages, head)
 SELECT md5(i::text)::uuid, now(), now(), 10, 20, md5(i::text || 'h')::uuid FROM generate_series(0, 16999) i;
INSERT INTO messages (session_id, position, role, content, created_at)
 SELECT md5(i::text)::uuid, p, CASE WHEN p % 2 = 0 THEN 'user' ELSE 'assistant' END, repeat('hello world ', 10), now()
 FROM generate_series(0, 16999) i, generate_series(0, 19) p;
VACUUM ANALYZE sessions; VACUUM ANALYZE messages;
