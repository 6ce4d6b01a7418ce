//! From the validated configuration to what the core runs: the checks against the running
//! system (interfaces exist, a DHCP pool has a server identifier) and the pools' core
//! configuration. The system is reached through [`System`], so the rules are unit-tested
//! without root.

use std::net::Ipv4Addr;

use crate::config::{Config, ConfigError, PoolSpec, PoolUse};
use crate::dhcp::DhcpConfig;
use crate::node::{NodeConfig, PoolConfig, ServiceConfig};
use crate::store::StorePool;

/// What setup needs to know about the host's interfaces.
pub trait System {
    /// Whether the interface exists (the error says why not).
    fn iface_exists(&self, name: &str) -> Result<(), String>;
    /// The interface's first IPv4 address.
    fn iface_ipv4(&self, name: &str) -> Option<Ipv4Addr>;
}

/// The real host.
pub struct Host;

impl System for Host {
    fn iface_exists(&self, name: &str) -> Result<(), String> {
        super::iface::index(name)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn iface_ipv4(&self, name: &str) -> Option<Ipv4Addr> {
        super::iface::ipv4(name)
    }
}

/// Names the flag an error about pool `p`'s interface is the operator's to fix: `-c` for
/// the pool the ddhcpd flags made, `--pool` for the others.
fn iface_error(p: &PoolSpec, iface: &str, reason: String) -> ConfigError {
    if p.name == "default" {
        ConfigError::new("-c", iface.to_string(), reason)
    } else {
        ConfigError::new("--pool", format!("{},iface={iface}", p.name), reason)
    }
}

/// The core's view of each configured pool, in the configuration's order.
pub fn node_config(cfg: &Config, sys: &impl System) -> Result<NodeConfig, ConfigError> {
    let mut pools = Vec::with_capacity(cfg.pools.len());
    for p in &cfg.pools {
        let service = match (p.use_, &p.iface) {
            (PoolUse::Dhcp, Some(iface)) => {
                sys.iface_exists(iface).map_err(|e| {
                    iface_error(p, iface, format!("no such network interface ({e})"))
                })?;
                let interface_addr = sys.iface_ipv4(iface);
                if interface_addr.is_none() && !p.options.iter().any(|o| o.code == 54) {
                    return Err(iface_error(
                        p,
                        iface,
                        "the interface has no IPv4 address to use as DHCP server identifier; add one or give -o 54:4:A.B.C.D".into(),
                    ));
                }
                ServiceConfig::Dhcp(DhcpConfig {
                    options: p.options.clone(),
                    interface_addr,
                })
            }
            (PoolUse::Dhcp, None) => ServiceConfig::Passive,
            (PoolUse::Local, Some(iface)) if cfg!(feature = "local") => {
                sys.iface_exists(iface).map_err(|e| {
                    iface_error(p, iface, format!("no such network interface ({e})"))
                })?;
                match local_config(p) {
                    Some(l) => ServiceConfig::Local(l),
                    None => return Err(iface_error(p, iface, "not a local pool".into())),
                }
            }
            (PoolUse::Local, _) if cfg!(feature = "local") => {
                return Err(ConfigError::new(
                    "--pool",
                    format!("{},use=local", p.name),
                    "a local pool needs iface=IFACE, the interface its addresses go on",
                ));
            }
            (PoolUse::Local, _) => {
                return Err(ConfigError::new(
                    "--pool",
                    format!("{},use=local", p.name),
                    "this build has no local address mode (built without the feature `local`, as the router build is)",
                ));
            }
            (PoolUse::Api, _) => ServiceConfig::Api(crate::api::ApiConfig {
                cooldown: std::time::Duration::from_secs(u64::from(p.cooldown.unwrap_or(300))),
                spare: p.spare,
                // A few claim rounds: enough for a block to be claimed when none has room.
                default_timeout: cfg.claim.tentative_timeout * 3,
            }),
        };
        let mut claim = cfg.claim.clone();
        claim.spare_leases = if matches!(service, ServiceConfig::Passive) {
            0
        } else {
            p.spare
        };
        pools.push(PoolConfig {
            name: p.name.clone(),
            range: p.range,
            claim,
            service,
            location: p.location.clone(),
        });
    }
    Ok(NodeConfig {
        pools,
        location: cfg.location.clone(),
        replicas: cfg.replicas,
        recover: cfg.recover,
        max_replica_lag: cfg.max_replica_lag,
        replica_sync: cfg.replica_sync,
    })
}

/// The local service's configuration of a `use=local` pool (its targets from `--pool`,
/// the timers at their defaults).
pub fn local_config(p: &PoolSpec) -> Option<crate::local::LocalConfig> {
    let l = p.local.as_ref()?;
    Some(crate::local::LocalConfig {
        iface: p.iface.clone()?,
        standby: l.standby,
        min: l.min,
        max_standby: l.max_standby,
        test_target: l.test_target,
        unmanaged: l.unmanaged.clone(),
        timers: crate::local::LocalTimers {
            hysteresis: l
                .hysteresis
                .map_or(crate::local::LocalTimers::default().hysteresis, |s| {
                    std::time::Duration::from_secs(s.into())
                }),
            ..Default::default()
        },
    })
}

/// The pools as the store binds itself to them.
pub fn store_pools(node: &NodeConfig) -> Vec<StorePool> {
    node.pools
        .iter()
        .map(|p| StorePool {
            name: p.name.clone(),
            range: p.range,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl System for Fake {
        fn iface_exists(&self, name: &str) -> Result<(), String> {
            match name {
                "c0" | "c1" | "bare" => Ok(()),
                _ => Err("No such device (os error 19)".into()),
            }
        }

        fn iface_ipv4(&self, name: &str) -> Option<Ipv4Addr> {
            match name {
                "c0" => Some(Ipv4Addr::new(10, 0, 0, 1)),
                "c1" => Some(Ipv4Addr::new(10, 1, 0, 1)),
                _ => None,
            }
        }
    }

    fn cfg(args: &str) -> Config {
        let argv = std::iter::once("ddhcpd").chain(args.split_whitespace());
        crate::config::from_args(argv).unwrap().unwrap()
    }

    #[test]
    fn ddhcpd_flags_make_one_default_dhcp_pool() {
        let n = node_config(&cfg("-i s -c c0 -N 10.0.0.0/24 -b 2 -s 3"), &Fake).unwrap();
        assert_eq!(n.pools.len(), 1);
        let p = &n.pools[0];
        assert_eq!(p.name, "default");
        assert_eq!(p.claim.spare_leases, 3);
        match &p.service {
            ServiceConfig::Dhcp(d) => {
                assert_eq!(d.interface_addr, Some(Ipv4Addr::new(10, 0, 0, 1)))
            }
            s => panic!("{s:?}"),
        }
        let n = node_config(&cfg("-i s -S -N 10.0.0.0/24 -s 3"), &Fake).unwrap();
        assert!(matches!(n.pools[0].service, ServiceConfig::Passive));
        assert_eq!(n.pools[0].claim.spare_leases, 0);
    }

    #[test]
    fn each_dhcp_pool_checks_its_own_interface() {
        let n = node_config(
            &cfg("-i s --pool a=10.0.0.0/24,iface=c0 --pool b=10.1.0.0/24,iface=c1,spare=7"),
            &Fake,
        )
        .unwrap();
        assert_eq!(n.pools.len(), 2);
        assert_eq!(n.pools[1].claim.spare_leases, 7);
        let e = node_config(&cfg("-i s --pool a=10.0.0.0/24,iface=nope"), &Fake).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--pool") && e.contains("a,iface=nope") && e.contains("no such"),
            "{e}"
        );
        let e = node_config(&cfg("-i s -c nope -N 10.0.0.0/24"), &Fake).unwrap_err();
        assert!(e.to_string().contains("-c"), "{e}");
        let e = node_config(&cfg("-i s --pool a=10.0.0.0/24,iface=bare"), &Fake).unwrap_err();
        assert!(e.to_string().contains("server identifier"), "{e}");
        // An explicit server identifier makes the bare interface usable.
        node_config(
            &cfg("-i s --pool a=10.0.0.0/24,iface=bare,option=54:4:10.0.0.1"),
            &Fake,
        )
        .unwrap();
    }

    #[test]
    fn local_and_api_pools_get_their_services() {
        let api =
            node_config(&cfg("-i s --pool h=10.0.0.0/24,use=api,cooldown=60"), &Fake).unwrap();
        match &api.pools[0].service {
            ServiceConfig::Api(a) => assert_eq!(a.cooldown, std::time::Duration::from_secs(60)),
            s => panic!("{s:?}"),
        }
        let local = node_config(&cfg("-i s --pool h=10.0.0.0/24,use=local,iface=c0"), &Fake);
        if cfg!(feature = "local") {
            assert!(matches!(
                local.unwrap().pools[0].service,
                ServiceConfig::Local(_)
            ));
            let e = node_config(
                &cfg("-i s --pool h=10.0.0.0/24,use=local,iface=nope"),
                &Fake,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("iface=nope") && e.contains("no such"), "{e}");
        } else {
            let e = local.unwrap_err().to_string();
            assert!(e.contains("use=local") && e.contains("feature"), "{e}");
        }
    }

    #[test]
    fn local_keys_reach_the_local_service() {
        let c = cfg(
            "-i s --pool h=10.9.0.0/24,use=local,iface=eth0,standby=3,max-standby=5,min=1,test-target=10.9.0.254:53,unmanaged=10.9.0.240/28,unmanaged=10.9.0.0/30",
        );
        let l = local_config(&c.pools[0]).unwrap();
        assert_eq!((l.standby, l.min, l.max_standby), (3, 1, 5));
        assert_eq!(
            l.test_target,
            Some((Ipv4Addr::new(10, 9, 0, 254), Some(53)))
        );
        assert_eq!(
            l.unmanaged,
            vec![
                (Ipv4Addr::new(10, 9, 0, 240), 28),
                (Ipv4Addr::new(10, 9, 0, 0), 30)
            ]
        );
        assert_eq!(l.iface, "eth0");
        let d = cfg("-i s --pool h=10.9.0.0/24,use=local,iface=eth0");
        let l = local_config(&d.pools[0]).unwrap();
        assert_eq!(
            (l.standby, l.min, l.max_standby, l.test_target),
            (1, 0, 1, None)
        );
        let parse_err = |args: &str| {
            let argv = std::iter::once("ddhcpd").chain(args.split_whitespace());
            crate::config::from_args(argv).unwrap_err()
        };
        for (args, why) in [
            (
                "-i s --pool h=10.9.0.0/24,use=local,standby=2,max-standby=1",
                "smaller than standby",
            ),
            (
                "-i s --pool h=10.9.0.0/24,use=local,test-target=10.9.0.1:x",
                "A.B.C.D:PORT",
            ),
            (
                "-i s --pool h=10.9.0.0/24,use=local,unmanaged=10.8.0.0/28",
                "not inside",
            ),
            (
                "-i s -c c0 --pool h=10.9.0.0/24,standby=2",
                "use=local pools only",
            ),
            (
                "-i s --pool h=10.9.0.0/24,use=local,standby=999",
                "more than the 256",
            ),
        ] {
            let e = parse_err(args);
            assert!(
                e.contains(why) && e.contains("--pool h") && !e.contains('\n'),
                "{args}: {e}"
            );
        }
    }
}
