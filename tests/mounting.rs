//! Mounting the way Linux users do: mount options as mount(8) passes them (`-o ro`,
//! `uid=`/`gid=`/`umask=`, `allow_other`, the ones to ignore), `--store-opt`, `mount -t
//! fuse.stratus` and fstab through the `mount.fuse.stratus` helper, systemd's readiness
//! protocol, mounts by a user other than root, and a state dir nobody else can read.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::mount::{alive, eventually, Backend, Env, Mount, BIN};

const NOBODY: u32 = 65534;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// The mount options /proc/self/mountinfo shows for `mp`, if it is mounted.
fn mount_options(mp: &Path) -> Option<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mp.to_string_lossy();
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(|p| p.replace("\\040", " ")) == Some(want.to_string()))
            .then(|| f[5].to_string())
    })
}

/// Every file and directory of a local-folder remote with its size, mtime and content: what
/// a write to the remote would change.
fn snapshot(root: &Path) -> Vec<(String, u64, i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let data = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((rel, m.size(), m.mtime(), m.mtime_nsec(), data));
        }
    }
    out.sort();
    out
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn read_only_mount_refuses_every_change_and_never_writes_the_remote() {
    let env = Env::new(Backend::Local);
    env.put_remote("a.txt", b"remote a");
    env.put_remote("dir/b.txt", b"remote b");
    let state = env.new_state_dir();
    // A write queued by an earlier read-write mount, unmounted before its write-back of 8 s
    // was up: due while the read-only mount of the same state dir runs, which must leave it
    // queued, not upload it.
    let m = env.try_mount(&state, &["--write-back", "8"]).unwrap();
    fs::write(m.path("queued.txt"), b"queued").unwrap();
    let written = std::time::Instant::now();
    m.unmount();
    let before = snapshot(&env.root);
    assert!(!before.iter().any(|e| e.0 == "queued.txt"));

    for round in 0..2 {
        let m = env
            .try_mount(&state, &["-o", "ro", "--write-back", "0.1"])
            .unwrap();
        let opts = mount_options(&m.dir).expect("mounted");
        assert!(opts.split(',').any(|o| o == "ro"), "mount shows {opts}");
        // Reads work, of the remote and of the queued file.
        assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"remote a");
        assert_eq!(fs::read(m.path("dir/b.txt")).unwrap(), b"remote b");
        assert_eq!(fs::read(m.path("queued.txt")).unwrap(), b"queued");
        let erofs = Some(libc::EROFS);
        assert_eq!(errno_of(fs::write(m.path("new.txt"), b"x")), erofs);
        assert_eq!(
            errno_of(fs::OpenOptions::new().append(true).open(m.path("a.txt"))),
            erofs
        );
        assert_eq!(errno_of(fs::create_dir(m.path("newdir"))), erofs);
        assert_eq!(errno_of(fs::remove_file(m.path("a.txt"))), erofs);
        assert_eq!(errno_of(fs::remove_dir_all(m.path("dir"))), erofs);
        assert_eq!(
            errno_of(fs::rename(m.path("a.txt"), m.path("c.txt"))),
            erofs
        );
        assert_eq!(
            errno_of(fs::set_permissions(
                m.path("a.txt"),
                fs::Permissions::from_mode(0o600)
            )),
            erofs
        );
        assert_eq!(
            errno_of(std::os::unix::fs::symlink("a.txt", m.path("ln"))),
            erofs
        );
        let t = Command::new("truncate")
            .args(["-s", "0"])
            .arg(m.path("a.txt"))
            .output()
            .unwrap();
        assert!(!t.status.success());
        // `stratus sync` (a drain and a poll) is refused, as the kernel refuses every
        // attribute write on a read-only mount, with the reason.
        let o = m.stratus(&["sync", m.dir.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("read-only (-o ro)"), "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        std::thread::sleep(Duration::from_secs(2));
        // Past the queued write's due time (and a poll or two at the 0.1 s write-back).
        let due = written + Duration::from_secs(12);
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"remote a");
        m.unmount();
        assert_eq!(
            snapshot(&env.root),
            before,
            "round {round}: the read-only mount changed the remote"
        );
    }

    // The queue the read-only mounts left alone goes out with the next read-write mount.
    let m = env.try_mount(&state, &["--write-back", "0.1"]).unwrap();
    m.sync();
    assert_eq!(env.remote_files()["queued.txt"], b"queued");
}

