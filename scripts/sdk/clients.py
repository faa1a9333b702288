"""The official OpenAI and Anthropic Python SDKs against kt, for
scripts/sdk-smoke.sh: whole and streamed answers through the direct API
(base URL) or through the forward proxy (HTTPS_PROXY, kt's CA trusted via
SSL_CERT_FILE). Exits non-zero, naming the call, on any wrong answer.

Usage: clients.py direct BASE_URL KT_KEY | clients.py proxy
"""

import sys

import anthropic
import openai

WANT = "Hello from the origin"
MESSAGES = [{"role": "user", "content": "hi"}]


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok: {what}")


def run(oai, ant):
    r = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    check("openai chat", (r.choices[0].message.content, r.usage.total_tokens), (WANT, 13))

    text, usage = "", None
    for chunk in oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    check("openai chat stream", (text, usage), (WANT, 4))

    m = ant.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MESSAGES)
    check("anthropic messages", (m.content[0].text, m.usage.output_tokens), (WANT, 4))

    with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=16, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    check("anthropic messages stream", (text, final.usage.output_tokens), (WANT, 4))


def main():
    mode = sys.argv[1]
    if mode == "direct":
        base, key = sys.argv[2], sys.argv[3]
        run(
            openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0),
            anthropic.Anthropic(base_url=base, api_key=key, max_retries=0),
        )
    else:
        # The client's own provider credentials: kt passes them through.
        run(
            openai.OpenAI(api_key="sk-client-own-openai", max_retries=0),
            anthropic.Anthropic(api_key="sk-ant-client-own", max_retries=0),
        )


if __name__ == "__main__":
    main()
