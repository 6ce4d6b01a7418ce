//! The DHCP option store (`-o`, `ddhcpctl set-option`) and how replies pick from it.

use std::net::Ipv4Addr;

use crate::config::DhcpOption;
use crate::range::ManagedRange;

pub const SUBNET_MASK: u8 = 1;
pub const ROUTER: u8 = 3;
pub const DNS: u8 = 6;
pub const HOSTNAME: u8 = 12;
pub const BROADCAST: u8 = 28;
pub const REQUESTED_IP: u8 = 50;
pub const LEASE_TIME: u8 = 51;
pub const MESSAGE_TYPE: u8 = 53;
pub const SERVER_ID: u8 = 54;
pub const PARAMETER_LIST: u8 = 55;
pub const MESSAGE: u8 = 56;
pub const MAX_MESSAGE_SIZE: u8 = 57;
pub const CLIENT_ID: u8 = 61;
pub const RELAY_AGENT_INFO: u8 = 82;

/// ddhcpd's default lease time.
pub const DEFAULT_LEASE_TIME: u32 = 300;

/// Options that carry exactly one IPv4 address or one u32 and would break clients if
/// malformed; `set-option` refuses other lengths for them.
fn expected_len(code: u8) -> Option<usize> {
    match code {
        SUBNET_MASK | BROADCAST | SERVER_ID | LEASE_TIME | 2 | 58 | 59 => Some(4),
        _ => None,
    }
}

/// Options in the order they were given; a repeated code replaces the earlier one in place.
#[derive(Clone, Debug, Default)]
pub struct OptionStore {
    opts: Vec<DhcpOption>,
}

impl OptionStore {
    /// `-o` options first, then defaults for codes not given: subnet mask and broadcast of
    /// the client subnet (option 1 if given, else the `-N` range), lease time 300 s, and the
    /// server identifier (the client interface's address) if known.
    pub fn new(given: &[DhcpOption], range: &ManagedRange, server_id: Option<Ipv4Addr>) -> Self {
        let mut s = OptionStore::default();
        for o in given {
            s.set(o.clone());
        }
        let mask = s.ipv4(SUBNET_MASK).unwrap_or(range.netmask());
        let net = u32::from(range.prefix()) & u32::from(mask);
        let defaults = [
            (SUBNET_MASK, mask.octets().to_vec()),
            (
                BROADCAST,
                Ipv4Addr::from(net | !u32::from(mask)).octets().to_vec(),
            ),
            (LEASE_TIME, DEFAULT_LEASE_TIME.to_be_bytes().to_vec()),
        ];
        for (code, payload) in defaults {
            if s.get(code).is_none() {
                s.set(DhcpOption { code, payload });
            }
        }
        if let Some(id) = server_id
            && s.get(SERVER_ID).is_none()
        {
            s.set(DhcpOption {
                code: SERVER_ID,
                payload: id.octets().to_vec(),
            });
        }
        s
    }

    /// Checks an option before it goes into the store.
    pub fn validate(o: &DhcpOption) -> Result<(), String> {
        if matches!(
            o.code,
            MESSAGE_TYPE
                | PARAMETER_LIST
                | REQUESTED_IP
                | CLIENT_ID
                | RELAY_AGENT_INFO
                | MAX_MESSAGE_SIZE
        ) {
            return Err(format!(
                "option {} is protocol-managed and cannot be set",
                o.code
            ));
        }
        if let Some(len) = expected_len(o.code)
            && o.payload.len() != len
        {
            return Err(format!("option {} must be {len} bytes long", o.code));
        }
        Ok(())
    }

    pub fn set(&mut self, o: DhcpOption) {
        match self.opts.iter_mut().find(|x| x.code == o.code) {
            Some(x) => *x = o,
            None => self.opts.push(o),
        }
    }

    pub fn remove(&mut self, code: u8) -> bool {
        let before = self.opts.len();
        self.opts.retain(|o| o.code != code);
        before != self.opts.len()
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.opts
            .iter()
            .find(|o| o.code == code)
            .map(|o| o.payload.as_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = &DhcpOption> {
        self.opts.iter()
    }

    pub fn ipv4(&self, code: u8) -> Option<Ipv4Addr> {
        let p: [u8; 4] = self.get(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(p))
    }

    /// Lease time in seconds, from option 51 (as ddhcpd reads it).
    pub fn lease_time(&self) -> u32 {
        self.get(LEASE_TIME)
            .and_then(|p| <[u8; 4]>::try_from(p).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(DEFAULT_LEASE_TIME)
    }

    /// Addresses of the client subnet no client may be given: its network and broadcast
    /// address, and any address the options name (server, routers, DNS servers).
    pub fn reserved_addresses(&self, range: &ManagedRange) -> Vec<Ipv4Addr> {
        let mask = u32::from(self.ipv4(SUBNET_MASK).unwrap_or(range.netmask()));
        let net = u32::from(range.prefix()) & mask;
        let mut v = vec![Ipv4Addr::from(net), Ipv4Addr::from(net | !mask)];
        for code in [SERVER_ID, ROUTER, DNS] {
            if let Some(p) = self.get(code) {
                v.extend(
                    p.chunks_exact(4)
                        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                );
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_given_mask() {
        let range = ManagedRange::new(Ipv4Addr::new(10, 116, 128, 0), 17, 2).unwrap();
        let given = [
            DhcpOption {
                code: SUBNET_MASK,
                payload: vec![255, 255, 0, 0],
            },
            DhcpOption {
                code: LEASE_TIME,
                payload: vec![0, 0, 1, 44],
            },
        ];
        let s = OptionStore::new(&given, &range, Some(Ipv4Addr::new(10, 116, 0, 1)));
        assert_eq!(s.ipv4(BROADCAST), Some(Ipv4Addr::new(10, 116, 255, 255)));
        assert_eq!(s.lease_time(), 300);
        assert_eq!(s.ipv4(SERVER_ID), Some(Ipv4Addr::new(10, 116, 0, 1)));
        let codes: Vec<u8> = s.iter().map(|o| o.code).collect();
        assert_eq!(codes, vec![1, 51, 28, 54]);
        let r = s.reserved_addresses(&range);
        assert!(r.contains(&Ipv4Addr::new(10, 116, 0, 0)));
        assert!(r.contains(&Ipv4Addr::new(10, 116, 255, 255)));
        assert!(r.contains(&Ipv4Addr::new(10, 116, 0, 1)));
    }

    #[test]
    fn validation() {
        assert!(
            OptionStore::validate(&DhcpOption {
                code: 51,
                payload: vec![1]
            })
            .is_err()
        );
        assert!(
            OptionStore::validate(&DhcpOption {
                code: 53,
                payload: vec![1]
            })
            .is_err()
        );
        assert!(
            OptionStore::validate(&DhcpOption {
                code: 3,
                payload: vec![1, 2, 3, 4]
            })
            .is_ok()
        );
    }
}
