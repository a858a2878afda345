// Helpers for the interop tests: a JavaScript automerge-repo client against a running Concord
// server whose base URL is in CONCORD_URL (for example http://127.0.0.1:7878).
//
// Waiting is event-driven: a test waits for the document change or the sync acknowledgement
// it expects (never for a fixed time); node:test's per-test timeout bounds every wait.

import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

export const BASE = process.env.CONCORD_URL
if (!BASE) {
  throw new Error("set CONCORD_URL to the base URL of a running Concord server")
}
const WS = BASE.replace(/^http/, "ws") + "/v1/repo"

/** A repo connected to Concord, resolved once Concord answered the handshake. */
export async function connect() {
  const adapter = new WebSocketClientAdapter(WS)
  const repo = new Repo({ network: [adapter] })
  await new Promise(resolve => {
    if (repo.peers.length > 0) return resolve()
    repo.networkSubsystem.once("peer", () => resolve())
  })
  return repo
}

/** Resolves with the document once `predicate(doc)` holds, checking at each change. */
export function until(handle, predicate) {
  return new Promise(resolve => {
    const check = () => {
      const doc = handle.doc()
      if (doc !== undefined && predicate(doc)) {
        handle.off("change", check)
        resolve(doc)
      }
    }
    handle.on("change", check)
    check()
  })
}

const sameHeads = (a, b) =>
  a !== undefined && JSON.stringify([...a].sort()) === JSON.stringify([...b].sort())

/**
 * Resolves once Concord has acknowledged every local change of `handle`: Concord answers a
 * sync message only after the changes in it are durable, and its answer carries its heads,
 * which automerge-repo reports as the heads of Concord's storage id.
 */
export function stored(repo, handle) {
  return new Promise(resolve => {
    const check = () => {
      for (const peer of repo.peers) {
        const storageId = repo.getStorageIdOfPeer(peer)
        const info = storageId && handle.getSyncInfo(storageId)
        if (info && sameHeads(info.lastHeads, handle.heads())) {
          handle.off("remote-heads", check)
          return resolve()
        }
      }
    }
    handle.on("remote-heads", check)
    check()
  })
}

/** A JSON request to Concord; resolves with `{status, body}`. */
export async function http(method, path, body, headers = {}) {
  const response = await fetch(BASE + path, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await response.text()
  return { status: response.status, body: text ? JSON.parse(text) : undefined }
}

/** Plain JSON of an Automerge document (text objects and strings both become strings). */
export const plain = doc => JSON.parse(JSON.stringify(doc))
