//! `yorker-floor`: the physical reference for fan-out benchmarks. A push server with no logic:
//! it accepts connections, answers the yorker handshake just enough for `yorker-sim` (WELCOME,
//! SUBACK), and writes every published update, as the same UPDATE frame yorker would send, to
//! every subscriber. Three ways to write:
//!
//! * `write`: a plain non-blocking write() loop over all sockets (leftovers retried later);
//! * `uring`: one io_uring send per socket per frame, all submitted in one batch;
//! * `gather`: one send in flight per socket, frames queued meanwhile gathered into one
//!   sendmsg (what yorker does, without anything else yorker does).
//!
//! Every yorker number is divided by this one, measured in the same run.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use yorker_uring::{Completion, EventFd, Op, Ring, RingConfig, SendOutcome, UserData};
use yorker_wire::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Write,
    Uring,
    Gather,
}

/// A no-logic push server, the floor of yorker's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "yorker-floor")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// How to write.
    #[arg(long, value_enum, default_value_t = Mode::Gather)]
    mode: Mode,
    /// Subscribers at most (each one's socket is also an fd here).
    #[arg(long, default_value_t = 18_000)]
    max_conns: usize,
}

enum NewConn {
    Subscriber(TcpStream),
    Publisher(TcpStream),
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads the client's first frames (blocking, bounded by a timeout) and answers them.
fn handshake(mut s: TcpStream, session: u64) -> std::io::Result<NewConn> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    let mut dec = Decoder::new(HANDSHAKE_MAX_FRAME);
    let mut buf = [0u8; 4096];
    let mut role = None;
    loop {
        while let Some(f) = dec
            .next_frame()
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?
        {
            match f {
                Frame::Hello(h) => {
                    let w = Frame::Welcome(Welcome {
                        version: 1,
                        session_id: session,
                        epoch: 1,
                        heartbeat_ms: 3_600_000,
                        limits: Limits {
                            max_frame: DEFAULT_MAX_FRAME,
                            max_subscriptions: 1,
                            outbox_limit: 1 << 30,
                        },
                    });
                    s.write_all(&w.to_bytes().expect("welcome"))?;
                    if h.role == Role::Publisher {
                        s.set_read_timeout(None)?;
                        return Ok(NewConn::Publisher(s));
                    }
                    role = Some(h.role);
                }
                Frame::Subscribe(sub) if role.is_some() => {
                    let ack = Frame::SubAck(SubAck {
                        request_id: sub.request_id,
                        entries: sub
                            .entries
                            .iter()
                            .map(|_| SubAckEntry {
                                result: SubResult::Ok,
                                topic_id: 1,
                                seq: 0,
                            })
                            .collect(),
                    });
                    s.write_all(&ack.to_bytes().expect("suback"))?;
                    s.set_nonblocking(true)?;
                    return Ok(NewConn::Subscriber(s));
                }
                _ => {}
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        dec.feed(&buf[..n]);
    }
}

struct Sub {
    /// None once retired: its fd is closed at once (the fixed-file table keeps the socket until
    /// the slot is reused), or departed subscribers would exhaust the fd limit over runs.
    stream: Option<TcpStream>,
    /// Gone (EOF or a failed write): skipped, and its slot reused once no send is in flight.
    dead: bool,
    /// write mode: bytes not yet written; uring/gather: frames waiting for the in-flight send.
    pending: VecDeque<Bytes>,
    offset: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    yorker_uring::raise_nofile_limit();
    // A long backlog: 15,000 clients connecting at once overflow std's 128 (1 s SYN retries).
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(args.listen),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&args.listen.into())?;
    sock.listen(4096)?;
    let listener: TcpListener = sock.into();
    eprintln!(
        "yorker-floor: listening on {} ({:?})",
        listener.local_addr()?,
        args.mode
    );
    let bell = std::sync::Arc::new(EventFd::new()?);
    let (tx, rx) = mpsc::channel::<NewConn>();
    {
        let bell = bell.clone();
        std::thread::spawn(move || {
            // Handshakes inline: benchmark clients send HELLO and SUBSCRIBE at once, and a
            // thread per connection does not survive 15,000 connecting together.
            for (session, s) in (1..).zip(listener.incoming().flatten()) {
                if let Ok(c) = handshake(s, session) {
                    if tx.send(c).is_err() {
                        return;
                    }
                    bell.notify();
                }
            }
        });
    }

    let mut ring = Ring::new(RingConfig {
        sq_entries: 4096,
        cq_entries: 65536,
        files: args.max_conns as u32 + 64,
        buf_entries: 256,
        buf_size: 65536,
    })?;
    let mut subs: Vec<Sub> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut publishers: Vec<(TcpStream, Decoder)> = Vec::new();
    let mut seq = 0u64;
    let mut cqes: Vec<Completion> = Vec::new();
    let bell_ud = UserData::new(Op::Doorbell, 0, 0).pack();
    ring.arm_doorbell(&bell, bell_ud)?;
    let pub_slot_base = args.max_conns as u32;
    loop {
        while let Ok(c) = rx.try_recv() {
            match c {
                NewConn::Subscriber(s) => {
                    // A slot of a departed subscriber whose last send completed, or a new one.
                    let reuse = free.iter().position(|&i| !ring.send_in_flight(i as u32));
                    let i = match reuse {
                        Some(k) => free.swap_remove(k),
                        None if subs.len() < args.max_conns => subs.len(),
                        None => continue,
                    };
                    // Every socket lives in the fixed-file table too: a receive on it tells
                    // when the subscriber leaves (it sends nothing else we need).
                    ring.register_fd(i as u32, s.as_raw_fd())?;
                    ring.recv_multi(i as u32, UserData::new(Op::Recv, i as u32, 0).pack())?;
                    let sub = Sub {
                        stream: Some(s),
                        dead: false,
                        pending: VecDeque::new(),
                        offset: 0,
                    };
                    if i == subs.len() {
                        subs.push(sub);
                    } else {
                        subs[i] = sub;
                    }
                }
                NewConn::Publisher(s) => {
                    let slot = pub_slot_base + publishers.len() as u32;
                    ring.register_fd(slot, s.as_raw_fd())?;
                    ring.recv_multi(slot, UserData::new(Op::Recv, slot, 0).pack())?;
                    publishers.push((s, Decoder::new(MAX_MAX_FRAME)));
                }
            }
        }
        // write mode retries leftovers every millisecond while any remain.
        let busy = args.mode == Mode::Write && subs.iter().any(|s| !s.pending.is_empty());
        ring.submit_and_wait(1, Some(Duration::from_millis(if busy { 1 } else { 100 })))?;
        cqes.clear();
        ring.completions(&mut cqes);
        let mut frames: Vec<Bytes> = Vec::new();
        for c in &cqes {
            let Some(ud) = UserData::unpack(c.user_data) else {
                continue;
            };
            match ud.op {
                Op::Doorbell => {
                    ring.doorbell_fired();
                    ring.arm_doorbell(&bell, bell_ud)?;
                }
                Op::Recv if ud.slot < pub_slot_base => {
                    // A subscriber's bytes (pings) are ignored; its EOF or error retires it.
                    drop(ring.take_buffer(c));
                    let i = ud.slot as usize;
                    if !c.more() {
                        if c.result > 0 || c.result == -libc::ENOBUFS {
                            ring.recv_multi(ud.slot, c.user_data)?;
                        } else if !subs[i].dead {
                            subs[i].dead = true;
                            subs[i].pending.clear();
                            subs[i].stream = None;
                            free.push(i);
                        }
                    }
                }
                Op::Recv => {
                    let p = (ud.slot - pub_slot_base) as usize;
                    if let Some(buf) = ring.take_buffer(c) {
                        publishers[p].1.feed(&buf);
                    }
                    while let Ok(Some(f)) = publishers[p].1.next_frame() {
                        if let Frame::Publish(pb) = f {
                            seq += 1;
                            // The same bytes yorker would send for this update.
                            frames.push(encode_update(
                                1,
                                seq,
                                now_us(),
                                pb.flags & update_flags::PUBLISH_MASK,
                                &pb.payload,
                            ));
                        }
                    }
                    if !c.more() && c.result > 0 {
                        ring.recv_multi(ud.slot, c.user_data)?;
                    }
                }
                Op::Send => {
                    let i = ud.slot as usize;
                    match ring.complete_send(ud.slot, c.result) {
                        SendOutcome::Done { .. } => {
                            start_send(&mut ring, args.mode, i, &mut subs[i])?
                        }
                        SendOutcome::Failed { .. } => subs[i].pending.clear(),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        for f in &frames {
            for (i, s) in subs.iter_mut().enumerate() {
                if s.dead {
                    continue;
                }
                s.pending.push_back(f.clone());
                match args.mode {
                    Mode::Write => {}
                    _ => {
                        if !ring.send_in_flight(i as u32) {
                            start_send(&mut ring, args.mode, i, s)?;
                        }
                    }
                }
            }
        }
        if args.mode == Mode::Write {
            for s in subs.iter_mut().filter(|s| !s.dead) {
                write_pending(s);
            }
        }
    }
}

fn start_send(ring: &mut Ring, mode: Mode, i: usize, s: &mut Sub) -> std::io::Result<()> {
    let n = if mode == Mode::Gather { 64 } else { 1 };
    let ud = UserData::new(Op::Send, i as u32, 0).pack();
    ring.send(i as u32, ud, |out| {
        while out.len() < n {
            match s.pending.pop_front() {
                Some(f) => out.push(f),
                None => break,
            }
        }
    })?;
    Ok(())
}

/// write mode: one write() per queued frame until the socket is full.
fn write_pending(s: &mut Sub) {
    let Some(stream) = s.stream.as_mut() else {
        s.pending.clear();
        return;
    };
    while let Some(f) = s.pending.front() {
        match stream.write(&f[s.offset..]) {
            Ok(n) if s.offset + n == f.len() => {
                s.offset = 0;
                s.pending.pop_front();
            }
            Ok(n) => {
                s.offset += n;
                return;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => {
                s.pending.clear();
                s.offset = 0;
                return;
            }
        }
    }
}
