//! The baseline of the upload benchmark (scripts/bench.sh, scripts/bench-upload.sh): a plain
//! multipart PUT of a file to S3 with object_store's own `put_multipart` and `WriteMultipart`,
//! the same client library, part size and signing stratus uses, and no file system, journal,
//! hash or precondition around it. What the server takes from such a client is the bar the
//! upload drain of a mount is measured against.
//!
//! ```text
//! cargo build --release --example put_baseline
//! AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x \
//!   AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 \
//!   target/release/examples/put_baseline FILE BUCKET KEY [PART_MIB [IN_FLIGHT]]
//! ```
//!
//! Prints the seconds from the first byte read to the completed upload, then the throughput.

use std::io::Read;
use std::time::Instant;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: put_baseline FILE BUCKET KEY [PART_MIB [IN_FLIGHT]]");
        std::process::exit(2);
    }
    let part_mib: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let in_flight: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&args[2])
        .build()?;
    let part = part_mib << 20;

    let started = Instant::now();
    let mut file = std::fs::File::open(&args[1])?;
    let upload = store.put_multipart(&Path::parse(&args[3])?).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut total = 0u64;
    loop {
        // One read per part into a buffer that becomes the part's body: no copy after it.
        let mut buf = vec![0u8; part];
        let mut n = 0;
        while n < part {
            match file.read(&mut buf[n..])? {
                0 => break,
                r => n += r,
            }
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        writer.wait_for_capacity(in_flight).await?;
        writer.put(bytes::Bytes::from(buf));
        if n < part {
            break;
        }
    }
    writer.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{secs:.3} s, {:.1} MiB/s ({total} bytes, {part_mib} MiB parts, {in_flight} in flight)",
        total as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}
