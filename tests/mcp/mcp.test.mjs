// The /mcp endpoint with the official MCP TypeScript SDK: tools, the read-version-write
// protocol, authentication, idempotent retries, and every tool's problems.

import { test, after } from "node:test"
import assert from "node:assert/strict"
import { connect, ok, fails, AUTH_BASE, TOKENS } from "./helpers.mjs"

const clients = []
async function client(options) {
  const c = await connect(options)
  clients.push(c)
  return c
}
after(async () => {
  for (const c of clients) await c.close()
})

const TOOLS = [
  "list_documents", "create_document", "read_document", "write_document", "patch_document",
  "document_history", "list_conflicts", "settle_conflict", "settle_lost_edit",
  "fork_document", "merge_fork", "lock_document", "release_lock",
]
const UNKNOWN = "7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10"

test("every tool is listed with a description and an input schema", async () => {
  const c = await client()
  const { tools } = await c.listTools()
  assert.deepEqual(tools.map(t => t.name).sort(), [...TOOLS].sort())
  for (const tool of tools) {
    assert.ok(tool.description && tool.description.length > 20, `${tool.name} has a description`)
    assert.equal(tool.inputSchema.type, "object", `${tool.name} has an input schema`)
  }
  const write = tools.find(t => t.name === "write_document")
  assert.deepEqual([...write.inputSchema.required].sort(), ["base_version", "id", "value"])
  assert.match(write.description, /base_version/)
})

test("the lost update: both agents read, B writes, A writes from its stale read, both edits survive", async () => {
  const a = await client({ agent: "agent-a" })
  const b = await client({ agent: "agent-b" })
  const created = await ok(a, "create_document", { value: { findings: [] } })
  const readA = await ok(a, "read_document", { id: created.id })
  const readB = await ok(b, "read_document", { id: created.id })
  assert.equal(readA.version, created.version)
  assert.equal(readB.version, created.version)

  const wroteB = await ok(b, "write_document", {
    id: created.id, base_version: readB.version, value: { findings: ["B: the cache is stale"] },
  })
  assert.notEqual(wroteB.version, created.version)
  const wroteA = await ok(a, "write_document", {
    id: created.id, base_version: readA.version, value: { findings: ["A: the index is missing"] },
  })
  assert.deepEqual([...wroteA.value.findings].sort(), ["A: the index is missing", "B: the cache is stale"])

  const now = await ok(b, "read_document", { id: created.id })
  assert.equal(now.version, wroteA.version)
  assert.deepEqual([...now.value.findings].sort(), ["A: the index is missing", "B: the cache is stale"])
  const history = await ok(a, "document_history", { id: created.id })
  const agents = history.changes.map(c => c.agent)
  assert.ok(agents.includes("agent-a") && agents.includes("agent-b"), JSON.stringify(agents))
})

test("a JSON Patch at a stale version means what its paths meant then", async () => {
  const a = await client({ agent: "agent-a" })
  const b = await client({ agent: "agent-b" })
  const created = await ok(a, "create_document", { value: { items: ["x", "y"] } })
  const v1 = created.version
  await ok(b, "patch_document", { id: created.id, base_version: v1, patch: [{ op: "add", path: "/items/0", value: "w" }] })
  const stale = await ok(a, "patch_document", {
    id: created.id, base_version: v1, patch: [{ op: "replace", path: "/items/1", value: "Y" }],
  })
  assert.deepEqual(stale.value.items, ["w", "x", "Y"])
  const sub = await ok(a, "read_document", { id: created.id, path: "/items/2" })
  assert.equal(sub.value, "Y")
  const then = await ok(a, "read_document", { id: created.id, at: v1 })
  assert.deepEqual(then.value.items, ["x", "y"])
})

