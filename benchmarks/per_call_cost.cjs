// Times the reference's applyMetadataOperations on one operation, on metadata of several sizes.
// usage: node per_call_cost.cjs INPUT.json REPS
//   INPUT.json: {"op": <one wire operation>, "states": [{"size": <bytes>, "state": {...}}, ...]}
// Prints JSON: [{"size": <bytes>, "per_call_s": [<seconds per call, one per repetition>]}, ...]
// Calls faster than 20 ms are looped inside one repetition, as benchmarks/_timing.py does; the
// repetitions are taken in rounds over all sizes, as benchmarks/plot.py does for metaops, so that
// load from elsewhere on the machine slows every size alike.
const fs = require("fs");
const { applyMetadataOperations } = require("@trigger.dev/core/v3");

const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const reps = Number(process.argv[3] || 15);
const MIN_REP_NS = 20e6;

function callsPerRep(fn) {
  let calls = 1;
  for (;;) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) fn();
    if (Number(process.hrtime.bigint() - start) >= MIN_REP_NS) return calls;
    calls *= calls < 8 ? 2 : 10;
  }
}

function rep(fn, calls) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) fn();
  return Number(process.hrtime.bigint() - start) / 1e9 / calls;
}

const cases = input.states.map(({ size, state }) => {
  const fn = () => applyMetadataOperations(state, [input.op]);
  const calls = callsPerRep(fn);
  rep(fn, calls); // warm-up
  return { size, fn, calls, perCall: [] };
});
for (let round = 0; round < reps; round++) {
  for (const c of cases) c.perCall.push(rep(c.fn, c.calls));
}
console.log(JSON.stringify(cases.map((c) => ({ size: c.size, per_call_s: c.perCall }))));
