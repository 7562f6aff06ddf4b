"""The tools, prompts, resources and completions the MCP conformance suite's
server scenarios call, served by the `mcp` SDK's MCPServer on streamable
HTTP: scripts/mcp-test registers it as a Switchboard MCP agent and runs the
suite against Switchboard's /mcp, so a scenario passes only if Switchboard
relays what this server answers.

`PORT` is the port to serve http://127.0.0.1:PORT/mcp on.
"""

import asyncio
import base64
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.types import (
    AudioContent,
    CreateMessageRequest,
    ElicitRequest,
    InputRequiredResult,
    Completion,
    EmptyResult,
    EmbeddedResource,
    ImageContent,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)

server = MCPServer("conformance-fixture")

# A 1x1 transparent PNG and a silent WAV header: real media, a few bytes.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
    )
).decode()
WAV = base64.b64encode(
    b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    + (8000).to_bytes(4, "little") + (8000).to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    + b"data" + (0).to_bytes(4, "little")
).decode()


@server.tool(structured_output=False)
def test_simple_text():
    """Returns one text block."""
    return [TextContent(type="text", text="This is a simple text response for testing.")]


@server.tool(structured_output=False)
def test_image_content():
    """Returns one PNG image."""
    return [ImageContent(type="image", data=PNG, mimeType="image/png")]


@server.tool(structured_output=False)
def test_audio_content():
    """Returns one WAV clip."""
    return [AudioContent(type="audio", data=WAV, mimeType="audio/wav")]


@server.tool(structured_output=False)
def test_embedded_resource():
    """Returns one embedded text resource."""
    return [
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://embedded-resource",
                mimeType="text/plain",
                text="This is an embedded resource content.",
            ),
        )
    ]


@server.tool(structured_output=False)
def test_multiple_content_types():
    """Returns text, an image and an embedded resource."""
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mimeType="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mimeType="application/json",
                text='{"test":"data","value":123}',
            ),
        ),
    ]


@server.tool(structured_output=False)
def test_error_handling():
    """Always fails."""
    raise ValueError("This tool intentionally returns an error for testing")


@server.tool(structured_output=False)
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50 and 100 of 100, 50 ms apart."""
    for step in (0, 50, 100):
        await ctx.report_progress(step, 100)
        if step < 100:
            await asyncio.sleep(0.05)
    return "Progress test completed"


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Logs three info messages, 50 ms apart, on the call's own stream (a
    2026-07-28 call gets them only if its `_meta` asks for a log level)."""
    for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(message)
        await asyncio.sleep(0.05)
    return "Logging test completed"


def answered(ctx: Context, key: str):
    """The client's answer to input request `key`, as JSON, or None on the
    first round (when the tool asks for it)."""
    answer = (ctx.input_responses or {}).get(key)
    if answer is None or isinstance(answer, dict):
        return answer
    return answer.model_dump(by_alias=True, exclude_none=True)


def ask(key: str, request) -> InputRequiredResult:
    """Asks the client for input (the 2026-07-28 multi round-trip form,
    which Switchboard turns into a request to a 2025 client)."""
    return InputRequiredResult(input_requests={key: request})


def elicitation(message: str, schema: dict) -> ElicitRequest:
    return ElicitRequest.model_validate(
        {"method": "elicitation/create", "params": {"message": message, "requestedSchema": schema}}
    )


@server.tool(structured_output=False)
async def test_sampling(prompt: str, ctx: Context):
    """Asks the client's model to complete `prompt`."""
    answer = answered(ctx, "sample")
    if answer is None:
        return ask(
            "sample",
            CreateMessageRequest.model_validate(
                {
                    "method": "sampling/createMessage",
                    "params": {
                        "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
                        "maxTokens": 100,
                    },
                }
            ),
        )
    return [TextContent(type="text", text=f"LLM response: {answer['content']['text']}")]


@server.tool(structured_output=False)
async def test_elicitation(message: str, ctx: Context):
    """Asks the user for a username and an email."""
    answer = answered(ctx, "user")
    if answer is None:
        return ask(
            "user",
            elicitation(
                message,
                {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"},
                    },
                    "required": ["username", "email"],
                },
            ),
        )
    return [TextContent(type="text", text=f"User response: {answer}")]


@server.tool(structured_output=False)
async def test_elicitation_sep1034_defaults(ctx: Context):
    """Asks with a default for every primitive type."""
    answer = answered(ctx, "defaults")
    if answer is None:
        return ask(
            "defaults",
            elicitation(
                "Please review and update the form fields with defaults",
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "default": "John Doe"},
                        "age": {"type": "integer", "default": 30},
                        "score": {"type": "number", "default": 95.5},
                        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                        "verified": {"type": "boolean", "default": True},
                    },
                },
            ),
        )
    return [TextContent(type="text", text=f"Elicitation completed: {answer}")]


@server.tool(structured_output=False)
async def test_elicitation_sep1330_enums(ctx: Context):
    """Asks with every enum form."""
    answer = answered(ctx, "enums")
    if answer is None:
        options = [{"const": f"value{i}", "title": f"Value {i}"} for i in (1, 2, 3)]
        return ask(
            "enums",
            elicitation(
                "Please select options",
                {
                    "type": "object",
                    "properties": {
                        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                        "titledSingle": {"type": "string", "oneOf": options},
                        "legacyEnum": {
                            "type": "string",
                            "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"],
                        },
                        "untitledMulti": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                        },
                        "titledMulti": {"type": "array", "items": {"anyOf": options}},
                    },
                },
            ),
        )
    return [TextContent(type="text", text=f"Elicitation completed: {answer}")]


@server.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A PNG resource."""
    return base64.b64decode(PNG)


@server.resource("test://watched-resource", mime_type="text/plain")
def watched_resource() -> str:
    """A resource clients subscribe to."""
    return "Watched resource content."


@server.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource per id."""
    return '{"id":"%s","templateTest":true,"data":"Data for ID: %s"}' % (id, id)


@server.prompt()
def test_simple_prompt() -> list:
    """A prompt without arguments."""
    return [UserMessage("This is a simple prompt for testing.")]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list:
    """A prompt with two arguments."""
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list:
    """A prompt that embeds a resource."""
    return [
        UserMessage(
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri,
                    mimeType="text/plain",
                    text="Embedded resource content for testing.",
                ),
            )
        ),
        UserMessage("Please process the embedded resource above."),
    ]


@server.prompt()
def test_prompt_with_image() -> list:
    """A prompt with an image."""
    return [
        UserMessage(ImageContent(type="image", data=PNG, mimeType="image/png")),
        UserMessage("Please analyze the image above."),
    ]


@server.completion()
async def complete(ref, argument, context):
    """Completes arg1 of test_prompt_with_arguments from a fixed list."""
    words = ["paris", "park", "party"]
    return Completion(values=[w for w in words if w.startswith(argument.value)], total=3, hasMore=False)


async def on_subscribe(ctx, params: SubscribeRequestParams) -> EmptyResult:
    return EmptyResult()


async def on_unsubscribe(ctx, params: UnsubscribeRequestParams) -> EmptyResult:
    return EmptyResult()


server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
