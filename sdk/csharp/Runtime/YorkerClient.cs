// yorker client for C# (Unity, .NET Standard 2.1, C# 7.3): the protocol of docs/PROTOCOL.md
// and the session state machine of docs/CLIENTS.md, in pure C# over System.Net.Sockets (no
// native plugin, so it also runs under IL2CPP on iOS and Android).
//
//   var client = new Yorker.Client("127.0.0.1:7000", token);
//   client.Subscribe("match/42");
//   // every frame (Unity Update):
//   YorkerEvent ev;
//   while ((ev = client.Poll(0)) != null) { ... ev.Kind, ev.Topic, ev.Seq, ev.Payload ... }
//
// Threading: use a Client from one thread (the main thread, or a network thread of its own).
// Poll(0) never blocks except to open a connection (at most ConnectTimeoutMs).

using System;
using System.Collections.Generic;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Yorker
{
    /// <summary>What an event reports.</summary>
    public enum EventKind
    {
        /// <summary>The session is open: SessionId, Epoch.</summary>
        Connected,
        /// <summary>A subscription was answered: Topic, Result (0 ok, 1 resumed, 2 reset, 16+ refused).</summary>
        Subscribed,
        /// <summary>An update: Topic, Seq, Payload, Snapshot.</summary>
        Update,
        /// <summary>Everything held for Topic is replaced by this value: Topic, Seq, Payload.</summary>
        Reset,
        /// <summary>The connection ended: Reason, Code, AfterMs, RetryInMs (-1: no retry).</summary>
        Disconnected,
    }

    /// <summary>Why a connection ended.</summary>
    public enum Reason
    {
        None,
        ConnectionLost,
        GoAway,
        Error,
        ServerSilent,
        HandshakeTimeout,
        Protocol,
        Requested,
        Closed,
    }

    /// <summary>One event of a Client.</summary>
    public sealed class YorkerEvent
    {
        public EventKind Kind;
        public string Topic;
        public ulong Seq;
        public byte[] Payload;
        public bool Snapshot;
        public ulong SessionId;
        public ulong Epoch;
        public int Result;
        public Reason Reason;
        public int Code;
        public long AfterMs;
        /// <summary>When the client reconnects by itself, ms; -1: it will not (a refused token, Close).</summary>
        public long RetryInMs = -1;
    }

    /// <summary>Frame codec: big-endian, length-prefixed (docs/PROTOCOL.md §1).</summary>
    public static class Wire
    {
        public const byte Hello = 0x01, Subscribe = 0x02, Ping = 0x04;
        public const byte Welcome = 0x81, SubAck = 0x82, UpdateFrame = 0x83, Heartbeat = 0x84, Pong = 0x85,
            ErrorFrame = 0x86, GoAwayFrame = 0x87, AuthOk = 0x8a;
        public const byte FlagSnapshot = 0x04, FlagReset = 0x08;
        public const int MaxFrame = 16 * 1024 * 1024;

        public sealed class Writer
        {
            readonly List<byte> b = new List<byte>();
            int start;
            public void Begin(byte type) { start = b.Count; U32(0); b.Add(type); }
            public void End()
            {
                int len = b.Count - start - 4;
                b[start] = (byte)(len >> 24); b[start + 1] = (byte)(len >> 16);
                b[start + 2] = (byte)(len >> 8); b[start + 3] = (byte)len;
            }
            public void U8(byte v) { b.Add(v); }
            public void U16(int v) { b.Add((byte)(v >> 8)); b.Add((byte)v); }
            public void U32(uint v) { for (int i = 3; i >= 0; i--) b.Add((byte)(v >> (8 * i))); }
            public void U64(ulong v) { for (int i = 7; i >= 0; i--) b.Add((byte)(v >> (8 * i))); }
            public void Str8(string s)
            {
                byte[] u = Encoding.UTF8.GetBytes(s);
                if (u.Length > 255) throw new ArgumentException("string longer than 255 bytes: " + s);
                U8((byte)u.Length); b.AddRange(u);
            }
            public void Str16(string s)
            {
                byte[] u = Encoding.UTF8.GetBytes(s);
                if (u.Length > 65535) throw new ArgumentException("token longer than 65535 bytes");
                U16(u.Length); b.AddRange(u);
            }
            public int Count { get { return b.Count; } }
            public byte[] Take() { byte[] r = b.ToArray(); b.Clear(); return r; }
            public void Clear() { b.Clear(); }
        }

        public sealed class Reader
        {
            readonly byte[] b; int p; readonly int end;
            public Reader(byte[] b, int off, int end) { this.b = b; p = off; this.end = end; }
            void Need(int n) { if (end - p < n) throw new FormatException("frame truncated"); }
            public byte U8() { Need(1); return b[p++]; }
            public int U16() { Need(2); int v = (b[p] << 8) | b[p + 1]; p += 2; return v; }
            public uint U32() { Need(4); uint v = 0; for (int i = 0; i < 4; i++) v = (v << 8) | b[p++]; return v; }
            public ulong U64() { Need(8); ulong v = 0; for (int i = 0; i < 8; i++) v = (v << 8) | b[p++]; return v; }
            public string Str(int len) { Need(len); string s = Encoding.UTF8.GetString(b, p, len); p += len; return s; }
            public string Str16() { return Str(U16()); }
            public byte[] Rest() { byte[] r = new byte[end - p]; Array.Copy(b, p, r, 0, r.Length); p = end; return r; }
        }
    }

    /// <summary>The client session, sans-IO: bytes and time in, bytes and events out (the port of
    /// yorker_wire::client::ClientSession; docs/CLIENTS.md describes the state machine).</summary>
    public sealed class Session
    {
        enum Phase { Idle, Connecting, Handshake, Open, Closed }

        sealed class Sub { public string Topic; public bool Conflate; public uint Id; public ulong Epoch; public ulong Seq; }

        readonly string name, token;
        readonly long backoffBase, backoffMax, handshakeTimeout = 5000;
        Phase phase = Phase.Idle;
        long retryAt = 0; // -1: not retrying
        long since, lastRx, lastTx, heartbeat = 15000;
        int attempts;
        ulong rng;
        ulong epoch;
        bool goaway; int goawayCode; long goawayAfter;
        readonly List<Sub> subs = new List<Sub>();
        readonly Dictionary<uint, int> ids = new Dictionary<uint, int>();
        readonly Dictionary<uint, List<int>> requests = new Dictionary<uint, List<int>>();
        uint nextRequest = 1;
        readonly Wire.Writer w = new Wire.Writer();
        readonly Queue<YorkerEvent> events = new Queue<YorkerEvent>();
        byte[] inbuf = new byte[0]; int inlen;

        public Session(string token, string clientName, long backoffBaseMs, long backoffMaxMs, ulong seed)
        {
            this.token = token ?? ""; name = clientName; backoffBase = backoffBaseMs; backoffMax = backoffMaxMs;
            rng = seed | 1;
        }

        public bool IsOpen { get { return phase == Phase.Open; } }
        public bool WantsConnection { get { return phase == Phase.Connecting || phase == Phase.Handshake || phase == Phase.Open; } }

        public void Subscribe(string topic, bool conflate)
        {
            foreach (var s in subs) if (s.Topic == topic) return;
            subs.Add(new Sub { Topic = topic, Conflate = conflate });
            // During the handshake too: frames may follow HELLO at once.
            if (phase == Phase.Open || phase == Phase.Handshake) SendSubscribe(new List<int> { subs.Count - 1 });
        }

        public bool PollConnect(long now)
        {
            if (phase == Phase.Idle && retryAt >= 0 && now >= retryAt) { phase = Phase.Connecting; return true; }
            return false;
        }

        public void OnConnected(long now)
        {
            phase = Phase.Handshake; since = now; inlen = 0; w.Clear(); ids.Clear(); requests.Clear();
            goaway = false; lastRx = now; lastTx = now;
            w.Begin(Wire.Hello); w.U16(2); w.U8(1); w.Str8(name); w.Str16(token); w.End();
            if (subs.Count > 0) { var all = new List<int>(); for (int i = 0; i < subs.Count; i++) all.Add(i); SendSubscribe(all); }
        }

        public void OnDisconnected(long now)
        {
            if (phase == Phase.Idle || phase == Phase.Closed) return;
            if (goaway) Disconnect(Reason.GoAway, goawayCode, goawayAfter, now);
            else Disconnect(Reason.ConnectionLost, 0, 0, now);
        }

        public void Close()
        {
            if (phase != Phase.Closed) { End(Reason.Closed, 0, 0, -1); phase = Phase.Closed; }
        }

        public void ReconnectNow(long now)
        {
            if (phase == Phase.Closed) return;
            if (phase != Phase.Idle) End(Reason.Requested, 0, 0, 0);
            phase = Phase.Idle; retryAt = now;
        }

        public byte[] PollTransmit(long now)
        {
            if (w.Count == 0) return null;
            lastTx = now;
            return w.Take();
        }

        public YorkerEvent PollEvent() { return events.Count > 0 ? events.Dequeue() : null; }

        public long PollTimeout()
        {
            switch (phase)
            {
                case Phase.Idle: return retryAt;
                case Phase.Handshake: return since + handshakeTimeout;
                case Phase.Open: return Math.Min(lastTx + heartbeat / 2, lastRx + 3 * heartbeat);
                default: return -1;
            }
        }

        public void HandleTimeout(long now)
        {
            if (phase == Phase.Handshake && now >= since + handshakeTimeout) { Disconnect(Reason.HandshakeTimeout, 0, 0, now); return; }
            if (phase != Phase.Open) return;
            if (now >= lastRx + 3 * heartbeat) { Disconnect(Reason.ServerSilent, 0, 0, now); return; }
            if (now >= lastTx + heartbeat / 2) { w.Begin(Wire.Ping); w.U64((ulong)now); w.End(); lastTx = now; }
        }

        public void HandleBytes(byte[] data, int count, long now)
        {
            if (phase != Phase.Handshake && phase != Phase.Open) return;
            lastRx = now;
            if (inbuf.Length < inlen + count) Array.Resize(ref inbuf, Math.Max(inlen + count, inbuf.Length * 2));
            Array.Copy(data, 0, inbuf, inlen, count); inlen += count;
            int p = 0;
            while (inlen - p >= 4)
            {
                int len = (inbuf[p] << 24) | (inbuf[p + 1] << 16) | (inbuf[p + 2] << 8) | inbuf[p + 3];
                if (len < 1 || len > Wire.MaxFrame) { Disconnect(Reason.Protocol, 0, 0, now); return; }
                if (inlen - p - 4 < len) break;
                try { OnFrame(new Wire.Reader(inbuf, p + 5, p + 4 + len), inbuf[p + 4], now); }
                catch (FormatException) { Disconnect(Reason.Protocol, 0, 0, now); return; }
                p += 4 + len;
                if (phase != Phase.Handshake && phase != Phase.Open) return;
            }
            Array.Copy(inbuf, p, inbuf, 0, inlen - p); inlen -= p;
        }

        void OnFrame(Wire.Reader r, byte type, long now)
        {
            switch (type)
            {
                case Wire.Welcome:
                    {
                        r.U16(); ulong session = r.U64(); epoch = r.U64(); heartbeat = Math.Max(100, r.U32());
                        phase = Phase.Open; attempts = 0;
                        events.Enqueue(new YorkerEvent { Kind = EventKind.Connected, SessionId = session, Epoch = epoch });
                        break;
                    }
                case Wire.SubAck:
                    {
                        uint req = r.U32(); int n = r.U16();
                        List<int> idx; requests.TryGetValue(req, out idx); requests.Remove(req);
                        for (int k = 0; k < n; k++)
                        {
                            int result = r.U8(); uint id = r.U32(); r.U64();
                            if (idx == null || k >= idx.Count) continue;
                            var s = subs[idx[k]];
                            if (result <= 3) // subscribed (ok, resumed, reset, already)
                            {
                                s.Id = id; ids[id] = idx[k];
                                if (result == 0 && s.Epoch != epoch) s.Seq = 0;
                            }
                            events.Enqueue(new YorkerEvent { Kind = EventKind.Subscribed, Topic = s.Topic, Result = result });
                        }
                        break;
                    }
                case Wire.UpdateFrame:
                    {
                        uint id = r.U32(); ulong seq = r.U64(); r.U64(); byte flags = r.U8(); byte[] payload = r.Rest();
                        int i; if (!ids.TryGetValue(id, out i)) break; // a broadcast of another topic
                        var s = subs[i];
                        if ((flags & Wire.FlagReset) != 0)
                        {
                            s.Seq = seq; s.Epoch = epoch;
                            events.Enqueue(new YorkerEvent { Kind = EventKind.Reset, Topic = s.Topic, Seq = seq, Payload = payload });
                            break;
                        }
                        if (seq <= s.Seq && s.Epoch == epoch) break; // a duplicate: never from a conforming server
                        s.Seq = seq; s.Epoch = epoch;
                        events.Enqueue(new YorkerEvent { Kind = EventKind.Update, Topic = s.Topic, Seq = seq, Payload = payload, Snapshot = (flags & Wire.FlagSnapshot) != 0 });
                        break;
                    }
                case Wire.Heartbeat: break;
                case Wire.Pong: r.U64(); break;
                case Wire.AuthOk: break;
                case Wire.GoAwayFrame:
                    goaway = true; goawayCode = r.U16(); goawayAfter = r.U32(); break;
                case Wire.ErrorFrame:
                    { int code = r.U16(); Disconnect(Reason.Error, code, 0, now); break; }
                default:
                    if (type >= 0x8b && type <= 0x8f) break; // version 3 frames this client never asks for
                    Disconnect(Reason.Protocol, 0, 0, now); break;
            }
        }

        void SendSubscribe(List<int> indices)
        {
            for (int at = 0; at < indices.Count; at += 64)
            {
                int n = Math.Min(64, indices.Count - at);
                uint req = nextRequest; nextRequest = nextRequest == uint.MaxValue ? 1 : nextRequest + 1;
                var chunk = indices.GetRange(at, n);
                requests[req] = chunk;
                w.Begin(Wire.Subscribe); w.U32(req); w.U16(n);
                foreach (int i in chunk)
                {
                    var s = subs[i];
                    bool resume = s.Seq > 0;
                    w.U8((byte)((resume ? 0x01 : 0) | (s.Conflate ? 0 : 0x02)));
                    w.Str8(s.Topic);
                    if (resume) { w.U64(s.Epoch != 0 ? s.Epoch : epoch); w.U64(s.Seq); }
                }
                w.End();
            }
        }

        void Disconnect(Reason reason, int code, long afterMs, long now)
        {
            bool fatal = reason == Reason.Error && (code == 7 || code == 2); // auth_failed, unsupported_version
            if (fatal) { End(reason, code, afterMs, -1); phase = Phase.Idle; retryAt = -1; return; }
            long delay;
            if (reason == Reason.GoAway) delay = afterMs + Jitter(backoffBase);
            else if (reason == Reason.Requested) delay = 0;
            else
            {
                long cap = Math.Min(backoffBase << Math.Min(attempts, 20), backoffMax);
                attempts++;
                delay = Jitter(cap);
            }
            End(reason, code, afterMs, delay);
            phase = Phase.Idle; retryAt = now + delay;
        }

        void End(Reason reason, int code, long afterMs, long retry)
        {
            w.Clear(); ids.Clear(); requests.Clear();
            foreach (var s in subs) s.Id = 0;
            events.Enqueue(new YorkerEvent { Kind = EventKind.Disconnected, Reason = reason, Code = code, AfterMs = afterMs, RetryInMs = retry });
        }

        /// <summary>Full jitter: uniform in 0..=cap (xorshift, seeded per client).</summary>
        long Jitter(long cap)
        {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            return (long)(rng % (ulong)(cap + 1));
        }
    }

    /// <summary>A connection to a yorker engine that reconnects by itself.</summary>
    public sealed class Client
    {
        readonly string host; readonly int port;
        readonly Session session;
        readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
        readonly byte[] buf = new byte[65536];
        Socket socket;
        public int ConnectTimeoutMs = 5000;

        /// <summary>A client for "host:port" presenting token ("" for anonymous); it connects at the first Poll.</summary>
        public Client(string address, string token) : this(address, token, 250, 30000) { }

        public Client(string address, string token, long backoffBaseMs, long backoffMaxMs)
        {
            if (address.StartsWith("yorker://")) address = address.Substring(9);
            int colon = address.LastIndexOf(':');
            if (colon <= 0) throw new ArgumentException("address must be host:port");
            host = address.Substring(0, colon);
            port = int.Parse(address.Substring(colon + 1));
            // Every client gets its own jitter seed: a restart must not bring them all back at once.
            byte[] seed = Guid.NewGuid().ToByteArray();
            session = new Session(token, "yorker-client-csharp", backoffBaseMs, backoffMaxMs, BitConverter.ToUInt64(seed, 0));
        }

        long Now { get { return clock.ElapsedMilliseconds; } }
        public bool IsConnected { get { return session.IsOpen; } }

        /// <summary>Every update of topic, in order; resumed after reconnects.</summary>
        public void Subscribe(string topic) { session.Subscribe(topic, false); }
        /// <summary>The newest value of topic (the server may conflate for a slow client).</summary>
        public void SubscribeLatest(string topic) { session.Subscribe(topic, true); }
        /// <summary>Network changed or the app resumed: reconnect now, no backoff.</summary>
        public void ReconnectNow() { session.ReconnectNow(Now); Drop(); }
        /// <summary>Close the session and its socket; the client stays closed.</summary>
        public void Close() { session.Close(); Drop(); }

        void Drop()
        {
            if (socket == null) return;
            try { socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
            socket.Close(); socket = null;
        }

        /// <summary>The next event, waiting at most timeoutMs for one (0: only what is ready); null when none.</summary>
        public YorkerEvent Poll(int timeoutMs)
        {
            long until = Now + timeoutMs;
            for (;;)
            {
                YorkerEvent ev = Next();
                if (ev != null) return ev;
                long now = Now;
                if (session.PollConnect(now)) { Open(now); continue; }
                Flush(now);
                if (socket != null && !session.WantsConnection) Drop();
                ev = Next();
                if (ev != null) return ev;
                long due = session.PollTimeout();
                long wait = Math.Max(0, until - now);
                if (due >= 0) wait = Math.Min(wait, Math.Max(0, due - now));
                if (socket != null)
                {
                    try
                    {
                        if (socket.Poll((int)Math.Min(wait * 1000, int.MaxValue), SelectMode.SelectRead))
                        {
                            int n = socket.Receive(buf);
                            if (n == 0) Lost(); else session.HandleBytes(buf, n, Now);
                        }
                    }
                    catch (SocketException) { Lost(); }
                    catch (ObjectDisposedException) { Lost(); }
                }
                else if (wait > 0) System.Threading.Thread.Sleep((int)Math.Min(wait, 50));
                now = Now;
                due = session.PollTimeout();
                if (due >= 0 && now >= due) session.HandleTimeout(now);
                if (now >= until && (due < 0 || now < due || session.PollTimeout() < 0)) return Next();
            }
        }

        void Open(long now)
        {
            try
            {
                IPAddress ip;
                if (!IPAddress.TryParse(host, out ip)) ip = Dns.GetHostAddresses(host)[0];
                var s = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                IAsyncResult r = s.BeginConnect(new IPEndPoint(ip, port), null, null);
                if (!r.AsyncWaitHandle.WaitOne(ConnectTimeoutMs) || !s.Connected) { s.Close(); session.OnDisconnected(now); return; }
                s.EndConnect(r);
                s.NoDelay = true;
                socket = s;
                session.OnConnected(Now);
            }
            catch (Exception e) when (e is SocketException || e is ObjectDisposedException || e is IndexOutOfRangeException)
            {
                session.OnDisconnected(now);
            }
        }

        void Flush(long now)
        {
            byte[] out_ = session.PollTransmit(now);
            if (out_ == null || socket == null) return;
            try { socket.Send(out_); } catch (SocketException) { Lost(); } catch (ObjectDisposedException) { Lost(); }
        }

        void Lost() { Drop(); session.OnDisconnected(Now); }

        YorkerEvent Next()
        {
            YorkerEvent e = session.PollEvent();
            if (e != null && e.Kind == EventKind.Disconnected && !session.WantsConnection) Drop();
            return e;
        }
    }
}
