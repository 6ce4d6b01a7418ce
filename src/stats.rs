//! Named counters, cheap enough for the packet path (an array indexed by an enum).

macro_rules! counters {
    ($($variant:ident => $name:literal,)*) => {
        /// Every counter the node keeps; `ddhcpctl stats` prints them by name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    McastRecvPkg => "mcast.recv_pkg",
    McastRecvByte => "mcast.recv_byte",
    McastSendPkg => "mcast.send_pkg",
    McastSendByte => "mcast.send_byte",
    McastRecvUpdateClaim => "mcast.recv_updateclaim",
    McastRecvInquire => "mcast.recv_inquire",
    McastSendUpdateClaim => "mcast.send_updateclaim",
    McastSendInquire => "mcast.send_inquire",
    DirectRecvPkg => "direct.recv_pkg",
    DirectRecvByte => "direct.recv_byte",
    DirectSendPkg => "direct.send_pkg",
    DirectSendByte => "direct.send_byte",
    DirectRecvRenewLease => "direct.recv_renewlease",
    DirectRecvLeaseAck => "direct.recv_leaseack",
    DirectRecvLeaseNak => "direct.recv_leasenak",
    DirectSendRenewLease => "direct.send_renewlease",
    DirectSendLeaseAck => "direct.send_leaseack",
    DirectSendLeaseNak => "direct.send_leasenak",
    DropMalformed => "drop.malformed",
    DropForeignSwarm => "drop.foreign_swarm",
    DropWrongSocket => "drop.wrong_socket",
    DropInvalidBlock => "drop.invalid_block_entry",
    DropUnhandled => "drop.unhandled",
    DuplicateNodeId => "node.duplicate_id",
    BlocksClaimed => "blocks.claimed",
    BlocksDropped => "blocks.dropped",
    BlocksLost => "blocks.lost",
    ReplSendBatch => "repl.send_batch",
    ReplSendAck => "repl.send_ack",
    ReplRecvBatch => "repl.recv_batch",
    ReplRecvAck => "repl.recv_ack",
    ReplSendHandback => "repl.send_handback",
    ReplRecvHandback => "repl.recv_handback",
    ReplSendRecover => "repl.send_recover",
    ReplRecvRecover => "repl.recv_recover",
    BlocksTakenOver => "blocks.taken_over",
    BlocksHandedBack => "blocks.handed_back",
    BindingConflicts => "repl.binding_conflicts",
    AuthVerified => "auth.verified",
    AuthHeld => "auth.held",
    AuthReleased => "auth.released",
    AuthChallengeSent => "auth.challenge_sent",
    AuthChallengeAnswered => "auth.challenge_answered",
    AuthDropUnsigned => "auth.drop_unsigned",
    AuthDropUnknownKey => "auth.drop_unknown_key",
    AuthDropBadMac => "auth.drop_bad_mac",
    AuthDropReplay => "auth.drop_replay",
    AuthDropSignedNoKey => "auth.drop_signed_no_key",
    AuthDropNoSignature => "auth.drop_no_signature",
    AuthDropForged => "auth.drop_forged",
    AuthDropRateLimited => "auth.drop_rate_limited",
    AuthSignatureVerified => "auth.signatures_verified",
    ClaimsRefused => "blocks.claims_refused",
    BlocksContested => "blocks.contested",
    AuthMismatchHold => "auth.mismatch_holds",
    AuthPlainAccepted => "auth.plain_accepted",
    AuthPlainCopy => "auth.plain_copies",
}

/// The values of all counters.
#[derive(Clone, Debug)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; Counter::ALL.len()])
    }
}

impl Counters {
    pub fn add(&mut self, c: Counter, n: u64) {
        self.0[c as usize] = self.0[c as usize].wrapping_add(n);
    }

    pub fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// `(name, value)` for every counter, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c.name(), self.get(c)))
    }
}
