//! Writes the seeds of fuzz target `TARGET` into `DIR` (`cargo xtask fuzz` starts from them).

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: seeds TARGET DIR");
        std::process::exit(2);
    };
    let seeds = voice_fuzz::seeds(&target);
    if seeds.is_empty() {
        eprintln!(
            "no fuzz target {target:?} (known: {})",
            voice_fuzz::TARGETS.join(", ")
        );
        std::process::exit(2);
    }
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), seed)?;
    }
    Ok(())
}
