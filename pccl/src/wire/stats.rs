//! The stats summary a peer piggybacks on its heartbeats (`ToMaster::HeartbeatStats`,
//! docs/PROTOCOL.md §3.4): fixed-width counters plus the durations of the all-reduces it
//! finished since its previous summary, at most [`MAX_RECENT_OPS`] of them. Its size is
//! bounded by the protocol, so a peer cannot make the master allocate more than that.

use bytes::BufMut;

use super::codec::{Reader, WireError};

/// Most op durations one summary may carry (the newest ones, when more ops finished).
pub const MAX_RECENT_OPS: usize = 32;

/// A peer's counters since it connected, as it reports them to the master. Counters only
/// grow; the master takes the difference to the previous summary of the same connection
/// and ignores any decrease (docs/ARCHITECTURE.md §13).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSummary {
    /// All-reduces that succeeded / failed here.
    pub reduces_ok: u64,
    pub reduces_failed: u64,
    /// Ops `all_reduce_multiple_with_retry` started again after a failure.
    pub retries: u64,
    /// Ring payload bytes sent to the successor / received from the predecessor.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Shared-state syncs that succeeded / failed here, and the tensor bytes they moved.
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    pub sync_rx_bytes: u64,
    pub sync_tx_bytes: u64,
    /// Bus bandwidth of the peer's last 16 all-reduces (their bus bytes over their time),
    /// bytes/s; 0 before the first.
    pub busbw: u64,
    /// Durations, in microseconds, of the all-reduces finished since the last summary.
    pub recent_op_micros: Vec<u32>,
}

impl PeerSummary {
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        for v in [
            self.reduces_ok,
            self.reduces_failed,
            self.retries,
            self.tx_bytes,
            self.rx_bytes,
            self.syncs_ok,
            self.syncs_failed,
            self.sync_rx_bytes,
            self.sync_tx_bytes,
            self.busbw,
        ] {
            out.put_u64_le(v);
        }
        let recent = &self.recent_op_micros[..self.recent_op_micros.len().min(MAX_RECENT_OPS)];
        out.put_u32_le(recent.len() as u32);
        for m in recent {
            out.put_u32_le(*m);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut s = Self {
            reduces_ok: r.u64()?,
            reduces_failed: r.u64()?,
            retries: r.u64()?,
            tx_bytes: r.u64()?,
            rx_bytes: r.u64()?,
            syncs_ok: r.u64()?,
            syncs_failed: r.u64()?,
            sync_rx_bytes: r.u64()?,
            sync_tx_bytes: r.u64()?,
            busbw: r.u64()?,
            recent_op_micros: Vec::new(),
        };
        let n = r.len(MAX_RECENT_OPS, 4)?;
        s.recent_op_micros.reserve_exact(n);
        for _ in 0..n {
            s.recent_op_micros.push(r.u32()?);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ToMaster, WireError};

    fn frame(count: u32, items: usize) -> Vec<u8> {
        let mut b = vec![9u8];
        b.extend_from_slice(&[0u8; 80]);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, items * 4));
        b
    }

    #[test]
    fn a_summary_claiming_too_many_durations_is_refused_before_allocating() {
        assert!(matches!(
            ToMaster::decode(&frame(u32::MAX, 0)),
            Err(WireError::LengthTooLarge { .. })
        ));
        assert!(matches!(
            ToMaster::decode(&frame(MAX_RECENT_OPS as u32 + 1, MAX_RECENT_OPS + 1)),
            Err(WireError::LengthTooLarge { .. })
        ));
        // A count within the bound but beyond the bytes sent.
        assert!(ToMaster::decode(&frame(MAX_RECENT_OPS as u32, 3)).is_err());
        let ok = ToMaster::decode(&frame(MAX_RECENT_OPS as u32, MAX_RECENT_OPS)).unwrap();
        assert!(
            matches!(ok, ToMaster::HeartbeatStats(s) if s.recent_op_micros.len() == MAX_RECENT_OPS)
        );
    }

    #[test]
    fn an_encoder_never_sends_more_than_the_bound() {
        let s = PeerSummary {
            recent_op_micros: vec![7; MAX_RECENT_OPS * 3],
            ..PeerSummary::default()
        };
        let mut b = Vec::new();
        ToMaster::HeartbeatStats(s).encode(&mut b);
        let back = ToMaster::decode(&b).unwrap();
        assert!(
            matches!(back, ToMaster::HeartbeatStats(s) if s.recent_op_micros.len() == MAX_RECENT_OPS)
        );
    }
}
