"""The Responses API with the official `openai` SDK, against chatgate and its
mock upstream: string and item input with instructions, a chain continued
by previous_response_id, a fork that leaves the chain intact, retrieve,
input items, delete, a function tool round trip, streaming (raw events and
the `responses.stream` helper) and a JSON-schema text format.

The mock echoes the last user message ("Echo: ...") and counts a prompt's
characters / 4 as its input tokens, so a request that carries more of the
chain reports more input tokens."""

import json

import openai
import pytest
from pydantic import BaseModel

MODEL = "gpt-3.5-turbo"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class Person(BaseModel):
    name: str
    age: int


def test_string_and_item_input_with_instructions(client):
    r = client.responses.create(model=MODEL, input="hello there", instructions="Answer briefly.")
    assert r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.output_text == "Echo: hello there"
    assert r.instructions == "Answer briefly."
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0

    items = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "from items"}],
            },
        ],
    )
    assert items.output_text == "Echo: from items"
    listed = client.responses.input_items.list(items.id, order="asc")
    assert [i.role for i in listed.data] == ["developer", "user"]
    assert listed.data[1].content[0].text == "from items"


def test_a_chain_a_fork_retrieve_and_delete(client):
    first = client.responses.create(model=MODEL, input="one", instructions="Be kind.")
    second = client.responses.create(model=MODEL, input="two", previous_response_id=first.id)
    third = client.responses.create(model=MODEL, input="three", previous_response_id=second.id)
    assert third.output_text == "Echo: three"
    assert third.previous_response_id == second.id
    # Each call carries the chain before it: more input every time.
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens

    fork = client.responses.create(model=MODEL, input="two again", previous_response_id=first.id)
    assert fork.output_text == "Echo: two again"
    assert fork.usage.input_tokens < third.usage.input_tokens
    # The chain is intact (what the next call upstream holds is checked
    # over the wire in chatgate's own end-to-end tests).
    assert client.responses.retrieve(third.id).output_text == "Echo: three"

    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == "Echo: two"
    items = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["two"]

    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id=second.id)


def test_a_function_tool_round_trip(client):
    first = client.responses.create(model=MODEL, input="Paris", tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    final = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert final.output_text == "Tool results: sunny, 21 C"


def test_a_stream_of_typed_events(client):
    stream = client.responses.create(model=MODEL, input="stream this", stream=True)
    kinds, text, completed = [], "", None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert text == "Echo: stream this"
    assert completed.output_text == text
    # Stored once completed: continuable at once.
    after = client.responses.create(model=MODEL, input="next", previous_response_id=completed.id)
    assert after.usage.input_tokens > completed.usage.input_tokens


def test_the_stream_helper_and_a_streamed_tool_call(client):
    with client.responses.stream(model=MODEL, input="Lyon", tools=[WEATHER]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    call = [o for o in final.output if o.type == "function_call"][0]
    assert json.loads(call.arguments) == {"city": "Lyon"}


def test_text_format_with_a_json_schema(client):
    r = client.responses.create(
        model=MODEL,
        input="Ann",
        text={
            "format": {
                "type": "json_schema",
                "name": "person",
                "schema": Person.model_json_schema(),
            }
        },
    )
    Person.model_validate_json(r.output_text)
    parsed = client.responses.parse(model=MODEL, input="Bob", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


def test_built_in_tools_are_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
    assert "function tools" in str(e.value)


def test_a_conversation_holds_its_responses_in_order(client):
    conv = client.conversations.create(
        metadata={"topic": "demo"},
        items=[{"type": "message", "role": "user", "content": "Remember: blue."}],
    )
    assert conv.id.startswith("conv_")
    first = client.responses.create(model=MODEL, input="one", conversation=conv.id)
    second = client.responses.create(model=MODEL, input="two", conversation={"id": conv.id})
    assert first.output_text == "Echo: one" and second.output_text == "Echo: two"
    # The conversation's items go upstream first: more input each time.
    assert second.usage.input_tokens > first.usage.input_tokens
    items = client.conversations.items.list(conv.id, order="asc")
    texts = [i.content[0].text for i in items.data]
    assert texts == ["Remember: blue.", "one", "Echo: one", "two", "Echo: two"]
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "demo"}
    updated = client.conversations.update(conv.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}

    item = client.conversations.items.retrieve(items.data[0].id, conversation_id=conv.id)
    assert item.content[0].text == "Remember: blue."
    client.conversations.items.delete(items.data[0].id, conversation_id=conv.id)
    left = client.conversations.items.list(conv.id, order="asc")
    assert [i.id for i in left.data] == [i.id for i in items.data[1:]]

    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
