//! Pools: `--pool NAME=CIDR[,KEY=VALUE…]`, the `[pool.NAME]` tables of the file and the
//! `default` pool of `-N`, validated alone and against each other.

use std::borrow::Cow;

use super::{ConfigError, DhcpOption, Raw};
use crate::range::ManagedRange;

/// What a pool's addresses are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolUse {
    /// Leased to DHCP clients on the pool's client interface.
    Dhcp,
    /// Addresses configured on this node's own interface.
    Local,
    /// Handed out through the allocation API.
    Api,
}

impl PoolUse {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolUse::Dhcp => "dhcp",
            PoolUse::Local => "local",
            PoolUse::Api => "api",
        }
    }
}

impl std::fmt::Display for PoolUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated pool.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    /// 1-32 characters of `[A-Za-z0-9_-]`, unique.
    pub name: String,
    pub range: ManagedRange,
    pub use_: PoolUse,
    /// dhcp: the client interface served (None: no DHCP service, `-S`); local: the
    /// interface configured (None if not given); api: always None.
    pub iface: Option<String>,
    /// Free addresses to keep ready in owned blocks (0 for a dhcp pool without interface).
    pub spare: u32,
    pub location: Option<String>,
    /// `-o` options followed by the pool's own, same code replaced (dhcp pools only).
    pub options: Vec<DhcpOption>,
    /// The local address mode's targets (local pools only).
    pub local: Option<LocalSpec>,
    /// api pools: seconds a released address waits before it is handed out again (None:
    /// the default, 300 s).
    pub cooldown: Option<u32>,
}

/// `standby=N,min=M,max-standby=K,hysteresis=SECS,test-target=IP[:PORT],unmanaged=CIDR…` of
/// a local pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSpec {
    /// Proven, unused addresses to keep configured (default 1).
    pub standby: u32,
    /// At least this many configured, standby and active together (default 0).
    pub min: u32,
    /// Never more standby than this (default: `standby`).
    pub max_standby: u32,
    /// Seconds an address stays active after its last socket is gone (None: the
    /// service's default, 30 s).
    pub hysteresis: Option<u32>,
    pub test_target: Option<(std::net::Ipv4Addr, Option<u16>)>,
    pub unmanaged: Vec<(std::net::Ipv4Addr, u8)>,
}

/// A pool as written, before validation.
#[derive(Clone, Debug)]
pub(crate) struct RawPool {
    pub(crate) name: String,
    /// How errors about the pool as a whole name it: `-N`, `--pool lan`,
    /// `ddhcpd.toml:7 pool.lan`.
    pub(crate) at: Cow<'static, str>,
    /// Where it was defined, for "name already used": `-N`, `--pool`, `ddhcpd.toml:7`.
    pub(crate) defined: Cow<'static, str>,
    pub(crate) network: Option<Raw>,
    pub(crate) block: Option<Raw>,
    pub(crate) use_: Option<Raw>,
    pub(crate) iface: Option<Raw>,
    pub(crate) spare: Option<Raw>,
    pub(crate) location: Option<Raw>,
    pub(crate) options: Vec<Raw>,
    pub(crate) standby: Option<Raw>,
    pub(crate) min: Option<Raw>,
    pub(crate) max_standby: Option<Raw>,
    pub(crate) hysteresis: Option<Raw>,
    pub(crate) test_target: Option<Raw>,
    pub(crate) unmanaged: Vec<Raw>,
    pub(crate) cooldown: Option<Raw>,
}

/// The keys of `--pool` after `NAME=CIDR`.
pub(crate) const FLAG_KEYS: &str = "block, use, iface, spare, location, option, standby, min, max-standby, hysteresis, test-target, unmanaged, cooldown";

/// What pools inherit from the node: `-b`, `-s`, `-c`, `-S`, `-o` (or the file's keys).
pub(crate) struct Defaults {
    pub(crate) block: Raw,
    pub(crate) spare: Raw,
    pub(crate) client_iface: Option<Raw>,
    pub(crate) no_client: bool,
    pub(crate) options: Vec<DhcpOption>,
}

impl RawPool {
    pub(crate) fn new(
        name: &str,
        at: Cow<'static, str>,
        defined: Cow<'static, str>,
        network: Option<Raw>,
    ) -> Self {
        RawPool {
            name: name.to_string(),
            at,
            defined,
            network,
            block: None,
            use_: None,
            iface: None,
            spare: None,
            location: None,
            options: Vec::new(),
            standby: None,
            min: None,
            max_standby: None,
            hysteresis: None,
            test_target: None,
            unmanaged: Vec::new(),
            cooldown: None,
        }
    }

