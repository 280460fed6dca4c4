"""Agents on the local tier: tool calls and structured output through the official SDKs.

Forced tool choice and json_schema output are constrained by a grammar, so every answer must
parse and validate (checked with the independent `jsonschema` package); tool histories
(assistant tool calls, tool results) are accepted and a two-step agent loop completes."""

import json
import os

import jsonschema
import pydantic
import pytest

MODEL = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"

# An agent's tool set: file read/write/edit, a shell command, search; nested objects, enums,
# arrays, optional fields and anyOf.
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a text file from the workspace.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "minLength": 1}},
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "write_file",
        "description": "Create or overwrite a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    },
    {
        "name": "edit_file",
        "description": "Replace text in a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "edits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"old": {"type": "string"}, "new": {"type": "string"}},
                        "required": ["old", "new"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["path", "edits"],
            "additionalProperties": False,
        },
    },
    {
        "name": "run_shell",
        "description": "Run a shell command.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "search",
        "description": "Search the code base or the web.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "scope": {"enum": ["files", "symbols", "web"]},
                "limit": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            },
            "required": ["query", "scope"],
            "additionalProperties": False,
        },
    },
    {
        "name": "create_ticket",
        "description": "File a ticket.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "priority": {"enum": ["low", "medium", "high"]},
                "labels": {"type": "array", "items": {"type": "string"}},
                "owner": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            "required": ["title", "priority", "owner"],
            "additionalProperties": False,
        },
    },
]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}
OAI_TOOLS = [{"type": "function", "function": t} for t in TOOLS]
ANT_TOOLS = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in TOOLS]

SUBJECTS = ["the build script", "src/main.rs", "the README", "a failing test", "the login page",
            "the database schema", "a memory leak", "the deploy pipeline", "the API docs", "a typo"]
ASKS = ["Please look at {}.", "Fix {} now.", "Can you search for {}?", "Open a ticket about {}.",
        "Run the tests for {}."]
PROMPTS = [a.format(s) for s in SUBJECTS for a in ASKS]  # 50
# CI runs a slice; `BACKSTOP_TOOL_SWEEP=50 BACKSTOP_TOOL_SWEEP_ALL=1` runs every prompt with
# every tool named (6 schemas), as the README's figures were produced.
SWEEP = int(os.environ.get("BACKSTOP_TOOL_SWEEP", "6"))
ALL_TOOLS = os.environ.get("BACKSTOP_TOOL_SWEEP_ALL") == "1"


def named_tools(i):
    """The tools a sweep prompt names: all of them, or one in turn."""
    return TOOLS if ALL_TOOLS else [TOOLS[i % len(TOOLS)]]


def validate_call(name, arguments):
    assert name in SCHEMAS, name
    jsonschema.validate(arguments, SCHEMAS[name])


def oai_forced(oai, prompt, tool_choice, **kw):
    return oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        tools=OAI_TOOLS,
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=200,
        **kw,
    )


@pytest.mark.parametrize("i", range(SWEEP))
def test_openai_required_and_named_calls_always_validate(oai, i):
    prompt = PROMPTS[i]
    r = oai_forced(oai, prompt, "required")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.tool_calls, c.message
    for call in c.message.tool_calls:
        assert call.type == "function"
        assert call.id and all(ch.isalnum() or ch in "_-" for ch in call.id), call.id
        validate_call(call.function.name, json.loads(call.function.arguments))
    for t in named_tools(i):
        r = oai_forced(oai, prompt, {"type": "function", "function": {"name": t["name"]}})
        c = r.choices[0]
        assert c.finish_reason == "stop", "a named tool_choice finishes with 'stop', as OpenAI's"
        assert [x.function.name for x in c.message.tool_calls] == [t["name"]] * len(c.message.tool_calls)
        for call in c.message.tool_calls:
            validate_call(call.function.name, json.loads(call.function.arguments))