test("a conflict is listed with every value and settled", async () => {
  const a = await client({ agent: "agent-a" })
  const b = await client({ agent: "agent-b" })
  const created = await ok(a, "create_document", { value: { title: "draft" } })
  await ok(a, "write_document", { id: created.id, base_version: created.version, value: { title: "from A" } })
  await ok(b, "write_document", { id: created.id, base_version: created.version, value: { title: "from B" } })
  const listed = await ok(a, "list_conflicts", { id: created.id })
  assert.equal(listed.conflicts.length, 1, JSON.stringify(listed))
  assert.equal(listed.conflicts[0].path, "/title")
  const read = await ok(a, "read_document", { id: created.id, conflicts: true })
  assert.deepEqual(read.conflicts, listed.conflicts)

  const settled = await ok(a, "settle_conflict", { id: created.id, path: "/title", value: "from A and B" })
  assert.equal(settled.value.title, "from A and B")
  const after = await ok(b, "list_conflicts", { id: created.id })
  assert.deepEqual(after.conflicts, [])
  assert.equal(after.version, settled.version)
})

test("a lost edit is listed and restored", async () => {
  const a = await client({ agent: "agent-a" })
  const b = await client({ agent: "agent-b" })
  const created = await ok(a, "create_document", { value: { a: { x: 1 } } })
  await ok(b, "patch_document", { id: created.id, base_version: created.version, patch: [{ op: "replace", path: "/a/x", value: 2 }] })
  await ok(a, "write_document", { id: created.id, base_version: created.version, value: {} })
  const listed = await ok(a, "list_conflicts", { id: created.id })
  assert.equal(listed.lost.length, 1, JSON.stringify(listed))
  const restored = await ok(a, "settle_lost_edit", { id: created.id, lost: listed.lost[0].id, action: "restore" })
  assert.deepEqual(restored.value, { a: { x: 2 } })
  await fails(a, "settle_lost_edit", { id: created.id, lost: listed.lost[0].id, action: "dismiss" }, 404, "lost-not-found")
})

test("fork, edit the fork, merge it back", async () => {
  const c = await client({ agent: "brancher" })
  const created = await ok(c, "create_document", { value: { notes: [] }, strategy: "branches" })
  const fork = await ok(c, "fork_document", { id: created.id })
  assert.notEqual(fork.id, created.id)
  await ok(c, "write_document", { id: fork.id, base_version: fork.version, value: { notes: ["in the fork"] } })
  const parent = await ok(c, "read_document", { id: created.id })
  assert.deepEqual(parent.value.notes, [])
  const merged = await ok(c, "merge_fork", { id: created.id, fork: fork.id })
  assert.deepEqual(merged.value.notes, ["in the fork"])
  await fails(c, "merge_fork", { id: created.id, fork: created.id }, 422, "invalid-body")
  await fails(c, "merge_fork", { id: created.id, fork: UNKNOWN }, 422, "unknown-fork")
  const locked = await ok(c, "create_document", { strategy: "lock" })
  await fails(c, "fork_document", { id: locked.id }, 409, "strategy-refuses")
})

test("a lock document takes writes only with the newest lease", async () => {
  const c = await client({ agent: "locker" })
  const other = await client({ agent: "other" })
  const created = await ok(c, "create_document", { value: { n: 0 }, strategy: "lock" })
  const needs = await fails(c, "write_document", { id: created.id, base_version: "*", value: { n: 1 } }, 428)
  assert.match(needs.detail, /lock_token/)
  assert.match(needs.detail, /lock_document/)
  const lease = await ok(c, "lock_document", { id: created.id, ttl_ms: 60000 })
  const held = await fails(other, "lock_document", { id: created.id }, 423, "locked")
  assert.ok(!JSON.stringify(held).includes(lease.token), held.detail)
  // The token is bound to its holder: another agent that knows it can neither write with it
  // nor release it, and is not told the holder's token.
  for (const [tool, args] of [
    ["write_document", { id: created.id, base_version: "*", value: { n: 9 }, lock_token: lease.token }],
    ["release_lock", { id: created.id, lock_token: lease.token }],
    ["write_document", { id: created.id, base_version: "*", value: { n: 9 }, lock_token: "0" }],
  ]) {
    const refused = await fails(other, tool, args, 409, "fenced")
    assert.ok(!JSON.stringify(refused).includes(lease.token), refused.detail)
  }
  const wrote = await ok(c, "write_document", { id: created.id, base_version: "*", value: { n: 1 }, lock_token: lease.token })
  assert.deepEqual(wrote.value, { n: 1 })
  await ok(c, "patch_document", { id: created.id, patch: [{ op: "replace", path: "/n", value: 2 }], lock_token: Number(lease.token) })
  await ok(c, "release_lock", { id: created.id, lock_token: lease.token })
  await fails(c, "write_document", { id: created.id, base_version: "*", value: { n: 3 }, lock_token: lease.token }, 409)
  await fails(c, "release_lock", { id: created.id, lock_token: "not a number" }, 400, "invalid-lock-token")
})