    /// The pool `-N` makes.
    pub(crate) fn default_pool(network: &str) -> Self {
        RawPool::new(
            "default",
            Cow::Borrowed("-N"),
            Cow::Borrowed("-N"),
            Some(Raw::flag("-N", network)),
        )
    }

    /// Parses `NAME=CIDR[,block=POW][,use=…][,iface=…][,spare=N][,location=TAG][,option=…]`.
    pub(crate) fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        let mut items = s.split(',');
        let head = items.next().unwrap_or_default();
        let Some((name, network)) = head.split_once('=') else {
            return Err(ConfigError::new(
                "--pool",
                s,
                "expected NAME=A.B.C.D/LEN[,KEY=VALUE…]",
            ));
        };
        check_name("--pool", name)?;
        let key_at = |k: &str| Cow::Owned(format!("--pool {name}.{k}"));
        let mut pool = RawPool::new(
            name,
            Cow::Owned(format!("--pool {name}")),
            Cow::Borrowed("--pool"),
            Some(Raw {
                text: network.to_string(),
                at: key_at("network"),
            }),
        );
        for item in items {
            let item_err = |why: String| ConfigError::new(format!("--pool {name}"), item, why);
            let Some((key, value)) = item.split_once('=') else {
                return Err(item_err(format!(
                    "expected KEY=VALUE after NAME=A.B.C.D/LEN (keys: {FLAG_KEYS})"
                )));
            };
            let raw = Raw {
                text: value.to_string(),
                at: key_at(key),
            };
            match key {
                "option" => pool.options.push(raw),
                "unmanaged" => pool.unmanaged.push(raw),
                "block" | "use" | "iface" | "spare" | "location" | "standby" | "min"
                | "max-standby" | "hysteresis" | "test-target" | "cooldown" => {
                    pool.set(key, raw).map_err(item_err)?;
                }
                _ => {
                    return Err(item_err(format!("unknown key '{key}' (keys: {FLAG_KEYS})")));
                }
            }
        }
        Ok(pool)
    }

    /// Sets one of the single-valued keys; `Err` if it was already set.
    pub(crate) fn set(&mut self, key: &str, raw: Raw) -> Result<(), String> {
        let slot = match key {
            "network" => &mut self.network,
            "block" => &mut self.block,
            "use" => &mut self.use_,
            "iface" => &mut self.iface,
            "spare" => &mut self.spare,
            "location" => &mut self.location,
            "standby" => &mut self.standby,
            "min" => &mut self.min,
            "max-standby" => &mut self.max_standby,
            "hysteresis" => &mut self.hysteresis,
            "test-target" => &mut self.test_target,
            "cooldown" => &mut self.cooldown,
            _ => return Err(format!("unknown key '{key}'")),
        };
        if slot.is_some() {
            return Err(format!("{key} is given twice"));
        }
        *slot = Some(raw);
        Ok(())
    }
}

/// A pool name: 1-32 characters of `[A-Za-z0-9_-]`.
pub(crate) fn check_name(at: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ConfigError::new(
            at.to_string(),
            name,
            "not a valid pool name (1-32 characters of A-Z a-z 0-9 _ -)",
        ));
    }
    Ok(())
}

/// A location tag: 1-64 characters of `[A-Za-z0-9_.:-]`.
pub(crate) fn check_tag(raw: &Raw) -> Result<(), ConfigError> {
    let t = &raw.text;
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(raw.err("not a valid location tag (1-64 characters of A-Z a-z 0-9 _ - . :)"));
    }
    Ok(())
}

/// A validated pool and where its interface came from (for the cross checks).
struct Built {
    spec: PoolSpec,
    iface_at: Option<Raw>,
}