def test_openai_parallel_off_gives_one_call(oai):
    r = oai_forced(oai, PROMPTS[0], "required", parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


def test_openai_streamed_calls_equal_the_whole_answer(oai):
    whole = oai_forced(oai, PROMPTS[1], "required").choices[0].message.tool_calls
    calls = {}
    finish = None
    for chunk in oai_forced(oai, PROMPTS[1], "required", stream=True):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        finish = ch.finish_reason or finish
        for d in ch.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                assert c["id"] is None, "the id comes once"
                c["id"] = d.id
            if d.function and d.function.name:
                c["name"] = d.function.name
            if d.function and d.function.arguments:
                c["arguments"] += d.function.arguments
    assert finish == "tool_calls"
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    assert got == [(c.function.name, json.loads(c.function.arguments)) for c in whole]


def test_openai_two_step_agent_loop(oai):
    messages = [{"role": "user", "content": "What does the file notes.txt say?"}]
    first = oai.chat.completions.create(
        model=MODEL, messages=messages, tools=OAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "read_file"}}, temperature=0, max_tokens=100,
    )
    msg = first.choices[0].message
    assert msg.tool_calls and msg.tool_calls[0].function.name == "read_file"
    messages.append(msg.model_dump(exclude_none=True))
    for call in msg.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "Remember to water the plants."})
    final = oai.chat.completions.create(model=MODEL, messages=messages, tools=OAI_TOOLS, temperature=0, max_tokens=40)
    c = final.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert c.message.content or c.message.tool_calls
    # The same history with tool_choice none: text only.
    none = oai.chat.completions.create(model=MODEL, messages=messages, tools=OAI_TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=20)
    assert not none.choices[0].message.tool_calls
    assert none.choices[0].message.content


class Weather(pydantic.BaseModel):
    city: str
    unit: str
    days: int


class Plan(pydantic.BaseModel):
    title: str
    steps: list[str]
    done: bool


@pytest.mark.parametrize("fmt", [Weather, Plan])
@pytest.mark.parametrize("prompt", PROMPTS[:SWEEP:2])
def test_openai_parse_with_pydantic(oai, fmt, prompt):
    r = oai.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": prompt}], response_format=fmt,
        temperature=0, max_tokens=200,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, fmt), r.choices[0].message


def test_openai_json_object(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=120,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_bad_schema_and_unknown_tool_are_400(oai, http):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
        )
    assert "response_format" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        oai_forced(oai, "hi", {"type": "function", "function": {"name": "no_such_tool"}})


