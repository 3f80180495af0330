//! Every fuzz seed (`fuzz/corpus/<target>/`) and every past finding
//! (`fuzz/regressions/<target>/`) through its entry point in `wsgate::fuzz`,
//! on stable, with every `cargo test`: a finding fixed once stays fixed.

use std::path::Path;

type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("frames", wsgate::fuzz::frames),
    ("request_head", wsgate::fuzz::request_head),
    ("connect_request", wsgate::fuzz::connect_request),
    ("config", wsgate::fuzz::config_text),
    ("hub_json", wsgate::fuzz::hub_json),
];

#[test]
fn every_seed_and_past_finding_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, entry) in TARGETS {
        let mut seeds = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for file in dir {
                let path = file.unwrap().path();
                eprintln!("{target}: {}", path.display());
                entry(&std::fs::read(&path).unwrap());
                seeds += 1;
            }
        }
        assert!(seeds > 0, "no seeds for {target}");
    }
}
