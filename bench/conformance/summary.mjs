// Summarise a results JSON (from the suite's cli) by test kind: passes and failures.
import fs from 'fs'
const suite = process.env.SUITE_DIR || './node_modules/http-cache-tests'
const { default: tests } = await import(suite + '/tests/index.mjs')
const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const counts = {}
const failed = []
for (const suite of tests) {
  for (const t of suite.tests) {
    const kind = t.kind || 'required'
    const r = results[t.id]
    counts[kind] = counts[kind] || { pass: 0, fail: 0, other: 0 }
    if (r === true) counts[kind].pass++
    else if (Array.isArray(r) && (r[0] === 'Assertion' || r[0] === 'Failed')) { counts[kind].fail++; if (kind === 'required') failed.push(t.id + ': ' + r[1]) }
    else { counts[kind].other++; if (kind === 'required') failed.push(t.id + ': ' + JSON.stringify(r)) }
  }
}
console.log(JSON.stringify(counts))
if (process.argv[3] === 'list') console.log(failed.join('\n'))