test("a write retried with the same idempotency_key applies once", async () => {
  const c = await client({ agent: "retrier" })
  const created = await ok(c, "create_document", { value: { count: 0 }, counters: ["/count"], idempotency_key: "create-1" })
  const again = await ok(c, "create_document", { value: { count: 0 }, counters: ["/count"], idempotency_key: "create-1" })
  assert.equal(again.id, created.id)
  assert.equal(again.replayed, true)
  assert.equal(created.replayed, false)

  const call = { id: created.id, base_version: created.version, patch: [{ op: "increment", path: "/count", value: 5 }], idempotency_key: "inc-1" }
  const first = await ok(c, "patch_document", call)
  const retry = await ok(c, "patch_document", call)
  assert.equal(first.replayed, false)
  assert.equal(retry.replayed, true)
  assert.equal(retry.version, first.version)
  const now = await ok(c, "read_document", { id: created.id })
  assert.equal(now.value.count, 5)
  assert.equal(now.version, first.version)
  const history = await ok(c, "document_history", { id: created.id })
  assert.equal(history.changes.filter(ch => ch.agent === "retrier").length, 2, "one create, one increment")

  await fails(c, "patch_document", { ...call, patch: [{ op: "increment", path: "/count", value: 6 }] }, 422, "idempotency-key-reused")
  await fails(c, "write_document", { id: created.id, base_version: "*", value: {}, idempotency_key: "" }, 400, "invalid-idempotency-key")
})

test("a read-only token reads but every write tool is refused", async () => {
  const admin = await client({ base: AUTH_BASE, token: TOKENS.admin })
  const reader = await client({ base: AUTH_BASE, token: TOKENS.reader })
  const writer = await client({ base: AUTH_BASE, token: TOKENS.writer, agent: "someone-else" })
  const created = await ok(admin, "create_document", { value: { n: 1 } })
  const forks = await ok(admin, "create_document", { value: {}, strategy: "branches" })
  const locks = await ok(admin, "create_document", { value: {}, strategy: "lock" })

  const read = await ok(reader, "read_document", { id: created.id })
  assert.deepEqual(read.value, { n: 1 })
  await ok(reader, "document_history", { id: created.id })
  await ok(reader, "list_conflicts", { id: created.id })

  const id = created.id
  const v = read.version
  const writes = [
    ["write_document", { id, base_version: v, value: { n: 2 } }],
    ["patch_document", { id, base_version: v, patch: [{ op: "replace", path: "/n", value: 2 }] }],
    ["settle_conflict", { id, path: "/n", value: 2 }],
    ["settle_lost_edit", { id, lost: "x-0", action: "dismiss" }],
    ["fork_document", { id: forks.id }],
    ["merge_fork", { id: forks.id, fork: created.id }],
    ["lock_document", { id: locks.id }],
    ["release_lock", { id: locks.id, lock_token: "1" }],
    ["create_document", { value: {} }],
    ["list_documents", {}],
  ]
  for (const [name, args] of writes) {
    const problem = await fails(reader, name, args, 403, "forbidden")
    assert.match(problem.detail, /reader/, `${name} names the token's agent`)
  }
  const still = await ok(reader, "read_document", { id })
  assert.equal(still.version, v, "nothing was written")

  // The token decides the agent: a header naming someone else is ignored.
  await ok(writer, "write_document", { id, base_version: v, value: { n: 2 } })
  const history = await ok(admin, "document_history", { id })
  assert.equal(history.changes.at(-1).agent, "writer")
  await fails(writer, "list_documents", {}, 403, "forbidden")
  const listed = await ok(admin, "list_documents", {})
  assert.ok(listed.docs.some(d => d.id === id))
})

