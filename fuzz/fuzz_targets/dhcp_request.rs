//! DHCP client messages (untrusted input on the client LAN): `Request::parse` takes any bytes
//! without panicking, and for every request it accepts, `build_reply` produces a BOOTREPLY
//! that fits the client's maximum message size (at least 576, minus IP and UDP headers),
//! echoes xid/chaddr/relay information, and parses back with dhcproto with option 53 first.
#![no_main]

use std::net::Ipv4Addr;

use ddhcp::config::DhcpOption;
use ddhcp::dhcp::options::OptionStore;
use ddhcp::dhcp::packet::{MessageType, Request, build_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::parse(data) else {
        return;
    };
    let _ = req.mac_text();
    let _ = req.hwaddr();
    // Options in the order the client asked for, as `Dhcp::reply` picks them from the option
    // store: each as long as its code (up to 255 bytes), or 4 bytes where the store insists,
    // and only codes the store accepts (`OptionStore::validate`, as `set-option` checks).
    let filler = [0xabu8; 255];
    let mut opts: Vec<(u8, &[u8])> = Vec::new();
    for &c in &req.parameter_list {
        for len in [usize::from(c), 4] {
            let payload = &filler[..len];
            let o = DhcpOption {
                code: c,
                payload: payload.to_vec(),
            };
            if OptionStore::validate(&o).is_ok() {
                opts.push((c, payload));
                break;
            }
        }
    }
    opts.push((54, &[10, 0, 0, 1]));
    for (t, yiaddr) in [
        (MessageType::Offer, Ipv4Addr::new(10, 0, 0, 7)),
        (MessageType::Ack, Ipv4Addr::new(10, 0, 0, 7)),
        (MessageType::Nak, Ipv4Addr::UNSPECIFIED),
    ] {
        let r = build_reply(&req, t, yiaddr, &opts);
        let limit = usize::from(req.max_size.unwrap_or(576).max(576)) - 28;
        assert!(r.len() >= 300, "reply shorter than the BOOTP minimum");
        assert!(
            r.len() <= limit.max(300),
            "reply of {} bytes exceeds the client's limit {limit}",
            r.len()
        );
        assert_eq!(r[0], 2);
        assert_eq!(r[4..8], req.xid.to_be_bytes());
        assert_eq!(r[28..44], req.chaddr);
        assert_eq!(r[16..20], yiaddr.octets());
        assert_eq!(r[240..243], [53, 1, t as u8]);
        let m = dhcproto::v4::borrowed::Message::new(&r)
            .unwrap_or_else(|e| panic!("dhcproto rejects our reply: {e:?}"));
        let codes: Vec<u8> = m.opts().map(|o| u8::from(o.code())).collect();
        assert_eq!(codes.first(), Some(&53));
        let mut seen = [false; 256];
        for c in &codes {
            assert!(!seen[usize::from(*c)], "option {c} twice in a reply");
            seen[usize::from(*c)] = true;
        }
        if let Some(relay) = &req.relay_info {
            let echoed = m
                .opts()
                .find(|o| u8::from(o.code()) == 82)
                .map(|o| o.data().to_vec());
            assert_eq!(
                echoed.as_deref(),
                Some(&relay[..relay.len().min(255)]),
                "relay info not echoed"
            );
        }
        // A reply is not a request.
        assert!(Request::parse(&r).is_err());
    }
});
