"""A Python MCP server (the `mcp` SDK's MCPServer, formerly FastMCP) that
tests/mcp/e2e.py, tests/otel/e2e.py and the UI's browser test register as a
Switchboard agent: `http PORT [DESCRIPTION]` serves streamable HTTP at
http://127.0.0.1:PORT/mcp, `stdio` serves stdin/stdout. DESCRIPTION replaces
`forecast`'s own, so a test can restart the server with a changed tool."""

import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("weather")


@server.tool(description=sys.argv[3] if len(sys.argv) > 3 else None)
def forecast(city: str) -> str:
    """The forecast for a city."""
    return f"sunny in {city}"


@server.tool()
def refuse(reason: str) -> str:
    """Always fails, with the reason."""
    raise ValueError(f"refused: {reason}")


@server.tool()
def traceparent(ctx: Context) -> str:
    """The W3C traceparent this call came with in params._meta ("" if none)."""
    meta = ctx.request_context.meta or {}
    return meta.get("traceparent", "")


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run()
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
