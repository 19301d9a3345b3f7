// yorker client for browsers and Node (22+ has a global WebSocket; older Node: pass the `ws`
// package's as options.WebSocket): the protocol of docs/PROTOCOL.md over WebSocket (§6.2)
// and the session rules of docs/CLIENTS.md: snapshot on subscribe, resume after reconnect,
// RESET, GOAWAY hints, full-jitter backoff, a silent server noticed.
//
//   const client = new YorkerClient("wss://scores.example/", { token });
//   client.on("update", (u) => render(u.topic, u.payload));
//   client.subscribe("match/42");

/** Why a connection ended. */
export type Reason =
  | "connection_lost"
  | "goaway"
  | "error"
  | "server_silent"
  | "handshake_timeout"
  | "protocol"
  | "requested"
  | "closed";

/** The events of a client, by name. */
export interface YorkerEvents {
  connected: { sessionId: bigint; epoch: bigint };
  subscribed: { topic: string; result: number };
  update: { topic: string; seq: bigint; payload: Uint8Array; snapshot: boolean; skipped: bigint };
  reset: { topic: string; seq: bigint; payload: Uint8Array };
  /** retryInMs: when the client reconnects by itself; null: it will not (refused token, close). */
  disconnected: { reason: Reason; code: number; afterMs: number; retryInMs: number | null };
}

/** Options of a client. */
export interface YorkerOptions {
  /** A signed token (JWT); empty for an anonymous session. */
  token?: string;
  /** First reconnect delay ceiling, ms (doubles per failed attempt; full jitter below it). */
  backoffBaseMs?: number;
  /** Largest reconnect delay, ms. */
  backoffMaxMs?: number;
  /** WELCOME must come within this many ms. */
  handshakeTimeoutMs?: number;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
  /** Random numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

const HELLO = 0x01, SUBSCRIBE = 0x02, PING = 0x04;
const WELCOME = 0x81, SUBACK = 0x82, UPDATE = 0x83, HEARTBEAT = 0x84, PONG = 0x85, ERROR = 0x86,
  GOAWAY = 0x87, AUTH_OK = 0x8a;
const SNAPSHOT = 0x04, RESET = 0x08;

class Writer {
  private b: number[] = [];
  u8(v: number) { this.b.push(v & 0xff); }
  u16(v: number) { this.u8(v >> 8); this.u8(v); }
  u32(v: number) { this.u16(v >>> 16); this.u16(v & 0xffff); }
  u64(v: bigint) { this.u32(Number(v >> 32n)); this.u32(Number(v & 0xffffffffn)); }
  str8(s: string) {
    const u = new TextEncoder().encode(s);
    if (u.length > 255) throw new RangeError(`longer than 255 bytes: ${s}`);
    this.u8(u.length); for (const x of u) this.b.push(x);
  }
  str16(s: string) {
    const u = new TextEncoder().encode(s);
    if (u.length > 65535) throw new RangeError("token longer than 65535 bytes");
    this.u16(u.length); for (const x of u) this.b.push(x);
  }
  /** length | type | body */
  frame(type: number): Uint8Array {
    const len = this.b.length + 1;
    return new Uint8Array([len >>> 24, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff, type, ...this.b]);
  }
}

class Reader {
  private p = 0;
  constructor(private d: DataView, private end: number, start: number) { this.p = start; }
  private need(n: number) { if (this.end - this.p < n) throw new RangeError("frame truncated"); }
  u8() { this.need(1); return this.d.getUint8(this.p++); }
  u16() { this.need(2); const v = this.d.getUint16(this.p); this.p += 2; return v; }
  u32() { this.need(4); const v = this.d.getUint32(this.p); this.p += 4; return v; }
  u64() { this.need(8); const v = this.d.getBigUint64(this.p); this.p += 8; return v; }
  rest() { const r = new Uint8Array(this.d.buffer, this.d.byteOffset + this.p, this.end - this.p).slice(); this.p = this.end; return r; }
}

interface Sub { topic: string; conflate: boolean; id: number; epoch: bigint; seq: bigint }

type Handler<K extends keyof YorkerEvents> = (e: YorkerEvents[K]) => void;