fn build(raw: &RawPool, d: &Defaults) -> Result<Built, ConfigError> {
    let use_ = match &raw.use_ {
        None => PoolUse::Dhcp,
        Some(u) => match u.text.as_str() {
            "dhcp" => PoolUse::Dhcp,
            "local" => PoolUse::Local,
            "api" => PoolUse::Api,
            _ => return Err(u.err("unknown use (expected dhcp, local or api)")),
        },
    };
    let network = raw.network.as_ref().ok_or_else(|| {
        ConfigError::new(
            format!("{}.network", raw.at),
            "",
            "a pool needs network = \"A.B.C.D/LEN\"",
        )
    })?;
    let range = super::range_of(network, raw.block.as_ref().unwrap_or(&d.block))?;
    let spare_raw = raw.spare.as_ref().unwrap_or(&d.spare);
    let spare: u32 = spare_raw.number("a number of leases")?;
    let total = 1u64 << (32 - u32::from(range.prefix_len()));
    if u64::from(spare) > total {
        return Err(spare_raw.err(format!(
            "more spare leases than the {total} addresses of pool '{}' ({range})",
            raw.name
        )));
    }
    let iface_at = match use_ {
        PoolUse::Dhcp => match (&raw.iface, &d.client_iface) {
            (Some(i), _) => Some(i.clone()),
            (None, _) if d.no_client => None,
            (None, Some(c)) => Some(c.clone()),
            (None, None) => {
                let reason = if raw.defined == "-N" {
                    "the client interface is required (or -S for no DHCP service)".to_string()
                } else {
                    format!(
                        "the client interface is required by dhcp pool '{}' (give it iface=, or -c, or -S for no DHCP service)",
                        raw.name
                    )
                };
                return Err(ConfigError::new("-c", "", reason));
            }
        },
        PoolUse::Local => raw.iface.clone(),
        PoolUse::Api => {
            if let Some(i) = &raw.iface {
                return Err(i.err("an api pool has no interface"));
            }
            None
        }
    };
    let iface = iface_at.as_ref().map(Raw::iface).transpose()?;
    let location = raw
        .location
        .as_ref()
        .map(|l| check_tag(l).map(|()| l.text.clone()))
        .transpose()?;
    let own = raw
        .options
        .iter()
        .map(Raw::option)
        .collect::<Result<Vec<_>, _>>()?;
    let options = if use_ == PoolUse::Dhcp {
        let mut all = d.options.clone();
        for o in own {
            match all.iter_mut().find(|x| x.code == o.code) {
                Some(x) => *x = o,
                None => all.push(o),
            }
        }
        all
    } else {
        if let Some(o) = raw.options.first() {
            return Err(o.err(format!(
                "DHCP options are for use=dhcp pools only (this one is use={use_})"
            )));
        }
        Vec::new()
    };
    let local = local_spec(raw, use_, &range)?;
    let cooldown = match (&raw.cooldown, use_) {
        (None, _) => None,
        (Some(r), PoolUse::Api) => {
            let secs: u32 = r.number("a number of seconds")?;
            if secs > 30 * 86_400 {
                return Err(r.err("at most 30 days (2592000 s)"));
            }
            Some(secs)
        }
        (Some(r), u) => {
            return Err(r.err(format!(
                "cooldown is for use=api pools only (this one is use={u})"
            )));
        }
    };
    Ok(Built {
        spec: PoolSpec {
            name: raw.name.clone(),
            range,
            use_,
            // Without a client interface nobody needs addresses (as ddhcpd's -S).
            spare: if use_ == PoolUse::Dhcp && iface.is_none() {
                0
            } else {
                spare
            },
            iface,
            location,
            options,
            local,
            cooldown,
        },
        iface_at,
    })
}

