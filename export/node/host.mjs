// A host outside Python: runs an LMDM ONNX export with onnxruntime-node, knowing nothing but the manifest.
//
//   node host.mjs EXPORT_DIR VECTOR_DIR [OUT.f32]
//
// It follows the manifest's host loop at the model rate (codec_encode -> context mix -> denoiser_step with the
// KV cache, with classifier-free guidance when the preset asks -> ping-pong or Euler sampling -> re-levelling with
// codec_level -> codec_decode) on the test vector written by Python
// (lmdm_export.host_vector.write_host_vector), prints a JSON line with the largest difference from Python's output,
// and exits 1 when that exceeds the vector's tolerance. tests/test_node_host.py runs it.
import fs from "node:fs";
import path from "node:path";
import ort from "onnxruntime-node";

const [exportDir, vectorDir, outPath] = process.argv.slice(2);
if (!exportDir || !vectorDir) {
  console.error("usage: node host.mjs EXPORT_DIR VECTOR_DIR [OUT.f32]");
  process.exit(2);
}

const manifest = JSON.parse(fs.readFileSync(path.join(exportDir, "manifest.json"), "utf8"));
const vector = JSON.parse(fs.readFileSync(path.join(vectorDir, "vector.json"), "utf8"));

function readF32(name) {
  const buf = fs.readFileSync(path.join(vectorDir, vector.files[name]));
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
}

const TYPED = { float32: Float32Array, float64: Float64Array, bool: Uint8Array };

// A zero tensor for a manifest input, with the symbolic axes given in `dims` (e.g. {batch: 2}).
function zeros(io, dims) {
  const shape = io.shape.map((d) => (typeof d === "string" ? dims[d] : d));
  const size = shape.reduce((a, b) => a * b, 1);
  return new ort.Tensor(io.dtype, new TYPED[io.dtype](size), shape);
}

async function open(graph) {
  const entry = manifest.graphs[graph];
  const session = await ort.InferenceSession.create(path.join(exportDir, entry.file), {
    executionProviders: ["cpu"],
    intraOpNumThreads: 1,
  });
  return { session, entry };
}

// Run a graph; `state` holds its state inputs and is replaced by the matching present.* outputs.
async function run(graph, feeds, state) {
  const outputs = await graph.session.run({ ...feeds, ...state });
  const next = {};
  for (const [input, output] of Object.entries(manifest.state[graph.name])) next[input] = outputs[output];
  return { outputs, next };
}

const encoder = { ...(await open("codec_encode")), name: "codec_encode" };
const decoder = { ...(await open("codec_decode")), name: "codec_decode" };
const step = { ...(await open("denoiser_step")), name: "denoiser_step" };
const leveller = { ...(await open("codec_level")), name: "codec_level" };

const C = vector.channels;
const L = vector.block_frames;
const D = manifest.latent_dim;
const hop = manifest.hop;
const S = manifest.conditioning.cond_dim;
const initial = (graph, dims) =>
  Object.fromEntries(
    graph.entry.inputs.filter((io) => io.name in manifest.state[graph.name]).map((io) => [io.name, zeros(io, dims)]),
  );
let encState = initial(encoder, { channels: C });
let decState = initial(decoder, { channels: C });
let cache = initial(step, { batch: C });

const audio = readF32("audio");
const noise = readF32("noise");
const expected = readF32("expected");
const cond = new ort.Tensor("float32", Float32Array.from(vector.cond.flat()), [C, S]);
const empty = new ort.Tensor("float32", new Float32Array(0), [C, 0, D]);
const blockSamples = L * hop;
const totalSamples = vector.shapes.audio[1];
let draw = 0;

// The next noise draw [L, D], shared by every channel.
function nextNoise() {
  const n = noise.subarray(draw * L * D, (draw + 1) * L * D);
  draw += 1;
  return n;
}

// times[i] = shift * u / (1 + (shift - 1) * u), u = strength * (1 - i / steps)
const shift = manifest.sampler.shift;
const times = Array.from({ length: vector.steps + 1 }, (_, i) => {
  const u = vector.strength * (1 - i / vector.steps);
  return (shift * u) / (1 + (shift - 1) * u);
});

// The unconditional vector guidance contrasts with (manifest.conditioning.unconditional): zeros, except the
// accompaniment flag, which is kept.
const uncond = new ort.Tensor("float32", new Float32Array(C * S), [C, S]);
const flag = manifest.conditioning.layout.accompaniment;
if (flag) for (let c = 0; c < C; c++) uncond.data[c * S + flag[0]] = cond.data[c * S + flag[0]];
const guidance = vector.guidance;
const rescale = manifest.conditioning.guidance_rescale;

async function rawVelocity(x, t, context, vector) {
  const feeds = {
    latents: new ort.Tensor("float32", x, [C, L, D]),
    time: new ort.Tensor("float32", new Float32Array(C).fill(t), [C]),
    cond: vector,
    context,
  };
  const { outputs, next } = await run(step, feeds, cache);
  if (context.dims[1] > 0) cache = next; // the fused first step slid the context into the cache
  return outputs.velocity.data;
}