test("every tool answers its problems as tool errors", async () => {
  const c = await client({ agent: "careless" })
  const created = await ok(c, "create_document", { value: { a: 1 } })
  const id = created.id
  const v = created.version

  // Unknown document.
  const unknown = {
    read_document: { id: UNKNOWN },
    write_document: { id: UNKNOWN, base_version: "*", value: {} },
    patch_document: { id: UNKNOWN, patch: [] },
    document_history: { id: UNKNOWN },
    list_conflicts: { id: UNKNOWN },
    settle_conflict: { id: UNKNOWN, path: "/a", value: 1 },
    settle_lost_edit: { id: UNKNOWN, lost: "x-0", action: "restore" },
    fork_document: { id: UNKNOWN },
    merge_fork: { id: UNKNOWN, fork: id },
    lock_document: { id: UNKNOWN },
    release_lock: { id: UNKNOWN, lock_token: "1" },
  }
  for (const [name, args] of Object.entries(unknown)) {
    await fails(c, name, args, 404, "not-found")
  }
  // Not a document id at all.
  for (const name of Object.keys(unknown)) {
    await fails(c, name, { ...unknown[name], id: "not-an-id" }, 400, "invalid-id")
  }
  await fails(c, "create_document", { id: "not-an-id" }, 400, "invalid-id")
  await fails(c, "create_document", { id }, 409, "already-exists")
  await fails(c, "create_document", { strategy: "telepathy" }, 422, "invalid-strategy")
  await fails(c, "create_document", { value: [1, 2] }, 422)

  // Bad versions: malformed, and well-formed but unknown.
  const fake = "ab".repeat(32)
  await fails(c, "read_document", { id, at: "nonsense" }, 400, "invalid-version")
  await fails(c, "read_document", { id, at: fake }, 404, "unknown-version")
  await fails(c, "write_document", { id, base_version: "nonsense", value: {} }, 400, "invalid-version")
  await fails(c, "write_document", { id, base_version: `"${v}"`, value: {} }, 400, "invalid-version")
  await fails(c, "write_document", { id, base_version: fake, value: {} }, 412, "unknown-version")
  await fails(c, "patch_document", { id, base_version: "nonsense", patch: [] }, 400, "invalid-version")
  await fails(c, "settle_conflict", { id, path: "/a", value: 2, base_version: "nonsense" }, 400, "invalid-version")

  // Bad pointers.
  await fails(c, "read_document", { id, path: "a" }, 400, "invalid-pointer")
  await fails(c, "read_document", { id, path: "/nowhere" }, 404, "path-not-found")
  await fails(c, "settle_conflict", { id, path: "nowhere", value: 1 }, 400)
  await fails(c, "patch_document", { id, base_version: v, patch: [{ op: "replace", path: "/nowhere", value: 1 }] }, 409, "path-not-found")

  // Bad patches.
  await fails(c, "patch_document", { id, base_version: v, patch: { op: "add" } }, 400, "invalid-patch")
  await fails(c, "patch_document", { id, base_version: v, patch: [{ op: "jump", path: "/a" }] }, 400, "invalid-patch")
  await fails(c, "patch_document", { id, base_version: v, patch: [{ op: "test", path: "/a", value: 2 }] }, 409, "test-failed")

  // Missing and mistyped arguments.
  const required = {
    read_document: {}, write_document: { id, value: {} }, patch_document: { id },
    document_history: {}, list_conflicts: {}, settle_conflict: { id, path: "/a" },
    settle_lost_edit: { id, lost: "x-0" }, fork_document: {}, merge_fork: { id },
    lock_document: {}, release_lock: { id },
  }
  for (const [name, args] of Object.entries(required)) {
    const problem = await fails(c, name, args, 400, "invalid-arguments")
    assert.match(problem.detail, /missing field/, `${name}: ${problem.detail}`)
  }
  await fails(c, "read_document", { id, conflicts: "yes" }, 400, "invalid-arguments")
  await fails(c, "read_document", { id, colour: "blue" }, 400, "invalid-arguments")
  await fails(c, "settle_lost_edit", { id, lost: "x-0", action: "forget" }, 400, "invalid-arguments")
  await fails(c, "lock_document", { id, ttl_ms: 0 }, 422, "invalid-body")

  // After all that, the document is as it was.
  const now = await ok(c, "read_document", { id })
  assert.equal(now.version, v)
  assert.deepEqual(now.value, { a: 1 })
})