def test_bad_tool_histories_are_400_naming_the_field(oai, ant):
    """A history the model cannot be shown as it was is refused, naming the field, and the
    server goes on serving."""
    import anthropic
    import openai

    call = {"id": "call_1", "type": "function",
            "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
    unknown_id = [
        {"role": "user", "content": "Read a.txt"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": "hello"},
    ]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=unknown_id, tools=OAI_TOOLS, max_tokens=4)
    assert e.value.body["param"] == "messages[2].tool_call_id", e.value.body
    for args, why in (('{"path": ', "not valid JSON"), ("[1, 2]", "JSON object")):
        bad = {**call, "function": {"name": "read_file", "arguments": args}}
        history = [unknown_id[0], {"role": "assistant", "content": None, "tool_calls": [bad]},
                   {**unknown_id[2], "tool_call_id": "call_1"}]
        with pytest.raises(openai.BadRequestError) as e:
            oai.chat.completions.create(model=MODEL, messages=history, tools=OAI_TOOLS, max_tokens=4)
        assert e.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
        assert why in e.value.body["message"]

    use = {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.txt"}}
    for history, needle in (
        ([{"type": "tool_result", "tool_use_id": "toolu_2", "content": "hello"}], "toolu_2"),
        ([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello"}], None),
    ):
        messages = [{"role": "user", "content": "Read a.txt"},
                    {"role": "assistant", "content": [use]},
                    {"role": "user", "content": history}]
        if needle is None:
            assert ant.messages.create(model=CLAUDE, max_tokens=4, messages=messages, tools=ANT_TOOLS).content
            continue
        with pytest.raises(anthropic.BadRequestError) as e:
            ant.messages.create(model=CLAUDE, max_tokens=4, messages=messages, tools=ANT_TOOLS)
        assert e.value.body["error"]["type"] == "invalid_request_error"
        assert "messages.2.content.0" in e.value.body["error"]["message"]
        assert needle in e.value.body["error"]["message"]
    bad_input = [{"role": "user", "content": "Read a.txt"},
                 {"role": "assistant", "content": [{**use, "input": "a.txt"}]}]
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model=CLAUDE, max_tokens=4, messages=bad_input, tools=ANT_TOOLS)
    assert "input" in e.value.body["error"]["message"]
    # Still serving.
    assert oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2).choices


def ant_forced(ant, prompt, tool_choice, max_tokens=200, **kw):
    return ant.messages.create(
        model=CLAUDE, max_tokens=max_tokens, messages=[{"role": "user", "content": prompt}],
        tools=ANT_TOOLS, tool_choice=tool_choice, extra_body={"temperature": 0}, **kw,
    )


@pytest.mark.parametrize("i", range(SWEEP))
def test_anthropic_any_and_tool_choice_always_validate(ant, i):
    prompt = PROMPTS[i]
    m = ant_forced(ant, prompt, {"type": "any"})
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert uses
    for b in uses:
        assert b.id.startswith("toolu_") and all(ch.isalnum() or ch in "_-" for ch in b.id)
        validate_call(b.name, b.input)
    for t in named_tools(i + 3):
        name = t["name"]
        m = ant_forced(ant, prompt, {"type": "tool", "name": name, "disable_parallel_tool_use": True})
        uses = [b for b in m.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].name == name
        validate_call(name, uses[0].input)


def test_anthropic_stream_final_message_and_two_step_loop(ant):
    messages = [{"role": "user", "content": "What does the file notes.txt say?"}]
    with ant.messages.stream(
        model=CLAUDE, max_tokens=120, messages=messages, tools=ANT_TOOLS,
        tool_choice={"type": "tool", "name": "read_file"}, extra_body={"temperature": 0},
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "read_file"
    validate_call("read_file", uses[0].input)
    whole = ant_forced(ant, messages[0]["content"], {"type": "tool", "name": "read_file"}, max_tokens=120)
    assert [b.input for b in whole.content if b.type == "tool_use"] == [b.input for b in uses]

    messages.append({"role": "assistant", "content": [b.model_dump() for b in final.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Remember to water the plants."},
    ]})
    answer = ant.messages.create(model=CLAUDE, max_tokens=40, messages=messages, tools=ANT_TOOLS,
                                 extra_body={"temperature": 0})
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.content
    # count_tokens counts the tools too.
    bare = ant.messages.count_tokens(model=CLAUDE, messages=messages[:1]).input_tokens
    with_tools = ant.messages.count_tokens(model=CLAUDE, messages=messages[:1], tools=ANT_TOOLS).input_tokens
    assert with_tools > bare


def test_anthropic_tool_result_blocks_and_errors_accepted(ant):
    messages = [
        {"role": "user", "content": "Run ls."},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Running it."},
            {"type": "tool_use", "id": "toolu_1", "name": "run_shell", "input": {"command": "ls"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": [{"type": "text", "text": "permission denied"}]},
            {"type": "text", "text": "What went wrong?"},
        ]},
    ]
    m = ant.messages.create(model=CLAUDE, max_tokens=16, messages=messages, tools=ANT_TOOLS,
                            extra_body={"temperature": 0})
    assert m.content


@pytest.mark.parametrize("i", range(0, SWEEP, 2))
def test_openai_auto_answers_text_or_a_valid_call(oai, i):
    """auto: the model decides; whatever it decides comes back well-formed."""
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPTS[i]}], tools=OAI_TOOLS,
        temperature=0, max_tokens=120,
    )
    c = r.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"
        for call in c.message.tool_calls:
            validate_call(call.function.name, json.loads(call.function.arguments))
    else:
        # Text; a call shows as text only when the budget cut it ("length").
        assert c.message.content, c.message
        assert "<tool_call>" not in c.message.content or c.finish_reason == "length", c