/// The local keys: for `use=local` pools only, each checked against the pool.
fn local_spec(
    raw: &RawPool,
    use_: PoolUse,
    range: &ManagedRange,
) -> Result<Option<LocalSpec>, ConfigError> {
    let given = [
        &raw.standby,
        &raw.min,
        &raw.max_standby,
        &raw.hysteresis,
        &raw.test_target,
    ]
    .into_iter()
    .flatten()
    .chain(&raw.unmanaged)
    .next();
    if use_ != PoolUse::Local {
        return match given {
            Some(k) => Err(k.err(format!(
                "the local address keys are for use=local pools only (this one is use={use_})"
            ))),
            None => Ok(None),
        };
    }
    let size = 1u64 << (32 - u32::from(range.prefix_len()));
    let count = |r: &Option<Raw>, default: u32| -> Result<u32, ConfigError> {
        let Some(r) = r else { return Ok(default) };
        let n: u32 = r.number("a number of addresses")?;
        if u64::from(n) > size {
            return Err(r.err(format!("more than the {size} addresses of the pool")));
        }
        Ok(n)
    };
    let standby = count(&raw.standby, 1)?;
    let min = count(&raw.min, 0)?;
    let max_standby = count(&raw.max_standby, standby)?;
    if max_standby < standby {
        let r = raw
            .max_standby
            .as_ref()
            .expect("given, else it defaults to standby");
        return Err(r.err(format!("smaller than standby ({standby})")));
    }
    use crate::local::{MAX_HYSTERESIS_SECS, MIN_HYSTERESIS_SECS};
    let hysteresis = raw
        .hysteresis
        .as_ref()
        .map(|r| {
            let secs = r.secs_in(
                MIN_HYSTERESIS_SECS.into(),
                MAX_HYSTERESIS_SECS.into(),
                " (how long an unused address stays active)",
            )?;
            Ok(secs.as_secs() as u32)
        })
        .transpose()?;
    let test_target = raw
        .test_target
        .as_ref()
        .map(|r| {
            let bad = || r.err("expected A.B.C.D or A.B.C.D:PORT");
            let (ip, port) = match r.text.split_once(':') {
                Some((ip, port)) => (ip, Some(port.parse::<u16>().map_err(|_| bad())?)),
                None => (r.text.as_str(), None),
            };
            Ok((ip.parse().map_err(|_| bad())?, port))
        })
        .transpose()?;
    let unmanaged = raw
        .unmanaged
        .iter()
        .map(|r| {
            let bad = |why: &str| r.err(why.to_string());
            let (ip, len) = r
                .text
                .split_once('/')
                .ok_or_else(|| bad("expected A.B.C.D/LEN"))?;
            let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad("expected A.B.C.D/LEN"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| bad("prefix length is not a number 0-32"))?;
            let inside = range.locate(ip).is_some() && len >= range.prefix_len();
            if !inside {
                return Err(bad(&format!("not inside the pool's range {range}")));
            }
            Ok((ip, len))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(LocalSpec {
        standby,
        min,
        max_standby,
        hysteresis,
        test_target,
        unmanaged,
    }))
}

/// First and one-past-last address of a range.
fn span(r: &ManagedRange) -> (u64, u64) {
    let start = u64::from(u32::from(r.prefix()));
    (start, start + (1u64 << (32 - u32::from(r.prefix_len()))))
}

/// Validates every pool, then that names are unique, ranges disjoint and no two dhcp pools
/// share a client interface.
pub(crate) fn build_all(raws: &[RawPool], d: &Defaults) -> Result<Vec<PoolSpec>, ConfigError> {
    for (i, p) in raws.iter().enumerate() {
        if let Some(first) = raws[..i].iter().find(|q| q.name == p.name) {
            let by = if first.defined == "-N" {
                "-N (which makes the pool 'default')".to_string()
            } else {
                first.defined.to_string()
            };
            return Err(ConfigError::new(
                p.at.clone(),
                p.name.clone(),
                format!("the pool name is already used by {by}"),
            ));
        }
    }
    let built = raws
        .iter()
        .map(|r| build(r, d))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, b) in built.iter().enumerate() {
        let (s, e) = span(&b.spec.range);
        for a in &built[..i] {
            let (s2, e2) = span(&a.spec.range);
            if s < e2 && s2 < e {
                let network = raws[i]
                    .network
                    .as_ref()
                    .expect("built pools have a network");
                return Err(network.err(format!(
                    "pool '{}' ({}) overlaps pool '{}' ({}, from {}); pools must not share addresses",
                    b.spec.name, b.spec.range, a.spec.name, a.spec.range, raws_defined(raws, &a.spec.name)
                )));
            }
        }
        if b.spec.use_ != PoolUse::Dhcp {
            continue;
        }
        let Some(iface) = &b.spec.iface else { continue };
        if let Some(a) = built[..i]
            .iter()
            .find(|a| a.spec.use_ == PoolUse::Dhcp && a.spec.iface.as_ref() == Some(iface))
        {
            let at = b.iface_at.as_ref().expect("a dhcp interface has an origin");
            return Err(at.err(format!(
                "dhcp pools '{}' and '{}' would both serve DHCP on {iface}; two dhcp pools on one client interface are not supported",
                a.spec.name, b.spec.name
            )));
        }
    }
    Ok(built.into_iter().map(|b| b.spec).collect())
}

fn raws_defined<'a>(raws: &'a [RawPool], name: &str) -> &'a str {
    raws.iter()
        .find(|r| r.name == name)
        .map_or("", |r| &r.defined)
}
