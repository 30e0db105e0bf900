"""The offline fake behaves like a model (issue 11, item 6): bounded output, typical reply
lengths, validation, tool calls, structured outputs and n choices through the official SDKs;
and it never freezes the gateway."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import anthropic
import openai
import pytest
from pydantic import BaseModel

from support import anthropic_client, key_call, openai_client


def post(gw, path: str, body: dict, key: str) -> tuple[int, dict]:
    return key_call(gw, "POST", path, key, body)


def test_typical_length_not_the_cap(gateway):
    """LangChain's ChatAnthropic sends max_tokens=64000: a "hi" must not cost 64000 tokens."""
    key, _ = gateway.create_key(owner="lc")
    message = anthropic_client(gateway, key).messages.create(
        model="claude-haiku-4-5", max_tokens=64000, timeout=30,
        messages=[{"role": "user", "content": "hi"}])
    assert 24 <= message.usage.output_tokens <= 160 and message.stop_reason == "end_turn"
    event = gateway.events[-1]
    assert event["cost_usd"] < 0.001, event["cost_usd"]
    short = anthropic_client(gateway, key).messages.create(
        model="claude-haiku-4-5", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert short.usage.output_tokens == 3 and short.stop_reason == "max_tokens"


def test_huge_caps_neither_freeze_nor_exhaust(make_gateway):
    gw = make_gateway(fake_mode="always")
    key, _ = gw.create_key(owner="big")
    client = openai_client(gw, key, timeout=20)
    done = threading.Event()
    health_times: list[float] = []

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            urllib.request.urlopen(gw.url + "/api/health", timeout=10).read()
            health_times.append(time.perf_counter() - started)
            time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        for _ in range(3):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=1_000_000, stream=True,
                messages=[{"role": "user", "content": "write a lot"}])
            assert sum(1 for _ in stream) < 5000
        status, answer = post(gw, "/openai/v1/chat/completions",
                              {"model": "gpt-4o-mini", "max_tokens": 9223372036854775807,
                               "messages": [{"role": "user", "content": "x"}]}, key)
        assert status == 400 and "max_tokens" in answer["error"]["message"]
    finally:
        done.set()
        thread.join()
    assert max(health_times) < 1.0, max(health_times)


@pytest.mark.parametrize("body, field", [
    ({"model": "gpt-4o-mini", "messages": 5, "max_tokens": 2}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [5], "max_tokens": 2}, "messages[0]"),
    ({"model": "text-embedding-3-small", "input": "x", "dimensions": 1000000000}, "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x", "dimensions": "big"}, "dimensions"),
    ({"model": "text-embedding-3-small", "input": {"a": 1}}, "input"),
])
def test_bad_shapes_get_the_providers_400(gateway, body, field):
    key, _ = gateway.create_key(owner="shape")
    path = "/openai/v1/embeddings" if "input" in body else "/openai/v1/chat/completions"
    status, answer = post(gateway, path, body, key)
    assert status == 400, answer
    assert f"'{field}'" in answer["error"]["message"]


def test_anthropic_shape_errors(gateway):
    key, _ = gateway.create_key(owner="shape")
    client = anthropic_client(gateway, key)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages="hello")
    assert "messages" in str(info.value)


class Weather(BaseModel):
    city: str
    celsius: float
    sunny: bool
    tags: list[str]


def test_structured_outputs_parse(gateway):
    key, _ = gateway.create_key(owner="parse")
    client = openai_client(gateway, key)
    completion = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather in Paris?"}],
        response_format=Weather)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.tags
    response = client.responses.parse(model="gpt-4o-mini", input="weather?", text_format=Weather)
    assert isinstance(response.output_parsed, Weather)
    with client.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}],
            response_format=Weather) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)
    plain = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(plain.choices[0].message.content), dict)


TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"]}}}


def test_forced_tool_calls_openai(gateway):
    key, _ = gateway.create_key(owner="tools")
    client = openai_client(gateway, key)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}],
        tools=[TOOL], tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] == "c"
    with client.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}],
            tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    ) as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments)["city"]
    free = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], tools=[TOOL])
    assert free.choices[0].message.content and not free.choices[0].message.tool_calls
    response = client.responses.create(
        model="gpt-4o-mini", input="weather?", tool_choice="required",
        tools=[{"type": "function", "name": "get_weather", "parameters": TOOL["function"][
            "parameters"]}])
    assert response.output[0].type == "function_call"
    assert json.loads(response.output[0].arguments)["unit"] == "c"


def test_forced_tool_calls_anthropic(gateway):
    key, _ = gateway.create_key(owner="tools")
    client = anthropic_client(gateway, key)
    tools = [{"name": "get_weather", "description": "weather",
              "input_schema": TOOL["function"]["parameters"]}]
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=200, tools=tools,
                                     tool_choice={"type": "any"},
                                     messages=[{"role": "user", "content": "weather?"}])
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.input["unit"] == "c"
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=200, tools=tools,
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].input["city"]


def test_n_choices(gateway):
    key, _ = gateway.create_key(owner="n")
    client = openai_client(gateway, key)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", n=3, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model="gpt-4o-mini", n=2, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert chunks[-1].usage.completion_tokens == 8
    assert gateway.events[-1]["output_tokens"] == 8


def test_async_streams_interleave(gateway):
    """Several long fake streams at once: each yields the loop (none starves the others)."""
    key, _ = gateway.create_key(owner="async")

    async def main() -> list[int]:
        client = openai.AsyncOpenAI(api_key=key, base_url=gateway.url + "/openai/v1",
                                    max_retries=0)

        async def one(i: int) -> int:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=4000, stream=True,
                messages=[{"role": "user", "content": f"long {i}"}])
            return sum([1 async for _ in stream])

        counts = await asyncio.gather(*[one(i) for i in range(4)])
        await client.close()
        return counts

    counts = asyncio.run(main())
    assert all(20 < c < 5000 for c in counts), counts
