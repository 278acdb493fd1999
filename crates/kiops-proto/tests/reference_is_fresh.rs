//! docs/api/reference.md is what the generator renders from `proto/` now:
//! a proto change without a regenerated reference fails here (and in CI).

use kiops_proto::reference;
use std::path::PathBuf;

#[test]
fn the_committed_reference_matches_the_proto() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(reference::OUTPUT_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let rendered = reference::render();
    if committed != rendered {
        let line = committed
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()))
            + 1;
        panic!(
            "{} is stale (first difference at line {line}); regenerate it with\n    {}\nand commit it",
            reference::OUTPUT_PATH,
            reference::REGENERATE
        );
    }
}