#[test]
fn uid_gid_and_umask_set_the_owner_and_mode_every_entry_shows() {
    let env = Env::new(Backend::Local);
    env.put_remote("f.txt", b"f");
    env.put_remote("d/g.txt", b"g");
    let m = env
        .try_mount(&env.new_state_dir(), &["-o", "uid=1234,gid=2345,umask=027"])
        .unwrap();
    for (p, mode) in [
        ("f.txt", 0o640),
        ("d", 0o750),
        ("d/g.txt", 0o640),
        ("", 0o750),
    ] {
        let md = fs::metadata(m.path(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 2345), "{p}");
        assert_eq!(md.mode() & 0o777, mode, "{p}: {:o}", md.mode());
    }
    // A new file is shown the same way.
    fs::write(m.path("new.txt"), b"n").unwrap();
    let md = fs::metadata(m.path("new.txt")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1234, 2345, 0o640));
}

#[test]
fn options_mount8_passes_are_taken_and_unknown_ones_refused_in_one_line() {
    let env = Env::new(Backend::Local);
    env.put_remote("f.txt", b"f");
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &[
                "-o",
                "defaults,_netdev,nofail,noauto,auto,user,users,x-systemd.automount,comment=x",
                "-o",
                "rw,default_permissions,nodev,nosuid,noexec",
            ],
        )
        .unwrap();
    let opts = mount_options(&m.dir).unwrap();
    for o in ["rw", "nodev", "nosuid", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing from {opts}");
    }
    fs::write(m.path("w.txt"), b"w").unwrap();
    m.sync();
    assert_eq!(env.remote_files()["w.txt"], b"w");

    for (bad, named) in [
        ("ro,frobnicate", "frobnicate"),
        ("ro=1", "ro=1"),
        ("uid=bob", "uid=bob"),
        ("aws_unsigned_payload=true", "aws_unsigned_payload"),
    ] {
        let err = env
            .try_mount(&env.new_state_dir(), &["-o", bad])
            .err()
            .unwrap_or_else(|| panic!("-o {bad} mounted"));
        assert!(err.contains(named), "-o {bad}: {err}");
        assert_eq!(err.lines().count(), 1, "-o {bad}: {err}");
    }
}

#[test]
fn s3_store_options_go_in_store_opt_and_still_work_in_o_with_a_warning() {
    let env = Env::new(Backend::S3);
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["--store-opt", "aws_unsigned_payload=true", "-o", "_netdev"],
        )
        .unwrap();
    assert!(!m.mount_stderr.contains("deprecated"), "{}", m.mount_stderr);
    fs::write(m.path("a"), b"a").unwrap();
    m.sync();
    m.unmount();

    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["-o", "aws_unsigned_payload=true,_netdev"],
        )
        .unwrap();
    let warning: Vec<&str> = m
        .mount_stderr
        .lines()
        .filter(|l| l.contains("deprecated"))
        .collect();
    assert_eq!(warning.len(), 1, "{}", m.mount_stderr);
    assert!(
        warning[0].contains("--store-opt aws_unsigned_payload"),
        "{}",
        warning[0]
    );
    fs::write(m.path("b"), b"b").unwrap();
    m.sync();
    let files = env.remote_files();
    assert_eq!((&files["a"][..], &files["b"][..]), (&b"a"[..], &b"b"[..]));

    let err = env
        .try_mount(
            &env.new_state_dir(),
            &["--store-opt", "aws_no_such_option=1"],
        )
        .err()
        .expect("an unknown store option must fail");
    assert!(err.contains("aws_no_such_option"), "{err}");
}

/// Runs `cmd args` as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(cmd: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(cmd)
        .args(args)
        .env_remove("HOME")
        .output()
        .expect("setpriv (util-linux)")
}

