//! Encoding of a completion's `user_data`: which operation, on which slot, of which generation.
//!
//! Layout (u64): `op` in bits 56..64, `generation` in bits 32..56 (24 bits), `slot` in bits 0..32.
//! The generation lets a driver discard a late completion that belongs to an earlier occupant of
//! a reused slot.

/// Kinds of operation a driver submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on a listener.
    Accept = 1,
    /// Multishot receive on a direct descriptor.
    Recv = 2,
    /// Gathered send on a direct descriptor.
    Send = 3,
    /// Cancellation of another operation.
    Cancel = 4,
    /// Close of a direct descriptor.
    Close = 6,
    /// Read of the doorbell eventfd.
    Doorbell = 8,
    /// Connect of a direct descriptor (clients).
    Connect = 9,
    /// A direct descriptor sent to another ring with `IORING_OP_MSG_RING` (the sender's
    /// completion).
    HandOff = 10,
    /// A direct descriptor another ring sent to this one (the receiver's completion; its
    /// result is the slot it was installed in).
    HandedIn = 11,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            6 => Op::Close,
            8 => Op::Doorbell,
            9 => Op::Connect,
            10 => Op::HandOff,
            11 => Op::HandedIn,
            _ => return None,
        })
    }
}

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData {
    /// The operation.
    pub op: Op,
    /// Slot (direct descriptor index) or 0.
    pub slot: u32,
    /// Generation of the slot's occupant (24 bits).
    pub generation: u32,
}

impl UserData {
    /// Builds one.
    pub fn new(op: Op, slot: u32, generation: u32) -> Self {
        UserData {
            op,
            slot,
            generation: generation & 0x00ff_ffff,
        }
    }
    /// Packs into the kernel's u64.
    pub fn pack(self) -> u64 {
        ((self.op as u64) << 56) | ((self.generation as u64 & 0x00ff_ffff) << 32) | self.slot as u64
    }
    /// Unpacks; `None` for values this layer never produced.
    pub fn unpack(v: u64) -> Option<Self> {
        Some(UserData {
            op: Op::from_u8((v >> 56) as u8)?,
            generation: ((v >> 32) & 0x00ff_ffff) as u32,
            slot: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip() {
        let u = UserData::new(Op::Send, 19_999, 0x00ab_cdef);
        assert_eq!(UserData::unpack(u.pack()), Some(u));
        assert_eq!(UserData::unpack(0), None);
        assert_eq!(UserData::new(Op::Recv, 1, 0x0100_0001).generation, 1);
    }
}
