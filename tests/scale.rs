//! A big bucket mounts from its listing alone: no request per object before the mount is live
//! and answers `ls`, every object listed by `find`, and the metadata a listing lacks (a
//! symlink, a mode, hard links) shown once it is read: in the background, or at once when a
//! file is opened. Timings are not asserted here (they are `scripts/bench-scale.sh`'s).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::moto::Moto;
use common::mount::{eventually, Env, Mount};

const OBJECTS: usize = 20_000;
const DIRS: usize = 200;
const BUCKET: &str = "scale-test";

/// HEAD requests moto answered for keys below the mount's prefix, from its request log.
fn heads(moto: &Moto) -> usize {
    moto.log_text()
        .lines()
        .filter(|l| l.contains(&format!("\"HEAD /{BUCKET}/data/")))
        .count()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Writes, through a mount of its own prefix (`data/SUB`), the objects whose metadata matters:
/// a symlink, a file of mode 0600 and two hard links.
fn write_extras(env: &Env, sub: &str) {
    let state = env.new_state_dir();
    let mp = env.new_mountpoint();
    let url = format!("s3://{BUCKET}/data/{sub}");
    let out = env.stratus(&[
        "mount",
        &url,
        mp.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--write-back",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount::mounted(mp, state, env.envs(), String::new());
    std::fs::write(m.path("target.txt"), b"the target\n").unwrap();
    std::os::unix::fs::symlink("target.txt", m.path("link")).unwrap();
    std::fs::write(m.path("secret"), b"private\n").unwrap();
    std::fs::set_permissions(
        m.path("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(m.path("h1"), b"linked\n").unwrap();
    std::fs::hard_link(m.path("h1"), m.path("h2")).unwrap();
    m.sync();
    m.unmount();
}

#[test]
fn a_big_bucket_mounts_from_its_listing_and_reads_metadata_later() {
    let moto = Arc::new(Moto::start_with_env(&[
        ("MOTO_SEED", &format!("{BUCKET}/data:{OBJECTS}:{DIRS}")),
        ("MOTO_FAST_LISTING", "1"),
    ]));
    let env = Env::on_moto_bucket(moto.clone(), BUCKET);
    // `a` sorts before the seeded `dNNNNN` directories, so the background reads it first;
    // `zz` after them, so it is read last, long after this test has opened it.
    write_extras(&env, "a");
    write_extras(&env, "zz");

    let before = heads(&moto);
    let m = env.mount();
    let root: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root.len(), DIRS + 2, "{root:?}");
    let at_first_ls = heads(&moto) - before;
    assert_eq!(
        at_first_ls, 0,
        "the mount went live and answered ls only after HEADs of its objects"
    );
    // Before its metadata is read, a file shows the listing's size with a default mode (the
    // kernel caches this for 30 s: only an invalidation shows the real mode sooner).
    assert_eq!(mode(&m.path("zz/secret")), 0o644);
    let a_secret_first = mode(&m.path("a/secret"));

    // Opened before the background got to it: its metadata is read first. The "file" is
    // a symlink, and the open follows it.
    assert_eq!(
        std::fs::read(m.path("zz/link")).unwrap(),
        b"the target\n",
        "opening a symlink the listing showed as a file"
    );
    assert_eq!(
        std::fs::read_link(m.path("zz/link")).unwrap(),
        Path::new("target.txt")
    );
    assert_eq!(std::fs::read(m.path("zz/secret")).unwrap(), b"private\n");
    assert_eq!(
        mode(&m.path("zz/secret")),
        0o600,
        "mode after an open read it"
    );

    let find = Command::new("find")
        .arg(&m.dir)
        .args(["-not", "-type", "d"])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&find.stdout).lines().count();
    assert_eq!(found, OBJECTS + 2 * 5, "find lists every object");
    let through_find = heads(&moto) - before;
    assert!(
        through_find < OBJECTS / 2,
        "{through_find} HEADs during mount, ls and find of {OBJECTS} objects"
    );

    // Read in the background: the mode shows without an open, within the kernel's 30 s
    // attribute cache (so through an invalidation), the symlink reads as one, and the two
    // names of one inode join.
    let secret = m.path("a/secret");
    assert!(
        eventually(20, || mode(&secret) == 0o600),
        "a/secret still shows mode {:o} (first {a_secret_first:o})",
        mode(&secret)
    );
    assert!(eventually(10, || std::fs::read_link(m.path("a/link")).is_ok()));
    let (h1, h2) = (m.path("a/h1"), m.path("a/h2"));
    assert!(
        eventually(10, || {
            let (a, b) = (h1.metadata().unwrap(), h2.metadata().unwrap());
            a.ino() == b.ino() && a.nlink() == 2
        }),
        "hard links not joined: {:?} {:?}",
        h1.metadata().map(|m| (m.ino(), m.nlink())),
        h2.metadata().map(|m| (m.ino(), m.nlink()))
    );
    assert_eq!(std::fs::read(&h2).unwrap(), b"linked\n");
    m.unmount();
}
