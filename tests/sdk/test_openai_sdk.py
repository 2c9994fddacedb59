"""The official `openai` Python SDK against chatgate's /v1 API: whole and
streamed completions, stateless and bound to a session (X-Session-Id), the
model list, and chatgate's errors surfacing as the SDK's typed exceptions."""

import json
import urllib.request

import openai
import pytest

from conftest import MESSAGES_PER_MINUTE


def history(gateway, session_id):
    with urllib.request.urlopen(f"{gateway}/session/{session_id}/messages", timeout=5) as r:
        return [(m["role"], m["content"]) for m in json.load(r)["messages"]]


def session(gateway, session_id):
    with urllib.request.urlopen(f"{gateway}/session/{session_id}", timeout=5) as r:
        return json.load(r)


def test_models_list(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["gpt-3.5-turbo", "gpt-4o-mini", "mock-large"]
    assert client.models.retrieve("mock-large").id == "mock-large"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_stateless_whole(client):
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ],
        temperature=0.1,
    )
    assert r.object == "chat.completion"
    assert r.model == "gpt-3.5-turbo"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Echo: Hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_stateless_stream_with_usage(client):
    stream = client.chat.completions.create(
        model="mock-large",
        messages=[{"role": "user", "content": "stream me a reply please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "mock-large"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "Echo: stream me a reply please"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    assert chunks >= 4, "role, several content pieces, finish, usage"


def test_session_bound_whole_and_stream_share_history(client, gateway, session_id):
    headers = {"X-Session-Id": session_id}
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "first"}],
        extra_headers=headers,
    )
    assert r.choices[0].message.content == "Echo: first"
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "second"}],
        stream=True,
        extra_headers=headers,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Echo: second"
    assert history(gateway, session_id) == [
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second"),
        ("assistant", "Echo: second"),
    ]
    usage = session(gateway, session_id)["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_rate_limit_is_a_rate_limit_error(client, session_id):
    headers = {"X-Session-Id": session_id}
    for i in range(MESSAGES_PER_MINUTE):
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": f"message {i}"}],
            extra_headers=headers,
        )
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "one too many"}],
            extra_headers=headers,
        )
    assert err.value.status_code == 429
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.code == "rate_limit_exceeded"


def test_unknown_session_and_model_are_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Session-Id": "00000000-0000-4000-8000-000000000000"},
        )
    assert err.value.code == "session_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.code == "model_not_found"


def test_bad_requests_are_bad_request_errors(client, session_id):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[
                {"role": "user", "content": "two"},
                {"role": "user", "content": "messages"},
            ],
            extra_headers={"X-Session-Id": session_id},
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "hi"}],
            temperature=5,
        )


def test_api_key_from_the_cli_authenticates_the_sdk(required_gateway):
    base, key = required_gateway
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    r = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert r.choices[0].message.content == "Echo: Hello there"
    assert [m.id for m in client.models.list()] == ["gpt-3.5-turbo"]
    off = key[:-1] + ("1" if key.endswith("0") else "0")
    for wrong in (off, "sk-not-a-chatgate-key"):
        bad = openai.OpenAI(base_url=f"{base}/v1", api_key=wrong, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(
                model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.status_code == 401
        assert err.value.response.headers["www-authenticate"].startswith("Bearer")
        assert wrong not in str(err.value)
