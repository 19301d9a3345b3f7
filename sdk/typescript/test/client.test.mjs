// The TypeScript client against a real engine (node --test), started
// by the Rust harness (sdk/conformance/tests/typescript.rs), which passes its address:
// YORKER_ADDR (host:port) and YORKER_PUBLISHER_KEY.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { YorkerClient } from "../dist/index.js";

// Node 22 has a global WebSocket; older Node uses the `ws` package (same API).
const WebSocket = globalThis.WebSocket ?? (await import("ws")).WebSocket;

const addr = process.env.YORKER_ADDR;
const key = process.env.YORKER_PUBLISHER_KEY;
if (!addr || !key) throw new Error("run through sdk/conformance/tests/typescript.rs (YORKER_ADDR)");
const [host, port] = [addr.split(":")[0], Number(addr.split(":")[1])];

function frame(type, body) {
  const b = Buffer.alloc(5 + body.length);
  b.writeUInt32BE(body.length + 1, 0);
  b[4] = type;
  body.copy(b, 5);
  return b;
}
const str8 = (s) => Buffer.concat([Buffer.from([Buffer.byteLength(s)]), Buffer.from(s)]);

/** Publishes payloads to topic over raw TCP; resolves once the engine has them (PONG). */
function publish(topic, payloads) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, host);
    const hello = Buffer.concat([Buffer.from([0, 1, 2]), str8("ts-test"), str8(key)]);
    const parts = [frame(0x01, hello)];
    for (const p of payloads) parts.push(frame(0x05, Buffer.concat([Buffer.from([0]), str8(topic), Buffer.from(p)])));
    parts.push(frame(0x04, Buffer.alloc(8)));
    s.write(Buffer.concat(parts));
    let got = Buffer.alloc(0);
    s.on("data", (d) => {
      got = Buffer.concat([got, d]);
      for (let at = 0; at + 5 <= got.length;) {
        const len = got.readUInt32BE(at);
        if (got[at + 4] === 0x85) { s.destroy(); return resolve(); }
        at += 4 + len;
      }
    });
    s.on("error", reject);
  });
}

/** The next `n` events named `name` (a timeout fails the test). */
function collect(client, name, n, ms = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const t = setTimeout(() => reject(new Error(`only ${got.length} of ${n} ${name} events`)), ms);
    client.on(name, (e) => { got.push(e); if (got.length === n) { clearTimeout(t); resolve(got); } });
  });
}

test("snapshot, live updates in order, resume after a reconnect", async (t) => {
  const topic = `ts/${process.pid}`;
  await publish(topic, ["a", "b", "c"]);
  const c = new YorkerClient(`ws://${addr}/`, { backoffBaseMs: 100, WebSocket });
  t.after(() => c.close());
  const connected = collect(c, "connected", 1);
  const first = collect(c, "update", 1);
  c.subscribe(topic);
  await connected;
  const [snap] = await first;
  assert.equal(snap.seq, 3n);
  assert.equal(snap.snapshot, true);
  assert.equal(new TextDecoder().decode(snap.payload), "c");
  const live = collect(c, "update", 20);
  await publish(topic, Array.from({ length: 20 }, (_, i) => `live${i}`));
  const seqs = (await live).map((u) => u.seq);
  assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => BigInt(4 + i)));
  // Drop the connection (as after the app comes back); updates published meanwhile arrive
  // exactly once on the resumed subscription.
  const resumed = collect(c, "subscribed", 1);
  const replay = collect(c, "update", 2);
  c.reconnectNow();
  await publish(topic, ["x", "y"]);
  const [sub] = await resumed;
  assert.equal(sub.result, 1, "resumed");
  const rest = await replay;
  assert.deepEqual(rest.map((u) => u.seq), [24n, 25n]);
  const closed = collect(c, "disconnected", 1);
  c.close();
  const [d] = await closed;
  assert.equal(d.reason, "closed");
  assert.equal(d.retryInMs, null);
});

test("backoff is spread with full jitter", async () => {
  const delays = new Set();
  for (let i = 0; i < 200; i++) {
    const c = new YorkerClient("ws://127.0.0.1:9/", { backoffBaseMs: 1000, WebSocket });
    const [d] = await collect(c, "disconnected", 1);
    c.close();
    assert.ok(d.retryInMs >= 0 && d.retryInMs <= 1000);
    delays.add(d.retryInMs);
  }
  assert.ok(delays.size >= 150, `only ${delays.size} distinct delays of 200`);
});
