//! Provided-buffer ring (`IORING_REGISTER_PBUF_RING`): one pool of receive buffers per ring,
//! from which the kernel picks a buffer for each multishot-receive completion. Connections hold
//! no receive buffer of their own; an idle connection costs no receive memory.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `populate`: fault every page in now (MAP_POPULATE), so the memory shows in RSS from the
    /// start instead of growing as the kernel cycles through the buffers.
    fn new(len: usize, populate: bool) -> io::Result<Self> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: anonymous mapping, no file, no fixed address; the kernel picks a page-aligned
        // region of `len` bytes that only this struct refers to.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing refers to the region any
        // more (BufRing unregisters from the kernel before its mappings drop).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A registered provided-buffer ring of `entries` buffers of `buf_size` bytes.
#[derive(Debug)]
pub struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    entries: u16,
    buf_size: u32,
    bgid: u16,
    tail: u16,
}

impl BufRing {
    /// Maps the memory, registers it as group `bgid` on `uring` and hands every buffer to the
    /// kernel. `entries` must be a power of two, at most 32768.
    pub fn register(uring: &IoUring, bgid: u16, entries: u16, buf_size: u32) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two <= 32768",
            ));
        }
        let ring = Mapping::new(
            entries as usize * std::mem::size_of::<BufRingEntry>(),
            false,
        )?;
        // The kernel takes buffers in ring order and they are recycled at the tail, so every
        // buffer gets used sooner or later: the pool is a fixed cost, faulted in up front.
        let bufs = Mapping::new(entries as usize * buf_size as usize, true)?;
        // SAFETY: `ring` is page-aligned, sized for `entries` entries, zeroed by mmap, and lives
        // in this struct until Drop, which unregisters the group before unmapping it.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring.ptr as u64, entries, bgid, 0)?;
        }
        let mut br = BufRing {
            ring,
            bufs,
            entries,
            buf_size,
            bgid,
            tail: 0,
        };
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Group id for `RecvMulti`.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    ///
    /// # Safety
    /// The kernel must have posted a completion naming `bid` (so it wrote these bytes), and the
    /// buffer must not have been recycled since: after [`BufRing::recycle`] the kernel may
    /// write into it at any time. [`crate::RecvBuf`] is the only caller and upholds this.
    pub(crate) unsafe fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid % self.entries;
        let len = len.min(self.buf_size as usize);
        // SAFETY: `bid < entries`, so the range lies inside `bufs`; the caller guarantees the
        // kernel is done writing it and will not write it again while the slice lives.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.ptr.add(bid as usize * self.buf_size as usize),
                len,
            )
        }
    }

    /// Returns buffer `bid` to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.push(bid % self.entries);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries, so the entry is inside the ring mapping. The kernel only reads
        // entries between its head and our published tail; this slot is past the tail.
        unsafe {
            let e = &mut *(self.ring.ptr as *mut BufRingEntry).add(idx);
            e.set_addr(self.bufs.ptr.add(bid as usize * self.buf_size as usize) as u64);
            e.set_len(self.buf_size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's `resv`, inside the mapping; the
        // kernel reads it with acquire semantics, so a release store makes the entries written
        // in `push` visible before the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr as *const BufRingEntry) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Unregisters the group. Called by [`crate::Ring`] before this value drops, so the kernel
    /// can pick no buffer of it any more.
    pub(crate) fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(self.bgid);
    }
}