fn open_to_others(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_root_mount_lets_other_users_in_only_with_allow_other() {
    let env = Env::new(Backend::Local);
    open_to_others(env.tmp.path());
    env.put_remote("f.txt", b"for everyone");
    let read = |m: &Mount| as_nobody("cat", &[m.path("f.txt").as_os_str()]);

    let private = env.try_mount(&env.new_state_dir(), &[]).unwrap();
    assert_eq!(fs::read(private.path("f.txt")).unwrap(), b"for everyone");
    let o = read(&private);
    assert!(
        !o.status.success(),
        "nobody read a mount without allow_other"
    );
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let o = as_nobody("ls", &[private.dir.as_os_str()]);
    assert!(
        !o.status.success(),
        "nobody listed a mount without allow_other"
    );

    let shared = env
        .try_mount(&env.new_state_dir(), &["-o", "allow_other"])
        .unwrap();
    let o = read(&shared);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"for everyone");
    // default_permissions still holds: nobody may not write root's file.
    let o = as_nobody(
        "sh",
        &[
            "-c".as_ref(),
            format!("echo x >> {}", shared.path("f.txt").display()).as_ref(),
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn a_user_mounts_when_dev_fuse_is_open_to_them_and_is_told_what_to_do_otherwise() {
    let env = Env::new(Backend::Local);
    open_to_others(env.tmp.path());
    let state = env.new_state_dir();
    let mp = env.new_mountpoint();
    for p in [&env.root, &state, &mp] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mount_args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            env.root.clone().into(),
            mp.clone().into(),
            "--state-dir".into(),
            state.clone().into(),
            "--write-back".into(),
            "0.1".into(),
        ];
        a.extend(extra.iter().map(Into::into));
        a
    };
    let run = |extra: &[&str]| {
        let a = mount_args(extra);
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        as_nobody(BIN, &refs)
    };

    // allow_other without user_allow_other in /etc/fuse.conf: said before anything mounts.
    let fuse_conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !fuse_conf.lines().any(|l| l.trim() == "user_allow_other") {
        let o = run(&["-o", "allow_other"]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("user_allow_other") && stderr(&o).contains("/etc/fuse.conf"),
            "{}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(mount_options(&mp).is_none());
    }

    // /dev/fuse closed to the user (in a mount namespace of its own, where a root-only file
    // stands in for it): one line that says what to do, not a bare "Permission denied".
    let closed = env.tmp.path().join("closed-fuse");
    fs::write(&closed, b"").unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "mount --bind {} /dev/fuse && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- \"$@\"",
        closed.display()
    );
    let a = mount_args(&[]);
    let o = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            BIN,
        ])
        .args(&a)
        .env_remove("HOME")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("/dev/fuse") && e.contains("group"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");

    // /dev/fuse open to everyone (Debian's default): the user's own mount works.
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Mount::mounted(mp.clone(), state.clone(), env.envs(), stderr(&o));
    let o = as_nobody(
        "sh",
        &[
            "-c".as_ref(),
            format!("echo mine > {}", m.path("n.txt").display()).as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(20, || env
        .remote_files()
        .get("n.txt")
        .is_some_and(|d| d == b"mine\n")));
    assert_eq!(fs::metadata(env.root.join("n.txt")).unwrap().uid(), NOBODY);
}

/// The mount(8) helpers (/sbin/mount.fuse.stratus and /sbin/mount.stratus, where util-linux
/// looks: /sbin only, not /usr/local/sbin) as `scripts/setup.sh --mount-helper` links them,
/// to the binary under test while this lives; what was there before is put back.
struct Helper {
    before: Vec<(PathBuf, Option<PathBuf>)>,
}

const HELPERS: [&str; 2] = ["/sbin/mount.fuse.stratus", "/sbin/mount.stratus"];

impl Helper {
    fn install() -> Helper {
        let before = HELPERS
            .iter()
            .map(|p| (PathBuf::from(p), fs::read_link(p).ok()))
            .collect();
        let o = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh"))
            .args(["--mount-helper", BIN])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "setup.sh --mount-helper: {}",
            stderr(&o)
        );
        for p in HELPERS {
            assert_eq!(fs::canonicalize(p).unwrap(), fs::canonicalize(BIN).unwrap());
        }
        Helper { before }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        for (p, b) in &self.before {
            let _ = fs::remove_file(p);
            if let Some(b) = b {
                let _ = std::os::unix::fs::symlink(b, p);
            }
        }
    }
}

