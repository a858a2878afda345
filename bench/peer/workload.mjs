// Benchmark item 6 (the peer): one JavaScript automerge-repo client workload, run against
// any automerge-repo WebSocket server: the official sync server (sync-server.mjs) or
// Concord's `ws://HOST/v1/repo`.
//
//   node workload.mjs --url ws://127.0.0.1:PORT[/v1/repo] [--label NAME]
//        [--workloads one-doc,many-docs]
//        [--one-clients 4] [--one-changes 50]
//        [--many-clients 8] [--many-docs 20] [--many-changes 5] [--followers 1]
//        [--client-sync-debounce-ms 100] [--timeout-ms 120000] [--server-pid PID]
//
// N clients, each its own Repo with its own WebSocket connection (all in this process),
// no client storage:
// - one-doc: client 0 creates one document, the others find it; every client makes
//   `--one-changes` changes to it (each sets its own key to the round number).
// - many-docs: each client creates `--many-docs` documents and makes `--many-changes`
//   changes to each; each document is also followed (found, not edited) by the next
//   `--followers` clients, so every change travels writer → server → follower.
//
// Each client works in rounds, closed-loop like an agent: it changes each of its documents
// once, then waits until the server acknowledged each of those changes, then starts the next
// round. A change is acknowledged when the heads the server reported for the document (the
// remote heads that automerge-repo records per storage id, as tests/js does) cover it: the
// server has it. No sleeping anywhere; every wait is on an event, bounded by --timeout-ms.
//
// Measured, from the moment every client starts editing (setup not counted):
// - changes_per_sec: changes acknowledged by the server / wall time until the last ack;
// - ack_p50_ms, ack_p99_ms: from a change to its acknowledgement;
// - converge_ms: from the last edit (by anyone) until every replica (every writer and
//   follower of every document) holds every change;
// - server_cpu_ms (with --server-pid, on Linux): CPU time (user + system) the server's
//   process spent from the first edit until convergence, read from /proc; with
//   server_cpu_ms_per_change it shows the server's own cost even when these clients, all in
//   this one process, are what limits the rate;
// - client_cpu_ms: the same for this process (every client): near wall_ms + converge_ms,
//   the clients saturate their one core and bound the rate;
// - messages_per_change: sync messages between the clients and the server (both ways, the
//   same span) per change: how much the server coalesces, and so how much work it gives
//   the clients.
// One JSON object per workload on stdout (one line each); progress on stderr.
//
// automerge-repo sends a document's sync messages at most every `syncDebounceRate` ms
// (100, not configurable through Repo options). --client-sync-debounce-ms N (N != 100) sets
// it in the clients of this process (a module hook rewrites that one constant at load), to
// measure the server rather than the client's throttle. It changes nothing in the server.

import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { register } from "node:module"
import { parseArgs } from "node:util"
import { performance } from "node:perf_hooks"

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    label: { type: "string" },
    workloads: { type: "string", default: "one-doc,many-docs" },
    "one-clients": { type: "string", default: "4" },
    "one-changes": { type: "string", default: "50" },
    "many-clients": { type: "string", default: "8" },
    "many-docs": { type: "string", default: "20" },
    "many-changes": { type: "string", default: "5" },
    followers: { type: "string", default: "1" },
    "client-sync-debounce-ms": { type: "string", default: "100" },
    "timeout-ms": { type: "string", default: "120000" },
    "server-pid": { type: "string" },
  },
})

function fail(message, code = 2) {
  console.error(`workload: ${message}`)
  process.exit(code)
}

function count(name, { min = 1, max = 100_000 } = {}) {
  const text = args[name]
  const n = Number(text)
  if (!Number.isInteger(n) || n < min || n > max) {
    fail(`--${name} must be a whole number from ${min} to ${max}, not ${JSON.stringify(text)}`)
  }
  return n
}

if (!args.url || !/^wss?:\/\//.test(args.url)) {
  fail("--url must be the ws:// URL of an automerge-repo server (e.g. ws://127.0.0.1:7878/v1/repo)")
}
const url = args.url
const label = args.label ?? url
const workloads = args.workloads.split(",").map(w => w.trim()).filter(Boolean)
for (const w of workloads) {
  if (w !== "one-doc" && w !== "many-docs") fail(`unknown workload ${JSON.stringify(w)}: one-doc or many-docs`)
}
const oneClients = count("one-clients", { max: 256 })
const oneChanges = count("one-changes")
const manyClients = count("many-clients", { max: 256 })
const manyDocs = count("many-docs", { max: 10_000 })
const manyChanges = count("many-changes")
const followers = count("followers", { min: 0, max: manyClients - 1 })
const debounce = count("client-sync-debounce-ms", { min: 0, max: 10_000 })
const timeoutMs = count("timeout-ms", { min: 100, max: 3_600_000 })
const serverPid = args["server-pid"] === undefined ? undefined : count("server-pid", { max: 2 ** 31 })

