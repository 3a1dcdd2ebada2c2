// Greedy generation in llama.cpp (through node-llama-cpp) from BOS, printing token ids.
//
//   node llamacpp_gen.mjs MODEL.gguf [N] [--lora ADAPTER.gguf SCALE]... [--tokenize TEXT] [:: MODEL.gguf ...]...
//
// Prints the ids of up to N (default 64) tokens generated greedily after BOS, space-separated on one
// line, stopping early at EOS or BOS (which are not printed). Each --lora applies a LoRA adapter GGUF
// with that scale when the context is created. With --tokenize, prints instead the ids llama.cpp's
// tokenizer gives TEXT (no BOS). "::" starts another job in the same process (one output line each;
// starting llama.cpp takes seconds). Run it from a folder holding node-llama-cpp (copy it there):
// node resolves the import next to the script.
import {getLlama} from "node-llama-cpp";

function parseJob(args) {
  const job = {adapters: [], text: null, pos: []};
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--tokenize") {
      if (i + 1 >= args.length) throw new Error("--tokenize needs a text");
      job.text = args[++i];
    } else if (args[i] === "--lora") {
      if (i + 2 >= args.length) throw new Error("--lora needs a file and a scale");
      const scale = Number(args[i + 2]);
      if (!Number.isFinite(scale)) throw new Error(`--lora ${args[i + 1]}: scale '${args[i + 2]}' is not a number`);
      job.adapters.push({filePath: args[i + 1], scale});
      i += 2;
    } else {
      job.pos.push(args[i]);
    }
  }
  if (job.pos.length < 1 || job.pos.length > 2)
    throw new Error("usage: llamacpp_gen.mjs MODEL.gguf [N] [--lora ADAPTER.gguf SCALE]... [--tokenize TEXT] [:: ...]");
  job.model = job.pos[0];
  job.n = parseInt(job.pos[1] || "64", 10);
  if (!(job.n > 0)) throw new Error(`N '${job.pos[1]}' must be a positive integer`);
  return job;
}

const jobs = [];
let cur = [];
for (const a of process.argv.slice(2)) {
  if (a === "::") {
    jobs.push(parseJob(cur));
    cur = [];
  } else {
    cur.push(a);
  }
}
jobs.push(parseJob(cur));

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
for (const job of jobs) {
  const model = await llama.loadModel({modelPath: job.model});
  if (job.text !== null) {
    console.log(Array.from(model.tokenize(job.text)).join(" "));
    await model.dispose();
    continue;
  }
  // F32 keys and values and no flash attention: llama.cpp's defaults (flash attention, an F16 cache) move
  // logits by ~1e-3, enough to flip a near tie that loom's float cache decides the other way
  const options = {contextSize: Math.min(1024, job.n + 8), threads: 1, batchSize: 512, flashAttention: false,
                   experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"};
  if (job.adapters.length) options.lora = {adapters: job.adapters};
  const context = await model.createContext(options);
  const seq = context.getSequence();
  const bos = model.tokens.bos, eos = model.tokens.eos;
  if (bos == null) throw new Error(`${job.model}: the model has no BOS token`);
  const out = [];
  for await (const tok of seq.evaluate([bos], {temperature: 0})) {
    if (tok === eos || tok === bos) break;
    out.push(tok);
    if (out.length >= job.n) break;
  }
  console.log(out.join(" "));
  await context.dispose();
  await model.dispose();
}