fn daemon_of(state: &Path) -> u32 {
    fs::read_to_string(state.join("lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn mount_t_fuse_stratus_and_an_fstab_line_mount_and_umount_takes_them_off() {
    let _helper = Helper::install();
    let env = Env::new(Backend::Local);
    env.put_remote("f.txt", b"via mount(8)");

    let mp = env.new_mountpoint();
    let state = env.new_state_dir();
    let o = Command::new("mount")
        .args(["-t", "fuse.stratus"])
        .arg(&env.root)
        .arg(&mp)
        .arg("-o")
        .arg(format!("state_dir={},_netdev,nofail,ro", state.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "mount -t fuse.stratus: {}", stderr(&o));
    // A mount(8) helper says nothing on success (xfstests compares whole outputs).
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "the helper's output"
    );
    let opts = mount_options(&mp).expect("mounted");
    assert!(opts.split(',').any(|x| x == "ro"), "{opts}");
    assert_eq!(fs::read(mp.join("f.txt")).unwrap(), b"via mount(8)");
    let pid = daemon_of(&state);
    let o = Command::new("umount").arg(&mp).output().unwrap();
    assert!(o.status.success(), "umount: {}", stderr(&o));
    assert!(mount_options(&mp).is_none());
    assert!(eventually(30, || !alive(pid)), "the daemon outlived umount");

    // The short spelling, `-t stratus` (mount.stratus).
    let state1 = env.new_state_dir();
    let o = Command::new("mount")
        .args(["-t", "stratus"])
        .arg(&env.root)
        .arg(&mp)
        .arg("-o")
        .arg(format!("state_dir={}", state1.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "mount -t stratus: {}", stderr(&o));
    assert_eq!(fs::read(mp.join("f.txt")).unwrap(), b"via mount(8)");
    let pid = daemon_of(&state1);
    let o = Command::new("umount").arg(&mp).output().unwrap();
    assert!(o.status.success(), "umount: {}", stderr(&o));
    assert!(eventually(30, || !alive(pid)), "the daemon outlived umount");

    // An fstab line (in a file of the test's own: mount -T reads it instead of /etc/fstab).
    let fstab = env.tmp.path().join("fstab");
    let state2 = env.new_state_dir();
    fs::write(
        &fstab,
        format!(
            "# stratus\n{} {} fuse.stratus state_dir={},allow_other,_netdev,nofail,x-systemd.automount,comment=sync 0 0\n",
            env.root.display(),
            mp.display(),
            state2.display()
        ),
    )
    .unwrap();
    let o = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mp)
        .output()
        .unwrap();
    assert!(o.status.success(), "mount from fstab: {}", stderr(&o));
    assert!(mount_options(&mp).is_some());
    fs::write(mp.join("g.txt"), b"from fstab").unwrap();
    let m = Mount::mounted(mp.clone(), state2.clone(), env.envs(), String::new());
    m.sync();
    assert_eq!(env.remote_files()["g.txt"], b"from fstab");
    let pid = daemon_of(&state2);
    drop(m);
    assert!(eventually(30, || !alive(pid)));
}

/// `umount` and `mount` of the same state dir back to back, as xfstests cycles its scratch
/// mount: `umount` returns as soon as the kernel lets go, while the old daemon still stops
/// (its uploader, the database), and the new mount waits for it instead of failing with "held
/// by another live mount" (it did in about one cycle of five before).
#[test]
fn a_mount_right_after_umount_waits_for_the_old_daemon_to_finish_stopping() {
    let env = Env::new(Backend::Local);
    let mp = env.new_mountpoint();
    let state = env.new_state_dir();
    let mount = || {
        let mut c = Command::new(BIN);
        c.arg("mount")
            .arg(&env.root)
            .arg(&mp)
            .arg("--state-dir")
            .arg(&state)
            .args(["--write-back", "0.2"]);
        for (k, v) in env.envs() {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let mut old = Vec::new();
    for i in 0..8u64 {
        let o = mount();
        assert!(
            o.status.success(),
            "mount {i}, right after an umount: {}",
            stderr(&o)
        );
        let pid = daemon_of(&state);
        assert!(!old.contains(&pid), "mount {i} is an old daemon");
        assert!(
            old.iter().all(|p| !alive(*p)),
            "two daemons on one state dir"
        );
        old.push(pid);
        let content = common::mount::data(i, 8 << 20);
        let mut f = fs::File::create(mp.join(format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, &content).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let o = Command::new("umount").arg(&mp).output().unwrap();
        assert!(o.status.success(), "umount {i}: {}", stderr(&o));
    }
    let o = mount();
    assert!(o.status.success(), "the last mount: {}", stderr(&o));
    let m = Mount::mounted(mp.clone(), state.clone(), env.envs(), String::new());
    for i in 0..8u64 {
        let want = common::mount::data(i, 8 << 20);
        assert!(
            fs::read(mp.join(format!("f{i}"))).unwrap() == want,
            "f{i} differs"
        );
    }
    m.sync();
    assert_eq!(env.remote_files().len(), 8);
}

/// Waits for one datagram on `sock` (the test's stand-in for systemd's notify socket).
fn next_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn foreground_mount_notifies_ready_once_it_answers_and_stopping_on_sigterm_keeping_the_queue() {
    let env = Env::new(Backend::Local);
    env.put_remote("f.txt", b"served");
    let state = env.new_state_dir();
    let mp = env.new_mountpoint();
    let sock_path = env.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // The command line of the unit file in docs/, run as systemd would run it.
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/stratus-sync.service"),
    )
    .unwrap();
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let (root, mpath, spath) = (
        env.root.to_str().unwrap(),
        mp.to_str().unwrap(),
        state.to_str().unwrap(),
    );
    let argv: Vec<&str> = exec
        .split_whitespace()
        .map(|a| match a {
            "/usr/local/bin/stratus" => BIN,
            "${REMOTE}" => root,
            "${MOUNTPOINT}" => mpath,
            "/var/lib/stratus/sync" => spath,
            a => a,
        })
        .collect();
    assert_eq!(argv[0], BIN, "{exec}");
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .args(["--write-back", "3600", "--log-file"])
        .arg(state.join("stratus.log"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next_state(&sock);
    // Read right away: READY=1 must mean the mount answers now.
    let served = fs::read(mp.join("f.txt"));
    assert_eq!(ready.trim(), "READY=1");
    assert!(mount_options(&mp).is_some(), "READY=1 before the mount");
    assert_eq!(served.unwrap(), b"served");

    fs::write(mp.join("queued.txt"), b"kept").unwrap();
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next_state(&sock).trim(), "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
    assert!(mount_options(&mp).is_none(), "still mounted after SIGTERM");
    assert!(!env.remote_files().contains_key("queued.txt"));

    // The queue survived: the next mount of the state dir uploads the write.
    let m = env.try_mount(&state, &["--write-back", "0.1"]).unwrap();
    m.sync();
    assert_eq!(env.remote_files()["queued.txt"], b"kept");
}

/// Everything under `dir` that group or others may read, write or enter (`find -perm /077`).
fn open_to_others_under(dir: &Path) -> Vec<String> {
    let o = Command::new("find")
        .arg(dir)
        .args(["-perm", "/077"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_state_dir_is_private_and_a_loose_one_is_tightened_at_mount() {
    let env = Env::new(Backend::Local);
    env.put_remote("r.bin", &common::mount::data(1, 300_000));
    let state = env.new_state_dir();
    let m = env
        .try_mount(
            &state,
            &["--metrics", "127.0.0.1:0", "--dashboard", "127.0.0.1:0"],
        )
        .unwrap();
    fs::write(m.path("w.txt"), b"written here").unwrap();
    fs::create_dir(m.path("sub")).unwrap();
    fs::write(m.path("sub/x"), common::mount::data(2, 100_000)).unwrap();
    assert_eq!(fs::read(m.path("r.bin")).unwrap().len(), 300_000);
    m.sync();
    let data_files = fs::read_dir(state.join("data")).unwrap().count();
    assert!(data_files >= 2, "the mount wrote data files");
    assert!(state.join("stratus.log").exists() && state.join("state.db").exists());
    assert_eq!(open_to_others_under(&state), Vec::<String>::new());
    m.unmount();

    // An older version's state dir: readable by everyone.
    for e in fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    for e in fs::read_dir(state.join("data")).unwrap() {
        fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!open_to_others_under(&state).is_empty());
    let m = env.try_mount(&state, &[]).unwrap();
    assert_eq!(fs::read(m.path("w.txt")).unwrap(), b"written here");
    assert_eq!(open_to_others_under(&state), Vec::<String>::new());
    assert!(
        !m.log_lines_with("made it private").is_empty(),
        "no log line: {}",
        m.log_tail()
    );
}
