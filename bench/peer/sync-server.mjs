// The peer of benchmark item 6: the official automerge-repo sync server, assembled the way
// automerge-repo-sync-server (src/server.js) assembles it: a Repo over a `ws`
// WebSocketServer (noServer, upgraded from an HTTP server) through NodeWSServerAdapter,
// stored by NodeFSStorageAdapter, with peer id `storage-server-<hostname>` and a share
// policy that shares nothing unasked. The one difference: a plain node:http server instead
// of express, which upstream only uses to serve static files and a "running" page.
//
//   node sync-server.mjs [--port 0] [--host 127.0.0.1] [--dir DIR] [--exit-with-stdin]
//
// Prints one line on stdout once listening: the WebSocket URL (ws://127.0.0.1:PORT). With
// no --dir the data goes to a fresh temporary folder, removed on exit. Exits on SIGTERM or
// SIGINT; with --exit-with-stdin also when its standard input closes, so that a parent
// that holds the other end (the Rust benchmark) cannot leave it running by dying.

import fs from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import { parseArgs } from "node:util"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    dir: { type: "string" },
    "exit-with-stdin": { type: "boolean", default: false },
  },
})

const port = Number.parseInt(args.port, 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`--port must be a port number (0 picks a free one), not ${args.port}`)
  process.exit(2)
}

const temporary = args.dir === undefined
const dir = temporary
  ? fs.mkdtempSync(path.join(os.tmpdir(), "concord-bench-sync-server-"))
  : args.dir
fs.mkdirSync(dir, { recursive: true })

const socket = new WebSocketServer({ noServer: true })
const repo = new Repo({
  network: [new NodeWSServerAdapter(socket)],
  storage: new NodeFSStorageAdapter(dir),
  peerId: `storage-server-${os.hostname()}`,
  // As upstream: a server shares only what a peer already knows about and asks for.
  sharePolicy: async () => false,
})

const server = http.createServer((request, response) => {
  response.end("👍 @automerge/automerge-repo-sync-server is running\n")
})
server.on("upgrade", (request, stream, head) => {
  socket.handleUpgrade(request, stream, head, ws => socket.emit("connection", ws, request))
})
server.on("error", error => {
  console.error(`sync server: ${error.message}`)
  process.exit(1)
})

let stopping = false
async function stop(code = 0) {
  if (stopping) return
  stopping = true
  socket.close()
  server.close()
  server.closeAllConnections?.()
  try {
    await Promise.race([repo.shutdown(), new Promise(r => setTimeout(r, 2000))])
  } catch {
    // Shutting down: nothing more to do about it.
  }
  if (temporary) fs.rmSync(dir, { recursive: true, force: true })
  process.exit(code)
}
process.on("SIGTERM", () => stop())
process.on("SIGINT", () => stop())
if (args["exit-with-stdin"]) {
  process.stdin.on("end", () => stop())
  process.stdin.on("error", () => stop())
  process.stdin.resume()
}

server.listen(port, args.host, () => {
  const { address, port: bound } = server.address()
  process.stdout.write(`ws://${address}:${bound}\n`)
})
