// Reference Negentropy peer for tests/system/test_negentropy_interop.py, built on nostr-tools' nip77.
//
// Usage: node negentropy_peer.mjs ROLE ITEMS_JSON FRAME_SIZE_LIMIT
//   ITEMS_JSON is a file holding [[timestamp, "64 hex chars"], ...].
//   ROLE "initiate": print "MSG <hex>" of the first message, then "DONE {...}".
//   ROLE "initiator": print "MSG <hex>", then for each reply line "<hex>" on stdin print the
//     next "MSG <hex>", or "DONE {have, need}" once reconciliation is complete.
//   ROLE "peer": for each line "<hex>" print "MSG <hex>" or "NULL" (nothing left to say);
//     on the line "END" print "DONE {have, need}". nostr-tools has no responder role: on an
//     IdList it reports have/need itself instead of answering with its own ids.
// Any failure prints "ERROR <message>" and exits 1.

import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { nip77 } from 'nostr-tools'

const { Negentropy, NegentropyStorageVector } = nip77

const [role, itemsPath, limitArg] = process.argv.slice(2)

function emit(line) {
  process.stdout.write(line + '\n')
}

try {
  const storage = new NegentropyStorageVector()
  for (const [timestamp, id] of JSON.parse(readFileSync(itemsPath, 'utf8'))) {
    storage.insert(timestamp, id)
  }
  storage.seal()
  const neg = new Negentropy(storage, Number(limitArg))
  const have = []
  const need = []
  const onhave = id => have.push(id)
  const onneed = id => need.push(id)

  if (role === 'initiate' || role === 'initiator') {
    emit('MSG ' + neg.initiate())
  } else if (role !== 'peer') {
    throw Error('unknown role ' + role)
  }

  if (role !== 'initiate') await converse(neg, onhave, onneed)
  emit('DONE ' + JSON.stringify({ have, need }))
} catch (error) {
  emit('ERROR ' + String(error && error.message ? error.message : error))
  process.exitCode = 1
}

async function converse(neg, onhave, onneed) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (line === 'END') break
    const next = neg.reconcile(line.trim(), onhave, onneed)
    if (next !== null) {
      emit('MSG ' + next)
    } else if (role === 'peer') {
      emit('NULL')
    } else {
      break
    }
  }
  lines.close()
}
