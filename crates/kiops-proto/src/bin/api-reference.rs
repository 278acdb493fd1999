//! Prints the API reference rendered from `proto/` (docs/api/reference.md);
//! with `--write`, writes that file instead.

use kiops_proto::reference;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let text = reference::render();
    match std::env::args().nth(1).as_deref() {
        None => {
            print!("{text}");
            Ok(())
        }
        Some("--write") => {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(reference::OUTPUT_PATH);
            std::fs::create_dir_all(path.parent().expect("a parent directory"))?;
            std::fs::write(&path, text)?;
            eprintln!("wrote {}", reference::OUTPUT_PATH);
            Ok(())
        }
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: api-reference [--write]");
            std::process::exit(2)
        }
    }
}
