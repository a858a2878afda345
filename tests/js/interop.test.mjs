// The official automerge-repo JavaScript client against Concord's /v1/repo endpoint.
// Run by `cargo test -p concord-tests --test interop`, which starts the server and sets
// CONCORD_URL; or by hand: CONCORD_URL=http://127.0.0.1:7878 node --test

import { test, after } from "node:test"
import assert from "node:assert/strict"
import * as A from "@automerge/automerge"
import { generateAutomergeUrl, parseAutomergeUrl } from "@automerge/automerge-repo"

import { connect, until, stored, http, plain } from "./helpers.mjs"

const TIMEOUT = { timeout: 30_000 }
const repos = []
async function repo() {
  const r = await connect()
  repos.push(r)
  return r
}
after(async () => {
  await Promise.all(repos.map(r => r.shutdown()))
})

/** Creates a document over HTTP; returns its id and automerge URL. */
async function createOverHttp(value) {
  const created = await http("POST", "/v1/docs", { value })
  assert.equal(created.status, 201, JSON.stringify(created.body))
  const read = await http("GET", `/v1/docs/${created.body.id}`)
  assert.equal(read.status, 200)
  assert.match(read.body.url, /^automerge:[1-9A-HJ-NP-Za-km-z]+$/)
  return { id: created.body.id, url: read.body.url }
}

test("a document created over HTTP is found in JS, and HTTP edits appear there", TIMEOUT, async () => {
  const { id, url } = await createOverHttp({ title: "plan", items: ["a"], n: 1 })
  const js = await repo()
  const handle = await js.find(url)
  assert.deepEqual(plain(handle.doc()), { title: "plan", items: ["a"], n: 1 })

  const patched = await http(
    "PATCH",
    `/v1/docs/${id}`,
    [
      { op: "add", path: "/items/-", value: "from http" },
      { op: "replace", path: "/n", value: 2 },
    ],
    { "content-type": "application/json-patch+json", "concord-agent": "http-agent" },
  )
  assert.equal(patched.status, 200, JSON.stringify(patched.body))
  const doc = await until(handle, d => d.n === 2)
  assert.deepEqual(plain(doc), { title: "plan", items: ["a", "from http"], n: 2 })
})

test("JS edits appear over HTTP", TIMEOUT, async () => {
  const { id, url } = await createOverHttp({ items: [], count: 0 })
  const js = await repo()
  const handle = await js.find(url)
  handle.change(d => {
    d.items.push("from js")
    d.count = 41
    d.note = "written in JS"
  })
  await stored(js, handle)
  const read = await http("GET", `/v1/docs/${id}`)
  assert.equal(read.status, 200)
  assert.deepEqual(read.body.value, { items: ["from js"], count: 41, note: "written in JS" })
})

test("a document created in JS becomes a Concord document, shared by two JS clients", TIMEOUT, async () => {
  const a = await repo()
  const b = await repo()
  const handleA = a.create({ items: ["first"], title: "made in JS" })
  await stored(a, handleA)

  // Concord has it under the UUID inside the automerge id, as a crdt document.
  const concordId = uuidOf(handleA.url)
  const read = await http("GET", `/v1/docs/${concordId}`)
  assert.equal(read.status, 200, JSON.stringify(read.body))
  assert.equal(read.body.url, handleA.url)
  assert.equal(read.body.strategy, "crdt")
  assert.deepEqual(read.body.value, { items: ["first"], title: "made in JS" })

  // B finds it through Concord; both edit concurrently; both converge, and so does HTTP.
  const handleB = await b.find(handleA.url)
  assert.deepEqual(plain(handleB.doc()), { items: ["first"], title: "made in JS" })
  handleA.change(d => d.items.push("from A"))
  handleB.change(d => d.items.push("from B"))
  const both = d => d.items.length === 3
  const [docA, docB] = await Promise.all([until(handleA, both), until(handleB, both)])
  assert.deepEqual(plain(docA), plain(docB))
  assert.deepEqual([...docA.items].sort(), ["first", "from A", "from B"])
  await Promise.all([stored(a, handleA), stored(b, handleB)])
  const after = await http("GET", `/v1/docs/${concordId}`)
  assert.deepEqual(after.body.value, plain(docA))
})

test("text written in JS merges character by character with an HTTP write", TIMEOUT, async () => {
  const js = await repo()
  const handle = js.create({ note: "hello world" })
  await stored(js, handle)
  const id = uuidOf(handle.url)
  const read = await http("GET", `/v1/docs/${id}`)
  assert.deepEqual(read.body.value, { note: "hello world" })

  // HTTP rewrites the note from the version it read; JS appends to it; both survive.
  const put = await http("PUT", `/v1/docs/${id}`, { note: "hello brave world" }, {
    "if-match": `"${read.body.version}"`,
  })
  assert.equal(put.status, 200, JSON.stringify(put.body))
  handle.change(d => A.splice(d, ["note"], d.note.length, 0, "!"))
  const doc = await until(handle, d => String(d.note) === "hello brave world!")
  await stored(js, handle)
  const after = await http("GET", `/v1/docs/${id}`)
  assert.deepEqual(after.body.value, plain(doc))
})

test("finding a document nobody has fails as unavailable", TIMEOUT, async () => {
  const js = await repo()
  await assert.rejects(js.find(generateAutomergeUrl()), /unavailable/)
})

test("a document of another strategy is unavailable to sync", TIMEOUT, async () => {
  const created = await http("POST", "/v1/docs", { value: { k: 1 }, strategy: "lww" })
  assert.equal(created.status, 201)
  const read = await http("GET", `/v1/docs/${created.body.id}`)
  const js = await repo()
  await assert.rejects(js.find(read.body.url), /unavailable/)
})

test("ephemeral messages are relayed between JS clients of one document", TIMEOUT, async () => {
  const { url } = await createOverHttp({ k: 1 })
  const a = await repo()
  const b = await repo()
  const handleA = await a.find(url)
  const handleB = await b.find(url)
  const received = new Promise(resolve => {
    handleB.on("ephemeral-message", ({ message }) => resolve(message))
  })
  // Concord relays to connections that have the document open; B has (find resolved after
  // a sync round trip), so one broadcast from A reaches it.
  handleA.broadcast({ cursor: 7, from: "A" })
  assert.deepEqual(await received, { cursor: 7, from: "A" })
})

/** The UUID (Concord's document id) whose 16 bytes an automerge URL names. */
function uuidOf(url) {
  const hex = Buffer.from(parseAutomergeUrl(url).binaryDocumentId).toString("hex")
  return [8, 12, 16, 20].reduceRight((h, at) => h.slice(0, at) + "-" + h.slice(at), hex)
}
