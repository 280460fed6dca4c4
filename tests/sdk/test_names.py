"""--strict-model-names with --served-model-name and --alias globs."""

import anthropic
import openai
import pytest

from harness import Backstop


@pytest.fixture(scope="module")
def strict_server():
    try:
        s = Backstop("--strict-model-names", "--served-model-name", "local-smol", "--alias", "claude-*")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield s
    s.stop()


Q = [{"role": "user", "content": "Hi"}]


def test_strict_names(strict_server):
    o = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="unused", max_retries=0)
    assert "local-smol" in [m.id for m in o.models.list()]
    assert o.chat.completions.create(model="local-smol", messages=Q, max_tokens=2).model == "local-smol"
    assert o.chat.completions.create(model="claude-x-1", messages=Q, max_tokens=2).model == "claude-x-1"
    with pytest.raises(openai.NotFoundError) as e:
        o.chat.completions.create(model="gpt-4o", messages=Q, max_tokens=2)
    assert isinstance(e.value.body, dict) and e.value.body.get("message"), e.value.body

    a = anthropic.Anthropic(base_url=strict_server.url, api_key="unused", max_retries=0)
    assert a.messages.create(model="claude-sonnet-4-5", messages=Q, max_tokens=2).model == "claude-sonnet-4-5"
    with pytest.raises(anthropic.NotFoundError) as e2:
        a.messages.create(model="gpt-4o", messages=Q, max_tokens=2)
    assert e2.value.body.get("type") == "error", e2.value.body