/** A connection to a yorker engine over WebSocket that reconnects by itself. */
export class YorkerClient {
  private readonly opts: Required<Omit<YorkerOptions, "WebSocket">> & { WebSocket: typeof WebSocket };
  private ws: WebSocket | null = null;
  private subs: Sub[] = [];
  private ids = new Map<number, number>();
  private requests = new Map<number, number[]>();
  private nextRequest = 1;
  private epoch = 0n;
  private heartbeatMs = 15000;
  private lastRx = 0;
  private lastTx = 0;
  private attempts = 0;
  private open = false;
  private closed = false;
  private goaway: { code: number; afterMs: number } | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private tick: ReturnType<typeof setInterval> | null = null;
  private handlers = new Map<keyof YorkerEvents, Array<(e: never) => void>>();

  constructor(private readonly url: string, options: YorkerOptions = {}) {
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!WS) throw new Error("no WebSocket: pass options.WebSocket (on Node before 22: the ws package's)");
    this.opts = {
      token: options.token ?? "",
      backoffBaseMs: options.backoffBaseMs ?? 250,
      backoffMaxMs: options.backoffMaxMs ?? 30000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 5000,
      random: options.random ?? Math.random,
      WebSocket: WS,
    };
    this.schedule(0);
  }

  /** Listens to an event. */
  on<K extends keyof YorkerEvents>(event: K, handler: Handler<K>): this {
    const list = this.handlers.get(event) ?? [];
    list.push(handler as (e: never) => void);
    this.handlers.set(event, list);
    return this;
  }

  private emit<K extends keyof YorkerEvents>(event: K, e: YorkerEvents[K]) {
    for (const h of this.handlers.get(event) ?? []) (h as Handler<K>)(e);
  }

  /** Every update of `topic`, in order (conflate: true lets the server skip to the newest). */
  subscribe(topic: string, options: { conflate?: boolean } = {}) {
    if (this.subs.some((s) => s.topic === topic)) return;
    this.subs.push({ topic, conflate: options.conflate ?? false, id: 0, epoch: 0n, seq: 0n });
    if (this.ws && this.ws.readyState === 1) this.sendSubscribe([this.subs.length - 1]);
  }

  /** True while a session is open. */
  get connected() { return this.open; }

  /** The network changed or the page became visible again: reconnect now, no backoff. */
  reconnectNow() {
    if (this.closed) return;
    if (this.ws) this.end("requested", 0, 0, 0);
    this.schedule(0);
  }

  /** Closes the session; the client stays closed. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.end("closed", 0, 0, null);
  }

  private schedule(ms: number) {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), ms);
  }

  private now() { return Date.now(); }

  private connect() {
    this.timer = null;
    if (this.closed || this.ws) return;
    let ws: WebSocket;
    try {
      ws = new this.opts.WebSocket(this.url, ["yorker"]);
    } catch {
      return this.disconnect("connection_lost", 0, 0);
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.goaway = null;
    this.open = false;
    this.ids.clear();
    this.requests.clear();
    const since = this.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastRx = this.lastTx = this.now();
      const w = new Writer();
      w.u16(2); w.u8(1); w.str8("yorker-client-ts"); w.str16(this.opts.token);
      this.send(w.frame(HELLO));
      if (this.subs.length) this.sendSubscribe(this.subs.map((_, i) => i));
    };
    ws.onmessage = (m: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastRx = this.now();
      try {
        this.onFrame(new Uint8Array(m.data as ArrayBuffer));
      } catch {
        this.disconnect("protocol", 0, 0);
      }
    };
    ws.onclose = () => { if (this.ws === ws) this.lost(); };
    ws.onerror = () => { if (this.ws === ws) this.lost(); };
    if (this.tick) clearInterval(this.tick);
    this.tick = setInterval(() => {
      if (this.ws !== ws) return;
      const now = this.now();
      if (!this.open) {
        if (now >= since + this.opts.handshakeTimeoutMs) this.disconnect("handshake_timeout", 0, 0);
        return;
      }
      if (now >= this.lastRx + 3 * this.heartbeatMs) return this.disconnect("server_silent", 0, 0);
      if (now >= this.lastTx + this.heartbeatMs / 2) {
        const w = new Writer(); w.u64(BigInt(now)); this.send(w.frame(PING));
      }
    }, 50);
  }

  private lost() {
    if (this.goaway) this.disconnect("goaway", this.goaway.code, this.goaway.afterMs);
    else this.disconnect("connection_lost", 0, 0);
  }

  private send(f: Uint8Array) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(f); this.lastTx = this.now(); }
  }

  private sendSubscribe(indices: number[]) {
    for (let at = 0; at < indices.length; at += 64) {
      const chunk = indices.slice(at, at + 64);
      const req = this.nextRequest; this.nextRequest = this.nextRequest >= 0xffffffff ? 1 : this.nextRequest + 1;
      this.requests.set(req, chunk);
      const w = new Writer();
      w.u32(req); w.u16(chunk.length);
      for (const i of chunk) {
        const s = this.subs[i];
        const resume = s.seq > 0n;
        w.u8((resume ? 0x01 : 0) | (s.conflate ? 0 : 0x02));
        w.str8(s.topic);
        if (resume) { w.u64(s.epoch !== 0n ? s.epoch : this.epoch); w.u64(s.seq); }
      }
      this.send(w.frame(SUBSCRIBE));
    }
  }

  private onFrame(b: Uint8Array) {
    const d = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (b.length < 5 || d.getUint32(0) !== b.length - 4) throw new RangeError("one frame per message");
    const r = new Reader(d, b.length, 5);
    switch (b[4]) {
      case WELCOME: {
        r.u16(); const sessionId = r.u64(); this.epoch = r.u64(); this.heartbeatMs = Math.max(100, r.u32());
        this.open = true; this.attempts = 0;
        this.emit("connected", { sessionId, epoch: this.epoch });
        break;
      }
      case SUBACK: {
        const req = r.u32(); const n = r.u16(); const idx = this.requests.get(req); this.requests.delete(req);
        for (let k = 0; k < n; k++) {
          const result = r.u8(); const id = r.u32(); r.u64();
          if (!idx || k >= idx.length) continue;
          const s = this.subs[idx[k]];
          if (result <= 3) { s.id = id; this.ids.set(id, idx[k]); if (result === 0 && s.epoch !== this.epoch) s.seq = 0n; }
          this.emit("subscribed", { topic: s.topic, result });
        }
        break;
      }
      case UPDATE: {
        const id = r.u32(); const seq = r.u64(); r.u64(); const flags = r.u8(); const payload = r.rest();
        const i = this.ids.get(id); if (i === undefined) break;
        const s = this.subs[i];
        if (flags & RESET) { s.seq = seq; s.epoch = this.epoch; this.emit("reset", { topic: s.topic, seq, payload }); break; }
        if (seq <= s.seq && s.epoch === this.epoch) break; // never from a conforming server
        const skipped = s.seq > 0n && s.epoch === this.epoch && !(flags & SNAPSHOT) ? seq - s.seq - 1n : 0n;
        s.seq = seq; s.epoch = this.epoch;
        this.emit("update", { topic: s.topic, seq, payload, snapshot: (flags & SNAPSHOT) !== 0, skipped });
        break;
      }
      case HEARTBEAT: case PONG: case AUTH_OK: break;
      case GOAWAY: this.goaway = { code: r.u16(), afterMs: r.u32() }; break;
      case ERROR: this.disconnect("error", r.u16(), 0); break;
      default: if (b[4] < 0x8b || b[4] > 0x8f) throw new RangeError("unknown frame type");
    }
  }

  private disconnect(reason: Reason, code: number, afterMs: number) {
    if (this.closed) return;
    const fatal = reason === "error" && (code === 7 || code === 2);
    if (fatal) { this.closed = true; return this.end(reason, code, afterMs, null); }
    let delay: number;
    if (reason === "goaway") delay = afterMs + this.jitter(this.opts.backoffBaseMs);
    else {
      const cap = Math.min(this.opts.backoffBaseMs * 2 ** Math.min(this.attempts, 20), this.opts.backoffMaxMs);
      this.attempts++;
      delay = this.jitter(cap);
    }
    this.end(reason, code, afterMs, delay);
    this.schedule(delay);
  }

  private end(reason: Reason, code: number, afterMs: number, retryInMs: number | null) {
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    if (this.tick) { clearInterval(this.tick); this.tick = null; }
    if (ws) { ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; try { ws.close(); } catch { /* already closed */ } }
    for (const s of this.subs) s.id = 0;
    this.emit("disconnected", { reason, code, afterMs, retryInMs });
  }

  /** Full jitter: uniform in 0..=cap. */
  private jitter(cap: number) { return Math.floor(this.opts.random() * (cap + 1)); }
}