// RMS over each row's L * D values.
function rowRms(a) {
  return Array.from({ length: C }, (_, c) => {
    let sum = 0;
    for (let j = c * L * D; j < (c + 1) * L * D; j++) sum += a[j] * a[j];
    return Math.sqrt(sum / (L * D));
  });
}

// The velocity at x, t; with guidance != 1 the conditional pass first (it folds the context in), then the
// unconditional one on the same cache, the guided clean estimate rescaled to the conditional one's RMS.
async function velocity(x, t, context) {
  const v = await rawVelocity(x, t, context, cond);
  if (guidance === 1) return v;
  const vu = await rawVelocity(x, t, empty, uncond);
  const guided = vu.map((u, j) => u + guidance * (v[j] - u));
  if (rescale === 0 || t <= 0) return guided;
  const x0c = x.map((xj, j) => xj - t * v[j]);
  const x0 = x.map((xj, j) => xj - t * guided[j]);
  const rc = rowRms(x0c), rg = rowRms(x0);
  return x0.map((x0j, j) => {
    const c = Math.floor(j / (L * D));
    return (x[j] - x0j * (1 - rescale + (rescale * rc[c]) / (rg[c] + 1e-6))) / t;
  });
}

// The loudness [C] (log RMS magnitude) of model-space latents [C, L, D].
async function level(x) {
  const { outputs } = await run(leveller, { latents: new ort.Tensor("float32", x, [C, L, D]) }, {});
  return outputs.level.data;
}

let echo = new Float32Array(C * L * D);
const amplitude = new Float64Array(C); // the echo's loudness, a feedback delay's (manifest.level.doc)
const produced = [];
for (let b = 0; b < vector.blocks; b++) {
  const chunk = new Float32Array(C * blockSamples);
  for (let c = 0; c < C; c++) {
    chunk.set(audio.subarray(c * totalSamples + b * blockSamples, c * totalSamples + (b + 1) * blockSamples), c * blockSamples);
  }
  const enc = await run(encoder, { audio: new ort.Tensor("float32", chunk, [C, blockSamples]) }, encState);
  encState = enc.next;
  const heard = enc.outputs.latents.data;
  const context = new Float32Array(C * L * D);
  for (let i = 0; i < context.length; i++) context[i] = (1 - vector.feedback) * heard[i] + vector.feedback * echo[i];
  const contextTensor = new ort.Tensor("float32", context, [C, L, D]);
  const heardLevel = await level(heard);
  for (let c = 0; c < C; c++) amplitude[c] = Math.max(Math.exp(heardLevel[c]), vector.feedback * amplitude[c]);

  let x = new Float32Array(C * L * D);
  if (vector.strength <= 0) {
    x.set(context);
    cache = (await run(step, { latents: new ort.Tensor("float32", new Float32Array(0), [C, 0, D]),
      time: new ort.Tensor("float32", new Float32Array(C), [C]), cond, context: contextTensor }, cache)).next;
  } else {
    let n = nextNoise();
    for (let i = 0; i < x.length; i++) x[i] = (1 - vector.strength) * context[i] + vector.strength * n[i % (L * D)];
    for (let i = 0; i < vector.steps; i++) {
      const t = times[i];
      const tNext = times[i + 1];
      const v = await velocity(x, t, i === 0 ? contextTensor : empty);
      const next = new Float32Array(x.length);
      if (vector.sampler === "euler") {
        for (let j = 0; j < x.length; j++) next[j] = x[j] + (tNext - t) * v[j];
      } else {
        n = tNext > 0 ? nextNoise() : null;
        for (let j = 0; j < x.length; j++) {
          const denoised = x[j] - t * v[j];
          next[j] = n ? (1 - tNext) * denoised + tNext * n[j % (L * D)] : denoised;
        }
      }
      x = next;
    }
  }
  for (let pass = 0; pass < manifest.level.passes; pass++) {
    const now = await level(x);
    for (let j = 0; j < x.length; j++) {
      const c = Math.floor(j / (L * D));
      x[j] += (Math.log(amplitude[c]) - now[c]) * manifest.level.shift[j % D];
    }
  }
  echo = x;
  const dec = await run(decoder, { latents: new ort.Tensor("float32", echo, [C, L, D]) }, decState);
  decState = dec.next;
  produced.push(dec.outputs.audio.data);
}

// Python's expected output is the wet path: the echoes of blocks 0 .. blocks-2, channels first.
const expectedSamples = vector.shapes.expected[1];
let maxError = 0;
const out = new Float32Array(C * expectedSamples);
for (let c = 0; c < C; c++) {
  for (let s = 0; s < expectedSamples; s++) {
    const b = Math.floor(s / blockSamples);
    const value = produced[b][c * blockSamples + (s % blockSamples)];
    out[c * expectedSamples + s] = value;
    maxError = Math.max(maxError, Math.abs(value - expected[c * expectedSamples + s]));
  }
}
if (outPath) fs.writeFileSync(outPath, Buffer.from(out.buffer));
const ok = Number.isFinite(maxError) && maxError <= vector.tolerance && draw === vector.noise_draws;
console.log(JSON.stringify({ max_abs_error: maxError, tolerance: vector.tolerance, noise_draws: draw, blocks: vector.blocks, ok }));
process.exit(ok ? 0 : 1);
