//! A connection's receive buffer, read into without zeroing.
//!
//! Frames are split off the front and handed on as `Bytes` (a publish's bytes live until the
//! stream has stored them), so the memory under them cannot be reused at once, and a plain
//! `BytesMut` keeps moving to fresh allocations that a safe read has to zero first (6% of a
//! broker taking 1 KiB publishes). Here reads go into buffers that were zeroed once, when
//! allocated, and are taken up again once every frame split off them has been dropped: a
//! buffer left behind is parked, and reclaimed in place when it is the last handle to its
//! memory. A frame larger than a buffer grows the current one (zeroing what it adds), as
//! before.

use bytes::BytesMut;

/// Size of each pooled buffer.
pub const BUFFER_BYTES: usize = 256 << 10;
/// Buffers a connection keeps parked (waiting for their frames to go) besides its current one:
/// enough for a publisher keeping its 4,096 publishes of 1 KiB in flight (`IN_FLIGHT_MAX`;
/// a buffer is switched with 64 KiB still free, so ~200 of them per buffer) to go on reading
/// into buffers whose frames have been stored, instead of zeroing new ones (3% of a broker
/// taking 1 KiB publishes with 4 parked). Trimmed to [`PARKED_IDLE`] when nothing is in
/// flight.
const PARKED_MAX: usize = 24;
/// Parked buffers a connection keeps once nothing it sent is in flight.
pub const PARKED_IDLE: usize = 2;

pub struct ReadBuffer {
    buf: BytesMut,
    /// Every byte of `buf`'s capacity has been initialized: it is a pooled buffer (zeroed when
    /// allocated) that has not been regrown since.
    initialized: bool,
    /// Buffers left behind while frames still use them.
    parked: Vec<BytesMut>,
    /// Where the last [`spare`](Self::spare) began.
    spare_at: usize,
    /// Pooled buffers allocated so far (for tests).
    allocated: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        let mut b = ReadBuffer {
            buf: BytesMut::new(),
            initialized: false,
            parked: Vec::new(),
            spare_at: 0,
            allocated: 0,
        };
        b.buf = b.allocate();
        b.initialized = true;
        b
    }
}

