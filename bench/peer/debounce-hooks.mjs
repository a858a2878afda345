// Module hooks for workload.mjs --client-sync-debounce-ms: automerge-repo's DocSynchronizer
// sends a document's sync messages at most every `syncDebounceRate` ms, a class field fixed
// at 100 that Repo options do not reach. This rewrites that one constant as the module is
// loaded, in the benchmark's client process only, and fails loudly if the library no longer
// has it (rather than silently measuring the default).

const FILE = "/@automerge/automerge-repo/dist/synchronizer/DocSynchronizer.js"
const DEFAULT = "syncDebounceRate = 100;"

let rate = 100

export async function initialize(data) {
  rate = data.syncDebounceMs
}

export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context)
  if (!url.endsWith(FILE)) return result
  const source = typeof result.source === "string" ? result.source : new TextDecoder().decode(result.source)
  if (!source.includes(DEFAULT)) {
    throw new Error(`${url} has no \`${DEFAULT}\`: this automerge-repo version cannot be tuned by --client-sync-debounce-ms`)
  }
  return { ...result, source: source.replace(DEFAULT, `syncDebounceRate = ${rate};`) }
}
