"""What real OpenAI apps do first, against chatgate's /v1 and its mock
upstream: tool calls with the official `openai` SDK (whole, streamed, and
as a tool loop through a session), structured output parsed into a
Pydantic model, and LangChain's `bind_tools`, a two-step tool loop and
`with_structured_output`. The mock answers a request that offers tools
with a call to one of them, and a request that ends with tool results
with `Tool results: ...`, as a model would."""

import json
import urllib.request

from pydantic import BaseModel

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Person(BaseModel):
    name: str
    age: int


def stored(gateway, session_id):
    with urllib.request.urlopen(f"{gateway}/session/{session_id}/messages", timeout=5) as r:
        return json.load(r)["messages"]


def test_a_tool_call_whole(client):
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Paris"}],
        tools=[WEATHER_TOOL],
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_a_tool_call_streamed(client):
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Paris"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            if piece.function and piece.function.name:
                call["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                call["arguments"] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_a_tool_loop_through_a_session(client, gateway, session_id):
    headers = {"X-Session-Id": session_id}
    first = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Paris"}],
        tools=[WEATHER_TOOL],
        extra_headers=headers,
    )
    call = first.choices[0].message.tool_calls[0]
    final = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}],
        tools=[WEATHER_TOOL],
        extra_headers=headers,
    )
    assert final.choices[0].message.content == "Tool results: sunny, 21 C"
    history = stored(gateway, session_id)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["id"] == call.id
    assert history[1]["content"] is None
    assert history[2]["tool_call_id"] == call.id
    assert history[3]["content"] == "Tool results: sunny, 21 C"


def test_structured_output_parses_into_a_pydantic_model(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Ann"}],
        response_format=Person,
    )
    person = r.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person == Person(name="Ann", age=1)


def llm(gateway, model="gpt-3.5-turbo"):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model,
        base_url=f"{gateway}/v1",
        api_key="unused-by-chatgate",
        max_retries=0,
    )


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_langchain_bind_tools_and_a_two_step_tool_loop(gateway):
    from langchain_core.messages import HumanMessage, ToolMessage

    model = llm(gateway).bind_tools([get_weather])
    question = HumanMessage("Paris")
    asked = model.invoke([question])
    assert asked.tool_calls[0]["name"] == "get_weather"
    assert asked.tool_calls[0]["args"] == {"city": "Paris"}
    result = ToolMessage(
        get_weather(**asked.tool_calls[0]["args"]), tool_call_id=asked.tool_calls[0]["id"]
    )
    answer = model.invoke([question, asked, result])
    assert answer.content == "Tool results: sunny in Paris"
    assert not answer.tool_calls


def test_langchain_with_structured_output(gateway):
    # As a forced tool call, and as a JSON schema response format (which
    # LangChain uses for models that take structured output).
    for method in ("function_calling", "json_schema"):
        model = llm(gateway, "gpt-4o-mini").with_structured_output(Person, method=method)
        assert model.invoke("Ann") == Person(name="Ann", age=1), method
