// Greedy generation in llama.cpp (through node-llama-cpp) from BOS, printing token ids.
//
//   node llamacpp_gen.mjs MODEL.gguf [N] [--lora ADAPTER.gguf SCALE]...
//
// Prints the ids of up to N (default 64) tokens generated greedily after BOS, space-separated on one
// line, stopping early at EOS or BOS (which are not printed). Each --lora applies a LoRA adapter GGUF
// with that scale when the context is created. Run it from a folder holding node-llama-cpp (copy it
// there): node resolves the import next to the script.
import {getLlama} from "node-llama-cpp";

const args = process.argv.slice(2);
const adapters = [];
const pos = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--lora") {
    if (i + 2 >= args.length) throw new Error("--lora needs a file and a scale");
    const scale = Number(args[i + 2]);
    if (!Number.isFinite(scale)) throw new Error(`--lora ${args[i + 1]}: scale '${args[i + 2]}' is not a number`);
    adapters.push({filePath: args[i + 1], scale});
    i += 2;
  } else {
    pos.push(args[i]);
  }
}
if (pos.length < 1) throw new Error("usage: llamacpp_gen.mjs MODEL.gguf [N] [--lora ADAPTER.gguf SCALE]...");
const modelPath = pos[0];
const n = parseInt(pos[1] || "64", 10);
if (!(n > 0)) throw new Error(`N '${pos[1]}' must be a positive integer`);

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const options = {contextSize: Math.min(1024, n + 8), threads: 1, batchSize: 512};
if (adapters.length) options.lora = {adapters};
const context = await model.createContext(options);
const seq = context.getSequence();
const bos = model.tokens.bos, eos = model.tokens.eos;
if (bos == null) throw new Error(`${modelPath}: the model has no BOS token`);
const out = [];
for await (const tok of seq.evaluate([bos], {temperature: 0})) {
  if (tok === eos || tok === bos) break;
  out.push(tok);
  if (out.length >= n) break;
}
console.log(out.join(" "));
await context.dispose();
await model.dispose();
