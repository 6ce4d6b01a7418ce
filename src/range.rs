//! The managed IPv4 range and its cut into power-of-two blocks (reference §3.1).

use std::net::Ipv4Addr;

use crate::wire::Swarm;

/// Largest exponent whose block size fits the one-byte block-size field of the wire header.
/// The C daemon stores `1 << b` in a `u8`, so `-b 8` silently becomes 0 blocks and crashes
/// later with SIGFPE; we refuse it up front.
pub const MAX_BLOCK_POW: u8 = 7;

/// Upper bound on the number of blocks, so the block table (a few bytes per block) stays
/// small even for huge ranges: 2^22 blocks is a /10 with single-address blocks.
pub const MAX_BLOCKS: u32 = 1 << 22;

/// A validated `-N A.B.C.D/LEN` with `-b POW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagedRange {
    prefix: Ipv4Addr,
    prefix_len: u8,
    block_pow: u8,
}

impl ManagedRange {
    /// Validates the combination; the error says why, for the operator.
    pub fn new(prefix: Ipv4Addr, prefix_len: u8, block_pow: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("prefix length {prefix_len} is more than 32"));
        }
        let host_bits = 32 - prefix_len;
        let mask = u32::MAX.checked_shl(u32::from(host_bits)).unwrap_or(0);
        if u32::from(prefix) & !mask != 0 {
            return Err(format!(
                "{prefix}/{prefix_len} is not a network address (did you mean {}/{prefix_len}?)",
                Ipv4Addr::from(u32::from(prefix) & mask)
            ));
        }
        if block_pow > MAX_BLOCK_POW {
            return Err(format!(
                "block size 2^{block_pow} does not fit the ddhcpd wire format (largest is 2^{MAX_BLOCK_POW} = 128 addresses)"
            ));
        }
        if block_pow > host_bits {
            return Err(format!(
                "block size 2^{block_pow} is larger than the /{prefix_len} range ({} addresses)",
                1u64 << host_bits
            ));
        }
        let block_bits = host_bits - block_pow;
        if block_bits > MAX_BLOCKS.trailing_zeros() as u8 {
            return Err(format!(
                "/{prefix_len} with blocks of 2^{block_pow} makes 2^{block_bits} blocks, more than the 2^{} this daemon keeps; use a larger -b or a smaller range",
                MAX_BLOCKS.trailing_zeros()
            ));
        }
        Ok(ManagedRange {
            prefix,
            prefix_len,
            block_pow,
        })
    }

    pub fn prefix(&self) -> Ipv4Addr {
        self.prefix
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn block_pow(&self) -> u8 {
        self.block_pow
    }

    /// Addresses per block.
    pub fn block_size(&self) -> u32 {
        1 << self.block_pow
    }

    pub fn num_blocks(&self) -> u32 {
        1 << (32 - self.prefix_len - self.block_pow)
    }

    /// Block length as a CIDR prefix length (hook arguments name blocks as `FIRST/LEN`).
    pub fn block_prefix_len(&self) -> u8 {
        32 - self.block_pow
    }

    /// First address of block `index` (which must be `< num_blocks`).
    pub fn block_first(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.prefix).wrapping_add(index << self.block_pow))
    }

    /// The address at `offset` inside block `index`.
    pub fn address(&self, index: u32, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.block_first(index)).wrapping_add(offset))
    }

    /// Block index and offset of `addr`, or `None` outside the range.
    pub fn locate(&self, addr: Ipv4Addr) -> Option<(u32, u32)> {
        let rel = u32::from(addr).wrapping_sub(u32::from(self.prefix));
        let size = u64::from(self.num_blocks()) << self.block_pow;
        (u64::from(rel) < size).then(|| (rel >> self.block_pow, rel & (self.block_size() - 1)))
    }

    /// Subnet mask of the whole range (the default of DHCP option 1).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }

    /// Broadcast address of the range (the default of DHCP option 28).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.prefix) | !u32::from(self.netmask()))
    }

    /// The identity every peer message carries; messages with another identity are dropped.
    pub fn swarm(&self) -> Swarm {
        Swarm {
            prefix: self.prefix,
            prefix_len: self.prefix_len,
            // Fits: block_pow <= MAX_BLOCK_POW.
            block_size: 1u8 << self.block_pow,
        }
    }
}

impl std::fmt::Display for ManagedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.prefix, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_the_reference() {
        let r = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 5).unwrap();
        assert_eq!(r.num_blocks(), 8);
        let r = ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 17, 2).unwrap();
        assert_eq!(r.num_blocks(), 8192);
        assert_eq!(r.block_first(3848), Ipv4Addr::new(10, 0, 188, 32));
        let r = ManagedRange::new(Ipv4Addr::new(10, 116, 224, 0), 20, 2).unwrap();
        assert_eq!(r.num_blocks(), 1024);
        for i in [0, 1, 511, 1023] {
            assert_eq!(r.locate(r.block_first(i)), Some((i, 0)));
            assert_eq!(r.locate(r.address(i, 3)), Some((i, 3)));
        }
        assert_eq!(r.locate(Ipv4Addr::new(10, 116, 223, 255)), None);
        assert_eq!(r.locate(Ipv4Addr::new(10, 116, 240, 0)), None);
        assert_eq!(r.netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(r.broadcast(), Ipv4Addr::new(10, 116, 239, 255));
        assert_eq!(r.swarm().block_size, 4);
    }

    #[test]
    fn rejects_impossible_combinations() {
        let net = Ipv4Addr::new(10, 116, 224, 0);
        assert!(ManagedRange::new(net, 20, 13).is_err());
        assert!(ManagedRange::new(net, 20, 8).unwrap_err().contains("wire"));
        assert!(
            ManagedRange::new(Ipv4Addr::new(10, 0, 0, 1), 24, 2)
                .unwrap_err()
                .contains("not a network")
        );
        assert!(ManagedRange::new(net, 33, 2).is_err());
        assert!(ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 8, 0).is_err());
        let whole = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 10, 0).unwrap();
        assert_eq!(whole.num_blocks(), MAX_BLOCKS);
        let tiny = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 7), 32, 0).unwrap();
        assert_eq!(tiny.num_blocks(), 1);
        assert_eq!(tiny.netmask(), Ipv4Addr::new(255, 255, 255, 255));
    }
}
