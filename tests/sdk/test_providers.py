"""Prompt portability across wire formats, through the official SDKs: a Claude client (the
`anthropic` SDK) served by an OpenAI-format upstream, and an `openai` SDK client served by an
Anthropic-format upstream (`backstop serve --upstream FORMAT=URL` with only the other format),
streamed and not, with a tool call. The upstream is the scripted fake_cloud."""

import json

import anthropic
import openai
import pytest

from harness import Backstop, FakeCloud

CLOUD_TEXT = "Hello from the cloud, all is well."
TOOL = {
    "name": "read_file",
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}
OAI_TOOL = {"type": "function", "function": {"name": TOOL["name"], "description": TOOL["description"],
                                              "parameters": TOOL["input_schema"]}}
QUESTION = [{"role": "user", "content": "Read notes.txt"}]


@pytest.fixture(scope="module")
def cloud():
    try:
        c = FakeCloud()
    except RuntimeError as e:  # no binary: a failure, never a skip
        pytest.fail(str(e), pytrace=False)
    c.set("healthy", reset=True)
    yield c
    c.stop()


def start(*args):
    try:
        return Backstop("--probe-interval", "0", *args)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def via_openai(cloud):
    s = start("--upstream", f"openai={cloud.url}/v1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def via_anthropic(cloud):
    s = start("--upstream", f"anthropic={cloud.url}")
    yield s
    s.stop()


def last_body(cloud):
    rep = cloud.report()
    return rep["path"], json.loads(rep["body"])


def test_claude_client_on_an_openai_upstream(via_openai, cloud):
    c = anthropic.Anthropic(base_url=via_openai.url, api_key="sk-provider", max_retries=0)
    raw = c.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=32, system="Be brief.",
        messages=[{"role": "user", "content": "Say hi."}])
    assert raw.headers.get("x-backstop-served-by") == "cloud; upstream=openai"
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == CLOUD_TEXT
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 10 and m.usage.output_tokens == 8
    path, body = last_body(cloud)
    assert path == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    # The client's key is for Anthropic: it never reaches an OpenAI-format provider.
    assert cloud.report()["authorization"] is None and cloud.report()["x_api_key"] is None

    # A tool call, not streamed, then streamed through the SDK's event accumulator.
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=64, tools=[TOOL], messages=QUESTION)
    assert m.stop_reason == "tool_use"
    call = [b for b in m.content if b.type == "tool_use"][0]
    assert call.name == "read_file" and call.input == {"path": "notes.txt"}
    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=64, tools=[TOOL], messages=QUESTION) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me look."
    assert final.content[1].input == {"path": "notes.txt"}

    # The history of that call, sent back with its result, translates into OpenAI's shape.
    history = QUESTION + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hello"}]},
    ]
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=64, tools=[TOOL], messages=history)
    assert m.content
    _, body = last_body(cloud)
    assert body["messages"][1]["tool_calls"][0]["id"] == call.id
    assert body["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "hello"}


def test_openai_client_on_an_anthropic_upstream(via_anthropic, cloud):
    c = openai.OpenAI(base_url=via_anthropic.url + "/v1", api_key="sk-provider", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", max_tokens=32, messages=[{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Say hi."}])
    assert raw.headers.get("x-backstop-served-by") == "cloud; upstream=anthropic"
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == CLOUD_TEXT
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 8
    path, body = last_body(cloud)
    assert path == "/v1/messages" and body["system"] == "Be brief." and body["max_tokens"] == 32
    rep = cloud.report()
    assert rep["x_api_key"] is None and rep["authorization"] is None  # no key crosses providers
    assert rep["anthropic_version"]

    r = c.chat.completions.create(model="gpt-4o", messages=QUESTION, tools=[OAI_TOOL])
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "read_file" and json.loads(call.function.arguments) == {"path": "notes.txt"}

    stream = c.chat.completions.create(model="gpt-4o", messages=QUESTION, tools=[OAI_TOOL], stream=True,
                                       stream_options={"include_usage": True})
    args, name, finish, usage = "", None, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert name == "read_file" and json.loads(args) == {"path": "notes.txt"}
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens == 8
