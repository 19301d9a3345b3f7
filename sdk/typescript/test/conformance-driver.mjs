// The TypeScript SDK's conformance driver: the client behind the line protocol of
// docs/CLIENTS.md ("Conformance"), over WebSocket. Run by sdk/conformance/tests/conformance.rs.
import readline from "node:readline";
import { YorkerClient } from "../dist/index.js";

const WebSocket = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const out = (line) => process.stdout.write(line + "\n");
const hex = (b) => (b.length ? Buffer.from(b).toString("hex") : "-");

function reason(d) {
  switch (d.reason) {
    case "goaway": return `goaway ${d.code} ${d.afterMs}`;
    case "error": return `error ${d.code}`;
    default: return d.reason;
  }
}

function attach(c) {
  c.on("connected", (e) => out(`connected ${e.sessionId} ${e.epoch}`));
  c.on("subscribed", (e) => out(`subscribed ${e.topic} ${e.result}`));
  c.on("update", (e) => out(`update ${e.topic} ${e.seq} ${e.snapshot ? 1 : 0} ${hex(e.payload)}`));
  c.on("reset", (e) => out(`reset ${e.topic} ${e.seq} ${hex(e.payload)}`));
  c.on("disconnected", (e) => out(`disconnected ${reason(e)} retry ${e.retryInMs === null ? "none" : e.retryInMs}`));
}

let client = null;
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  const w = line.trim().split(/\s+/);
  if (w[0] === "connect" && w.length === 3) {
    client = new YorkerClient(`ws://${w[1]}/`, {
      token: w[2] === "-" ? "" : w[2], backoffBaseMs: 200, backoffMaxMs: 2000, WebSocket,
    });
    attach(client);
  } else if (w[0] === "subscribe" && w.length === 2 && client) {
    client.subscribe(w[1]);
  } else if (w[0] === "reconnect" && client) {
    client.reconnectNow();
  } else if (w[0] === "close") {
    if (client) client.close();
    client = null;
    out("closed");
  } else if (w[0] === "swarm" && w.length === 3) {
    const delays = [];
    for (let i = 0; i < Number(w[1]); i++) {
      const c = new YorkerClient(`ws://${w[2]}/`, { WebSocket });
      const d = await new Promise((resolve) => c.on("disconnected", resolve));
      c.close();
      delays.push(d.retryInMs);
    }
    out(`delays ${delays.join(" ")}`);
  } else if (w[0] === "exit") {
    break;
  } else {
    out(`unknown ${line}`);
  }
}
if (client) client.close();
process.exit(0);
