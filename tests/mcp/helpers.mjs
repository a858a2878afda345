// Helpers for the MCP suite: the official MCP TypeScript SDK against running Concord
// servers. CONCORD_URL is a server without authentication; CONCORD_AUTH_URL one with tokens
// (CONCORD_ADMIN_TOKEN, CONCORD_WRITER_TOKEN: agent "writer", write:*; CONCORD_READER_TOKEN:
// agent "reader", read:*).
//
// Every wait is on an answer: no test sleeps.

import assert from "node:assert/strict"
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js"

export const BASE = process.env.CONCORD_URL
export const AUTH_BASE = process.env.CONCORD_AUTH_URL
if (!BASE || !AUTH_BASE) {
  throw new Error("set CONCORD_URL and CONCORD_AUTH_URL to the base URLs of running Concord servers")
}
export const TOKENS = {
  admin: process.env.CONCORD_ADMIN_TOKEN,
  writer: process.env.CONCORD_WRITER_TOKEN,
  reader: process.env.CONCORD_READER_TOKEN,
}

/** An MCP client connected to `base`/mcp, with these HTTP headers on every request. */
export async function connect({ base = BASE, agent, token } = {}) {
  const headers = {}
  if (agent) headers["Concord-Agent"] = agent
  if (token) headers["Authorization"] = `Bearer ${token}`
  const transport = new StreamableHTTPClientTransport(new URL(base + "/mcp"), {
    requestInit: { headers },
  })
  const client = new Client({ name: agent ?? "concord-mcp-suite", version: "1.0.0" })
  await client.connect(transport)
  return client
}

/** Calls a tool that must succeed; returns its structured content. */
export async function ok(client, name, args = {}) {
  const result = await client.callTool({ name, arguments: args })
  assert.notEqual(result.isError, true, `${name} failed: ${JSON.stringify(result.content)}`)
  assert.deepEqual(JSON.parse(result.content[0].text), result.structuredContent,
    "the text content is the structured content as JSON")
  return result.structuredContent
}

/** Calls a tool that must fail; returns its problem (type, title, status, detail). */
export async function fails(client, name, args, status, kind) {
  const result = await client.callTool({ name, arguments: args })
  assert.equal(result.isError, true, `${name}(${JSON.stringify(args)}) should fail, got ${JSON.stringify(result.structuredContent)}`)
  const problem = result.structuredContent
  assert.deepEqual(JSON.parse(result.content[0].text), problem)
  assert.equal(typeof problem.title, "string")
  assert.equal(typeof problem.detail, "string")
  assert.ok(problem.detail.length > 0)
  if (status !== undefined) assert.equal(problem.status, status, `${name}: ${problem.detail}`)
  if (kind !== undefined) assert.equal(problem.type, `urn:concord:problem:${kind}`, `${name}: ${problem.detail}`)
  return problem
}
