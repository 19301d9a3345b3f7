//! # yorker-wire: protocol v1
//!
//! The binary protocol spoken between yorker engines, game clients and publishers, as
//! specified in `docs/PROTOCOL.md`. This crate is sans-IO: it has no sockets and no clock.
//! Bytes go in, typed [`Frame`]s come out, and frames encode into a [`bytes::BytesMut`].
//!
//! * [`frame`]: one type per frame, and the constants of the protocol.
//! * [`client`]: the client side as one sans-IO session (handshake, resume, gaps, keep-alive,
//!   reconnect backoff); every yorker client wraps it.
//! * [`codec`]: encoding, and the incremental [`Decoder`] that accepts any chunking.
//! * [`error`]: [`DecodeError`], [`EncodeError`] and the [`ErrorCode`]s that travel on the wire.
//! * [`topic`]: the topic-name rules.
//! * [`feed`]: the UDP datagrams from an origin engine to its relays (docs/RELAYS.md).
//! * [`score`]: the cricket score payload of the appendix.
//! * [`websocket`]: the WebSocket transport (RFC 6455): handshake, client frame decoder,
//!   server frame headers.
//!
//! The decoder never panics and never allocates more than the frame it is decoding, whose
//! size is capped by the negotiated maximum frame length.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod error;
pub mod feed;
pub mod frame;
pub mod score;
pub mod topic;
pub mod websocket;

pub use client::{ClientConfig, ClientEvent, ClientSession, Disconnect, Subscription};
pub use codec::{encode_update, split_frames, Decoder, UpdateView};
pub use error::{DecodeError, EncodeError, ErrorCode};
pub use frame::*;
