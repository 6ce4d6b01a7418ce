//! The `--config` file: `ConfigFile::parse` on arbitrary text (lossy UTF-8), then
//! `Args::validate_with` merging it with a small command line, must never panic. Every error
//! is one line naming the file; a configuration that validates has one pool per file pool
//! (no `-N`, no `--pool`), unique names, disjoint ranges and valid options.
#![no_main]

use clap::Parser;
use ddhcp::config::{Args, ConfigFile, PoolUse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = match ConfigFile::parse("fuzz.toml", &text) {
        Ok(f) => f,
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line:?}");
            assert!(line.contains("fuzz.toml"), "{line:?}");
            return;
        }
    };
    // With and without the flags the file's node keys could also come from.
    for argv in [
        &["ddhcpd"][..],
        &["ddhcpd", "-i", "s", "-c", "c"][..],
        &[
            "ddhcpd",
            "-i",
            "s",
            "-S",
            "-b",
            "2",
            "-s",
            "1",
            "-o",
            "3:4:1.2.3.4",
        ][..],
    ] {
        let args = Args::try_parse_from(argv).expect("fixed arguments parse");
        let cfg = match args.validate_with(Some(&file)) {
            Ok(cfg) => cfg,
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "{e:?}");
                continue;
            }
        };
        assert_eq!(cfg.pools.len(), file.pool_names().count());
        for (i, p) in cfg.pools.iter().enumerate() {
            assert!(p.range.num_blocks() >= 1);
            if p.use_ != PoolUse::Dhcp {
                assert!(p.options.is_empty());
            }
            for o in &p.options {
                assert!(
                    ddhcp::dhcp::options::OptionStore::validate(o).is_ok(),
                    "{o:?}"
                );
            }
            for q in &cfg.pools[..i] {
                assert_ne!(p.name, q.name);
                assert!(q.range.locate(p.range.prefix()).is_none());
                assert!(p.range.locate(q.range.prefix()).is_none());
            }
            assert_eq!(cfg.pool_index(Some(&p.name)), Ok(i));
        }
        let _ = cfg.pool_index(None);
    }
});
