//! Converts files one after another and prints variants per second: the image benchmark's
//! Flotilla side (`bench/images.sh`), the same `transform` the edge runs.
//!
//! `convert WIDTH FORMAT QUALITY OUT_DIR FILE...`

use flotilla_images::{transform, Fit, ImageFormat, Limits, Spec, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: convert WIDTH FORMAT QUALITY OUT_DIR FILE...");
        std::process::exit(2);
    }
    let width: u32 = args[0].parse().expect("width");
    let format = ImageFormat::parse(&args[1]).expect("format");
    let quality: u8 = args[2].parse().expect("quality");
    let out_dir = std::path::Path::new(&args[3]);
    let spec = Spec {
        target: Target { width: Some(width), height: None, fit: Fit::Contain, upscale: false },
        format,
        quality,
        avif_speed: 7,
    };
    let limits = Limits { max_pixels: 100_000_000, max_bytes: 1 << 30 };
    let started = std::time::Instant::now();
    let (mut n, mut bytes) = (0, 0);
    for f in &args[4..] {
        let src = std::fs::read(f).expect("read");
        let out = transform(&src, &spec, &limits).unwrap_or_else(|e| panic!("{f}: {e}"));
        let name = std::path::Path::new(f).file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::write(out_dir.join(format!("{name}.{}", format.name())), &out.bytes).expect("write");
        n += 1;
        bytes += out.bytes.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{n} variants in {secs:.3} s = {:.2}/s, {bytes} bytes", n as f64 / secs);
}