impl ReadBuffer {
    /// The bytes read and not yet split off.
    pub fn filled(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Room for a read of up to `chunk` bytes after the filled part.
    pub fn spare(&mut self, chunk: usize) -> &mut [u8] {
        let room = self.buf.capacity() - self.buf.len() >= chunk
            || (self.initialized && self.buf.try_reclaim(chunk));
        if !room {
            self.switch(chunk);
        }
        let filled = self.buf.len();
        self.spare_at = filled;
        if self.initialized {
            // SAFETY: the capacity holds `filled + chunk` (ensured above), and all of a pooled
            // buffer's memory was initialized when it was allocated (`try_reclaim` only ever
            // reuses that same memory).
            unsafe { self.buf.set_len(filled + chunk) };
        } else {
            self.buf.resize(filled + chunk, 0);
        }
        &mut self.buf[filled..]
    }

    /// Keeps `n` bytes of the last [`spare`](Self::spare) (what the read returned).
    pub fn commit(&mut self, n: usize) {
        self.buf.truncate(self.spare_at + n);
    }

    /// Moves the partial frame at the front to a buffer with room for `chunk` more bytes.
    fn switch(&mut self, chunk: usize) {
        let keep = self.buf.len();
        if keep + chunk > BUFFER_BYTES {
            // A frame too large for a pooled buffer: this one grows instead.
            self.buf.reserve(chunk);
            self.initialized = false;
            return;
        }
        let mut next = match self.reclaim_parked() {
            Some(b) => b,
            None => self.allocate(),
        };
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        if self.initialized && self.parked.len() < PARKED_MAX {
            old.clear();
            self.parked.push(old);
        }
        self.initialized = true;
    }

    /// Lets go of parked buffers beyond `keep` (a connection gone quiet holds little).
    pub fn trim(&mut self, keep: usize) {
        self.parked.truncate(keep);
    }

    /// A parked buffer whose frames have all been dropped, reclaimed whole.
    fn reclaim_parked(&mut self) -> Option<BytesMut> {
        let i = self
            .parked
            .iter_mut()
            .position(|b| b.try_reclaim(BUFFER_BYTES))?;
        Some(self.parked.swap_remove(i))
    }

    fn allocate(&mut self) -> BytesMut {
        self.allocated += 1;
        let mut b = BytesMut::zeroed(BUFFER_BYTES);
        b.clear();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Reads `data` in reads of up to `chunk` bytes (sizes cycling through `reads`), splitting
    /// off `frame`-byte frames, each kept for `hold` more splits and checked against `data`
    /// when dropped (a buffer reused too early would have overwritten it). Returns the bytes
    /// checked and the buffers allocated.
    fn run(
        data: &[u8],
        chunk: usize,
        reads: &[usize],
        frame: usize,
        hold: usize,
    ) -> (usize, usize) {
        let mut rb = ReadBuffer::default();
        let mut held: std::collections::VecDeque<(usize, Bytes)> = Default::default();
        let mut checked = 0;
        let mut check = |(at, f): (usize, Bytes)| {
            assert_eq!(&f[..], &data[at..at + f.len()], "frame at {at} changed");
            checked += f.len();
        };
        let (mut at, mut split_at, mut r) = (0, 0, 0);
        while at < data.len() {
            let want = reads[r % reads.len()].clamp(1, chunk);
            r += 1;
            let spare = rb.spare(chunk);
            let n = want.min(data.len() - at);
            spare[..n].copy_from_slice(&data[at..at + n]);
            rb.commit(n);
            at += n;
            while rb.filled().len() >= frame || (at == data.len() && !rb.filled().is_empty()) {
                let take = frame.min(rb.filled().len());
                let f = rb.filled().split_to(take).freeze();
                held.push_back((split_at, f));
                split_at += take;
                while held.len() > hold {
                    check(held.pop_front().unwrap());
                }
            }
        }
        held.into_iter().for_each(&mut check);
        (checked, rb.allocated)
    }

    #[test]
    fn buffers_are_reused_once_their_frames_are_dropped() {
        let data: Vec<u8> = (0..64 << 20).map(|i| (i * 7 + i / 977) as u8).collect();
        // Frames dropped soon after they are split: a handful of buffers serve 64 MiB.
        let (checked, allocated) = run(&data, 64 << 10, &[64 << 10, 1000, 30_000], 1100, 64);
        assert_eq!(checked, data.len());
        assert!(allocated <= 2 + PARKED_MAX, "{allocated} buffers allocated");
        // Frames all kept until the end: every buffer is new (nothing may be overwritten).
        let (checked, allocated) = run(&data[..8 << 20], 64 << 10, &[64 << 10], 1100, usize::MAX);
        assert_eq!(checked, 8 << 20);
        assert!(
            allocated >= (8 << 20) / BUFFER_BYTES,
            "{allocated} buffers allocated"
        );
    }

    #[test]
    fn a_pipelining_publishers_frames_do_not_cost_new_buffers() {
        // 4,000 frames of 1,050 bytes held at a time (~4 MiB, ~20 buffers): the parked
        // buffers cover them, and 64 MiB are read into the same few.
        let data: Vec<u8> = (0..64 << 20).map(|i| (i * 13 + i / 1021) as u8).collect();
        let (checked, allocated) = run(&data, 64 << 10, &[64 << 10], 1050, 4000);
        assert_eq!(checked, data.len());
        assert!(allocated <= 2 + PARKED_MAX, "{allocated} buffers allocated");
    }

    #[test]
    fn trim_keeps_at_most_what_it_is_told() {
        let mut rb = ReadBuffer::default();
        let mut held = Vec::new();
        for _ in 0..200 {
            let spare = rb.spare(64 << 10);
            spare.fill(7);
            rb.commit(64 << 10);
            held.push(rb.filled().split().freeze());
        }
        assert_eq!(rb.parked.len(), PARKED_MAX);
        rb.trim(PARKED_IDLE);
        assert_eq!(rb.parked.len(), PARKED_IDLE);
        assert!(held.iter().all(|f| f.iter().all(|&b| b == 7)));
    }

    #[test]
    fn frames_larger_than_a_buffer_grow_it() {
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let (checked, _) = run(&data, 64 << 10, &[64 << 10, 5], BUFFER_BYTES * 3 + 17, 2);
        assert_eq!(checked, data.len());
    }

    proptest! {
        #[test]
        fn frames_hold_the_bytes_read(
            len in 1usize..600_000,
            reads in proptest::collection::vec(1usize..70_000, 1..8),
            frame in 1usize..400_000,
            hold in 0usize..40,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4099) as u8).collect();
            let (checked, _) = run(&data, 64 << 10, &reads, frame, hold);
            prop_assert_eq!(checked, data.len());
        }
    }
}