if (debounce !== 100) {
  if (typeof register !== "function") fail("--client-sync-debounce-ms needs Node 20.6 or later")
  register("./debounce-hooks.mjs", import.meta.url, { data: { syncDebounceMs: debounce } })
}
// Imported after the hook is in place, so that it applies.
const { Repo } = await import("@automerge/automerge-repo")
const { WebSocketClientAdapter } = await import("@automerge/automerge-repo-network-websocket")

const log = message => process.stderr.write(`[${label}] ${message}\n`)

/** Clock ticks per second of /proc's CPU times. */
const ticksPerSec = (() => {
  if (serverPid === undefined) return undefined
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

/** CPU time (user + system, ms) the server's process used so far; undefined off Linux. */
function serverCpuMs() {
  if (serverPid === undefined) return undefined
  try {
    const stat = readFileSync(`/proc/${serverPid}/stat`, "utf8")
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSec
  } catch {
    return undefined
  }
}

/** Rejects after the time left of the whole run; each await below races it. */
const deadline = performance.now() + timeoutMs
let phase = "starting"
function bounded(promise) {
  const left = deadline - performance.now()
  let timer
  const late = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms while ${phase}`)),
      Math.max(0, left),
    )
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** Messages between every client and the server, both ways. */
let messages = 0

/** A client: a repo connected to the server, with the server's storage id once it joined. */
async function connect() {
  const adapter = new WebSocketClientAdapter(url)
  const send = adapter.send.bind(adapter)
  adapter.send = message => {
    messages++
    return send(message)
  }
  const repo = new Repo({ network: [adapter] })
  repo.networkSubsystem.on("message", () => messages++)
  await new Promise(resolve => {
    if (repo.peers.length > 0) return resolve()
    repo.networkSubsystem.once("peer", () => resolve())
  })
  const server = repo.peers[0]
  const storageId = repo.getStorageIdOfPeer(server)
  if (!storageId) {
    throw new Error(`the server at ${url} announced no storage id: it cannot acknowledge storage`)
  }
  return { repo, storageId }
}

const sameHeads = (a, b) =>
  a !== undefined && a.length === b.length && [...a].sort().join() === [...b].sort().join()

/**
 * Resolves once the server's reported heads of `handle` cover `heads` (taken right after a
 * change): either they include every one of them, or they equal the handle's current heads
 * (which descend from them). Checked when the server reports heads and when the document
 * changes: the report of a sync message comes before its changes are applied, so heads
 * that already descend from ours (another client built on our change) only match the
 * document once it has those changes.
 */
function acknowledged(client, handle, heads) {
  return new Promise(resolve => {
    const check = () => {
      const info = handle.getSyncInfo(client.storageId)
      const theirs = info?.lastHeads
      if (theirs && (heads.every(h => theirs.includes(h)) || sameHeads(theirs, handle.heads()))) {
        handle.off("remote-heads", check)
        handle.off("change", check)
        resolve()
        return true
      }
      return false
    }
    if (!check()) {
      handle.on("remote-heads", check)
      handle.on("change", check)
    }
  })
}

/** Resolves (with the time) once `done(doc)` holds for the handle's document. */
function reaches(handle, done) {
  return new Promise(resolve => {
    const check = () => {
      const doc = handle.doc()
      if (doc !== undefined && done(doc)) {
        handle.off("change", check)
        resolve(performance.now())
        return true
      }
      return false
    }
    if (!check()) handle.on("change", check)
  })
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)
  return sorted[Math.max(0, i)]
}

const round3 = x => (x === null ? null : Math.round(x * 1000) / 1000)

/**
 * Runs one workload. `plan` lists documents: each {writers: [client index], readers: [client
 * index]}, the first writer creating it. Every writer makes `changes` changes to each of its
 * documents, in rounds.
 */
async function run(name, clientCount, plan, changes, extra) {
  phase = `connecting ${clientCount} clients`
  const clients = await bounded(Promise.all(Array.from({ length: clientCount }, connect)))
  try {
    // Setup (not timed): creators create and wait until the server has the document;
    // the other writers and the readers find it.
    phase = "creating documents"
    const docs = await bounded(
      Promise.all(
        plan.map(async (entry, d) => {
          const creator = clients[entry.writers[0]]
          const handle = creator.repo.create({ doc: d })
          await acknowledged(creator, handle, handle.heads())
          return { ...entry, url: handle.url, handles: new Map([[entry.writers[0], handle]]) }
        }),
      ),
    )
    phase = "finding documents"
    await bounded(
      Promise.all(
        docs.flatMap(doc =>
          [...doc.writers.slice(1), ...doc.readers].map(async c => {
            doc.handles.set(c, await clients[c].repo.find(doc.url))
          }),
        ),
      ),
    )

    // Every replica converges once it holds every writer's last change.
    const key = c => `c${c}`
    const converged = docs.flatMap(doc => {
      const done = state => doc.writers.every(c => state[key(c)] === changes)
      return [...doc.handles.values()].map(handle => reaches(handle, done))
    })

    const work = clients.map((_, c) => docs.filter(doc => doc.writers.includes(c)))
    const latencies = []
    let lastEdit = 0
    phase = "editing"
    log(`${name}: ${clientCount} clients, ${docs.length} documents, ${changes} changes per writer per document`)
    const cpuBefore = serverCpuMs()
    const clientBefore = process.cpuUsage()
    const messagesBefore = messages
    const start = performance.now()
    await bounded(
      Promise.all(
        work.map(async (mine, c) => {
          for (let round = 1; round <= changes; round++) {
            await Promise.all(
              mine.map(async doc => {
                const handle = doc.handles.get(c)
                const at = performance.now()
                lastEdit = Math.max(lastEdit, at)
                handle.change(state => {
                  state[key(c)] = round
                })
                await acknowledged(clients[c], handle, handle.heads())
                latencies.push(performance.now() - at)
              }),
            )
          }
        }),
      ),
    )
    const end = performance.now()
    phase = "converging"
    const times = await bounded(Promise.all(converged))
    const convergedAt = Math.max(...times)
    const cpuAfter = serverCpuMs()
    const clientCpu = process.cpuUsage(clientBefore)
    const messagesSent = messages - messagesBefore
    const serverCpu = cpuBefore === undefined || cpuAfter === undefined ? null : cpuAfter - cpuBefore

    latencies.sort((a, b) => a - b)
    const total = latencies.length
    const wall = end - start
    return {
      server: label,
      url,
      workload: name,
      clients: clientCount,
      docs: docs.length,
      changes: total,
      changes_per_writer_per_doc: changes,
      ...extra,
      client_sync_debounce_ms: debounce,
      wall_ms: round3(wall),
      changes_per_sec: round3(total / (wall / 1000)),
      ack_p50_ms: round3(percentile(latencies, 50)),
      ack_p99_ms: round3(percentile(latencies, 99)),
      converge_ms: round3(Math.max(0, convergedAt - lastEdit)),
      server_cpu_ms: round3(serverCpu),
      server_cpu_ms_per_change: serverCpu === null ? null : round3(serverCpu / total),
      client_cpu_ms: round3((clientCpu.user + clientCpu.system) / 1000),
      messages_per_change: round3(messagesSent / total),
    }
  } finally {
    phase = "shutting down the clients"
    await Promise.race([
      Promise.allSettled(clients.map(c => c.repo.shutdown())),
      new Promise(resolve => setTimeout(resolve, 2000)),
    ])
  }
}

function oneDoc() {
  const everyone = Array.from({ length: oneClients }, (_, c) => c)
  return run("one-doc", oneClients, [{ writers: everyone, readers: [] }], oneChanges, {})
}

function manyDocsWorkload() {
  const plan = []
  for (let c = 0; c < manyClients; c++) {
    for (let d = 0; d < manyDocs; d++) {
      const readers = Array.from({ length: followers }, (_, f) => (c + 1 + f) % manyClients)
      plan.push({ writers: [c], readers })
    }
  }
  return run("many-docs", manyClients, plan, manyChanges, { followers })
}

try {
  for (const name of workloads) {
    const row = name === "one-doc" ? await oneDoc() : await manyDocsWorkload()
    process.stdout.write(JSON.stringify(row) + "\n")
  }
  process.exit(0)
} catch (error) {
  console.error(`workload: ${error?.stack ?? error}`)
  process.exit(1)
}
