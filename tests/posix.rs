//! POSIX behaviour on a real mount, one test per operation family, each run against the
//! local-folder remote, an S3 server and Azurite, with what lands on the remote checked
//! without going through the mount.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use common::mount::{data, eventually, Env, ObjKind};

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

every_backend!(round_trip_is_byte_for_byte, |env: &Env| {
    let m = env.mount();
    // 20 MiB + 17 crosses the multipart threshold on S3.
    let sizes = [0usize, 1, 4096, 1_000_003, 20 * 1024 * 1024 + 17];
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    for (i, n) in sizes.iter().enumerate() {
        fs::write(m.path(&format!("a/b/c/f{i}")), data(i as u64, *n)).unwrap();
    }
    fs::write(m.path("top.txt"), b"top\n").unwrap();
    m.sync();
    let remote = env.remote_files();
    for (i, n) in sizes.iter().enumerate() {
        let got = remote
            .get(&format!("a/b/c/f{i}"))
            .unwrap_or_else(|| panic!("f{i} missing on the remote: {:?}", remote.keys()));
        assert_eq!(got.len(), *n, "size of f{i}");
        assert!(got == &data(i as u64, *n), "content of f{i} differs");
    }
    assert_eq!(remote["top.txt"], b"top\n");
    // What the mount reads back is what was written.
    assert_eq!(fs::read(m.path("a/b/c/f3")).unwrap(), data(3, 1_000_003));
    assert_eq!(m.state_of("top.txt"), "synced");
    if env.backend == common::mount::Backend::S3 {
        let tree = env.remote_tree();
        let meta = &tree["top.txt"].meta;
        assert_eq!(meta.mode, Some(0o644));
        let expect = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"top\n"))
        };
        assert_eq!(meta.sha256.as_deref(), Some(expect.as_str()));
    }
});

every_backend!(create_and_write, |env: &Env| {
    let m = env.mount();
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    f.write_all(b"hello world").unwrap();
    f.write_at(b"WORLD", 6).unwrap();
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello WORLD", "read back through the writing handle");
    drop(f);
    let e = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(m.path("f"))
        .unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::EEXIST,
        "O_CREAT|O_EXCL on an existing file"
    );
    let mut a = OpenOptions::new().append(true).open(m.path("f")).unwrap();
    a.write_all(b"!!").unwrap();
    drop(a);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello WORLD!!");
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 13);
    // O_TRUNC then a shorter write: nothing of the old content is left.
    fs::write(m.path("g"), b"a longer first version").unwrap();
    fs::write(m.path("g"), b"short").unwrap();
    assert_eq!(fs::read(m.path("g")).unwrap(), b"short");

    m.sync();
    let files = env.remote_files();
    assert_eq!(files["f"], b"hello WORLD!!");
    assert_eq!(files["g"], b"short");
    assert_eq!(m.state_of("f"), "synced");
});

every_backend!(truncate, |env: &Env| {
    let m = env.mount();
    fs::write(m.path("f"), b"hello WORLD!!").unwrap();
    m.sync();
    // ftruncate shorter, then truncate(2) by path longer: the gap reads as zeros.
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello");
    let c = CString::new(m.path("f").as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 8) }, 0);
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 8);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello\0\0\0");
    // open(O_TRUNC) empties a file that is already on the remote.
    fs::write(m.path("e"), b"not for long").unwrap();
    m.sync();
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.path("e"))
            .unwrap(),
    );
    assert_eq!(fs::metadata(m.path("e")).unwrap().len(), 0);

    m.sync();
    let files = env.remote_files();
    assert_eq!(files["f"], b"hello\0\0\0");
    assert_eq!(files["e"], b"");
});

every_backend!(rename, |env: &Env| {
    let m = env.mount();
    // Into another directory.
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("f"), b"moved").unwrap();
    fs::rename(m.path("f"), m.path("d/g")).unwrap();
    assert!(!m.path("f").exists());
    assert_eq!(fs::read(m.path("d/g")).unwrap(), b"moved");
    // Replacing a file.
    fs::write(m.path("r1"), b"x").unwrap();
    fs::write(m.path("r2"), b"y").unwrap();
    m.sync();
    fs::rename(m.path("r1"), m.path("r2")).unwrap();
    assert_eq!(fs::read(m.path("r2")).unwrap(), b"x");
    assert!(!m.path("r1").exists());
    // Onto an empty directory; onto a non-empty one is refused.
    fs::create_dir_all(m.path("e1")).unwrap();
    fs::write(m.path("e1/in"), b"e").unwrap();
    fs::create_dir(m.path("e2")).unwrap();
    fs::rename(m.path("e1"), m.path("e2")).unwrap();
    assert_eq!(fs::read(m.path("e2/in")).unwrap(), b"e");
    fs::create_dir(m.path("full")).unwrap();
    fs::write(m.path("full/x"), b"x").unwrap();
    let e = fs::rename(m.path("e2"), m.path("full")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTEMPTY);
    // A whole directory tree that is already on the remote.
    fs::create_dir_all(m.path("tree/inner")).unwrap();
    fs::write(m.path("tree/inner/leaf"), b"leaf").unwrap();
    fs::write(m.path("tree/top"), b"t").unwrap();
    m.sync();
    fs::rename(m.path("tree"), m.path("tree2")).unwrap();
    assert_eq!(fs::read(m.path("tree2/inner/leaf")).unwrap(), b"leaf");
    assert!(!m.path("tree").exists());

    m.sync();
    let tree = env.remote_tree();
    let files = env.remote_files();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "d/g",
            "e2/in",
            "full/x",
            "r2",
            "tree2/inner/leaf",
            "tree2/top"
        ],
        "remote files"
    );
    assert_eq!(files["d/g"], b"moved");
    assert_eq!(files["r2"], b"x");
    assert_eq!(files["tree2/top"], b"t");
    for gone in ["e1", "tree", "tree/inner"] {
        assert!(
            !tree.contains_key(gone),
            "{gone} should be gone from the remote: {:?}",
            tree.keys()
        );
    }
    assert_eq!(tree["e2"].kind, ObjKind::Dir);
    assert_eq!(tree["tree2/inner"].kind, ObjKind::Dir);
});

every_backend!(directories, |env: &Env| {
    let m = env.mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("d/sub")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    assert_eq!(
        errno_of(&fs::create_dir(m.path("d")).unwrap_err()),
        libc::EEXIST
    );
    fs::write(m.path("d/file"), b"in d").unwrap();
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["file", "sub"]);
    m.sync();
    // rmdir refuses a directory with entries and a file; removes an empty one, also from
    // the remote.
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("d/file")).unwrap_err()),
        libc::ENOTDIR
    );
    fs::remove_dir(m.path("d/sub")).unwrap();
    assert!(!m.path("d/sub").exists());

    m.sync();
    let tree = env.remote_tree();
    assert_eq!(tree["d"].kind, ObjKind::Dir);
    assert_eq!(tree["empty"].kind, ObjKind::Dir, "an empty directory");
    assert_eq!(tree["d/file"].data, b"in d");
    assert!(
        !tree.contains_key("d/sub"),
        "d/sub should be gone from the remote: {:?}",
        tree.keys()
    );
});

every_backend!(symlinks, |env: &Env| {
    let m = env.mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/g"), b"target").unwrap();
    std::os::unix::fs::symlink("d/g", m.path("ln")).unwrap();
    std::os::unix::fs::symlink("nowhere", m.path("dangling")).unwrap();
    assert_eq!(fs::read_link(m.path("ln")).unwrap().to_str(), Some("d/g"));
    assert!(fs::symlink_metadata(m.path("ln"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(m.path("ln")).unwrap(), b"target");
    assert_eq!(
        fs::read_link(m.path("dangling")).unwrap().to_str(),
        Some("nowhere")
    );

    m.sync();
    let tree = env.remote_tree();
    assert_eq!(tree["ln"].kind, ObjKind::Symlink);
    assert_eq!(tree["ln"].meta.symlink.as_deref(), Some("d/g"));
    assert_eq!(tree["dangling"].meta.symlink.as_deref(), Some("nowhere"));
    assert_eq!(tree["d/g"].data, b"target");
});

fn mknod(path: &std::path::Path, mode: u32, dev: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path; plain syscall.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// Fifos, sockets and device nodes are made, opened and changed as on a local disk, go to the
// remote as empty objects carrying their type (and a device's number), and come back from a
// remount with an empty state dir.
every_backend!(special_files, |env: &Env| {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use stratus::types::Special;
    let m = env.mount();
    fs::create_dir(m.path("d")).unwrap();
    mknod(&m.path("d/fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    // The kernel carries a fifo's traffic: a writer and a reader meet through the mount.
    let p = m.path("d/fifo");
    let writer = std::thread::spawn(move || fs::write(p, b"through the pipe"));
    assert_eq!(fs::read(m.path("d/fifo")).unwrap(), b"through the pipe");
    writer.join().unwrap().unwrap();
    // bind(2) makes the socket file, and a client connects through it.
    let listener = UnixListener::bind(m.path("sock")).unwrap();
    let mut client = UnixStream::connect(m.path("sock")).unwrap();
    client.write_all(b"ping").unwrap();
    let (mut served, _) = listener.accept().unwrap();
    let mut got = [0u8; 4];
    served.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    drop((client, served, listener));
    // mknod c 1 3 (/dev/null's number) makes the node; the mount is `nodev`, as FUSE mounts
    // are, so the kernel refuses to open it (a remote cannot hand out devices).
    mknod(&m.path("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)).unwrap();
    assert_eq!(
        errno_of(&fs::read(m.path("null")).unwrap_err()),
        libc::EACCES
    );
    mknod(
        &m.path("blk"),
        libc::S_IFBLK | 0o600,
        libc::makedev(259, 70_000),
    )
    .unwrap();
    assert_eq!(
        errno_of(&mknod(&m.path("blk"), libc::S_IFIFO | 0o600, 0).unwrap_err()),
        libc::EEXIST
    );
    // chmod, chown, utimens and rename work on them.
    fs::set_permissions(m.path("d/fifo"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.path("d/fifo"), Some(1234), Some(5678)).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(978_307_200);
    let c = CString::new(m.path("d/fifo").as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: 978_307_200,
        tv_nsec: 0,
    };
    // SAFETY: NUL-terminated path, two valid timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), 0) },
        0
    );
    fs::rename(m.path("d/fifo"), m.path("d/pipe")).unwrap();
    let check = |root: &dyn Fn(&str) -> std::path::PathBuf, what: &str| {
        let md = fs::symlink_metadata(root("d/pipe")).unwrap();
        assert!(md.file_type().is_fifo(), "{what}: d/pipe is a fifo");
        assert_eq!(md.mode() & 0o7777, 0o600, "{what}: fifo mode");
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{what}: fifo owner");
        assert_eq!(md.modified().unwrap(), when, "{what}: fifo mtime");
        assert_eq!(md.len(), 0);
        let md = fs::symlink_metadata(root("sock")).unwrap();
        assert!(md.file_type().is_socket(), "{what}: sock is a socket");
        let md = fs::symlink_metadata(root("null")).unwrap();
        assert!(
            md.file_type().is_char_device(),
            "{what}: null is a char device"
        );
        assert_eq!(
            md.rdev(),
            libc::makedev(1, 3),
            "{what}: null's device number"
        );
        let md = fs::symlink_metadata(root("blk")).unwrap();
        assert!(
            md.file_type().is_block_device(),
            "{what}: blk is a block device"
        );
        assert_eq!(
            md.rdev(),
            libc::makedev(259, 70_000),
            "{what}: blk's device number"
        );
        assert_eq!(md.mode() & 0o7777, 0o600);
    };
    check(&|p| m.path(p), "this mount");

    m.sync();
    let tree = env.remote_tree();
    assert!(
        !tree.contains_key("d/fifo"),
        "the old name is gone: {:?}",
        tree.keys()
    );
    for (key, want) in [
        ("d/pipe", Special::Fifo),
        ("sock", Special::Socket),
        ("null", Special::CharDev(libc::makedev(1, 3))),
        ("blk", Special::BlockDev(libc::makedev(259, 70_000))),
    ] {
        let o = &tree[key];
        assert_eq!(o.meta.special, Some(want), "{key}'s type on the remote");
        assert!(o.data.is_empty(), "{key} is an empty object");
    }
    assert_eq!(tree["d/pipe"].meta.mode, Some(0o600));
    assert_eq!(tree["d/pipe"].meta.uid, Some(1234));
    m.unmount();

    // Another mount, with an empty state dir, rebuilds them from the listing and the
    // metadata it reads after it.
    let m2 = env.mount_read();
    check(&|p| m2.path(p), "a fresh mount");
    let p = m2.path("d/pipe");
    let writer = std::thread::spawn(move || fs::write(p, b"again"));
    assert_eq!(fs::read(m2.path("d/pipe")).unwrap(), b"again");
    writer.join().unwrap().unwrap();
    fs::remove_file(m2.path("d/pipe")).unwrap();
    m2.sync();
    assert!(!env.remote_tree().contains_key("d/pipe"));
});

// fstat on an open directory that was removed, or renamed over, answers as on ext4: the
// directory with nlink 0, not ENOENT (issue 14; pjdfstest and xfstests check it).
every_backend!(fstat_of_a_removed_open_directory, |env: &Env| {
    let m = env.mount();
    fs::create_dir(m.path("gone")).unwrap();
    fs::create_dir(m.path("over")).unwrap();
    fs::create_dir(m.path("new")).unwrap();
    let gone = fs::File::open(m.path("gone")).unwrap();
    let over = fs::File::open(m.path("over")).unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    fs::rename(m.path("new"), m.path("over")).unwrap();
    for (what, f) in [("removed", &gone), ("renamed over", &over)] {
        let md = f
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of the {what} directory: {e}"));
        assert!(md.is_dir(), "{what}");
        assert_eq!(md.nlink(), 0, "{what}: nlink");
    }
    assert_eq!(
        errno_of(&fs::metadata(m.path("gone")).unwrap_err()),
        libc::ENOENT
    );
    drop((gone, over));
});

every_backend!(chmod_chown_utimens, |env: &Env| {
    let m = env.mount();
    fs::write(m.path("r"), b"x").unwrap();
    // We run as root, so chown to any owner works.
    fs::set_permissions(m.path("r"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.path("r"), Some(1234), Some(5678)).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    let t = fs::File::options().write(true).open(m.path("r")).unwrap();
    t.set_modified(when).unwrap();
    drop(t);
    let md = fs::metadata(m.path("r")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.modified().unwrap(), when);

    m.sync();
    let tree = env.remote_tree();
    assert_eq!(tree["r"].data, b"x");
    assert_eq!(tree["r"].meta.mode, Some(0o600));
    assert_eq!(tree["r"].meta.uid, Some(1234));
    assert_eq!(tree["r"].meta.gid, Some(5678));
    assert_eq!(tree["r"].meta.mtime_ns, Some(978_307_200_000_000_000));
});

every_backend!(an_unlinked_open_file_lives_until_closed, |env: &Env| {
    let m = env.mount();
    // One created and unlinked before any upload, one already on the remote.
    fs::write(m.path("v"), b"uploaded").unwrap();
    m.sync();
    let mut u = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(m.path("u"))
        .unwrap();
    let mut v = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("v"))
        .unwrap();
    u.write_all(b"abc").unwrap();
    fs::remove_file(m.path("u")).unwrap();
    fs::remove_file(m.path("v")).unwrap();
    assert!(!m.path("u").exists() && !m.path("v").exists());
    u.write_all(b"def").unwrap();
    let mut back = Vec::new();
    u.seek(SeekFrom::Start(0)).unwrap();
    u.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"abcdef");
    v.seek(SeekFrom::End(0)).unwrap();
    v.write_all(b" and changed").unwrap();
    let mut back = Vec::new();
    v.seek(SeekFrom::Start(0)).unwrap();
    v.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"uploaded and changed");
    // Never uploaded, also not once closed; the one on the remote goes.
    u.sync_all().unwrap();
    drop(u);
    drop(v);
    m.sync();
    let tree = env.remote_tree();
    assert!(
        !tree.contains_key("u") && !tree.contains_key("v"),
        "unlinked files on the remote: {:?}",
        tree.keys()
    );
    assert!(fs::read_dir(&m.dir).unwrap().next().is_none());
});

every_backend!(
    fsync_releases_the_upload_and_survives_a_kill,
    |env: &Env| {
        let state = env.new_state_dir();
        let m = env.mount_state(&state);
        // A writer that stays open: until it closes or fsyncs, its upload is held.
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.path("f"))
            .unwrap();
        f.write_all(b"first").unwrap();
        f.sync_all().unwrap();
        assert!(
            eventually(30, || env.remote_files().get("f").map(Vec::as_slice)
                == Some(b"first")),
            "the fsync'd content never reached the remote while the file was open"
        );
        f.write_all(b" second").unwrap();
        f.sync_data().unwrap();
        // fsync of the directory.
        fs::File::open(&m.dir).unwrap().sync_all().unwrap();
        // SIGKILL with the writer still open: what fsync acknowledged is there after a remount.
        m.kill9();
        drop(f);
        let m2 = env.mount_state(&state);
        assert_eq!(fs::read(m2.path("f")).unwrap(), b"first second");
        assert_eq!(fs::metadata(m2.path("f")).unwrap().len(), 12);
        m2.sync();
        assert_eq!(env.remote_files()["f"], b"first second");
    }
);

every_backend!(statfs_reports_the_name_limit, |env: &Env| {
    let m = env.mount();
    let c = CString::new(m.dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks > 0 && st.f_bavail > 0);
});

every_backend!(overlong_names_are_refused, |env: &Env| {
    let m = env.mount();
    fs::write(m.path("r"), b"x").unwrap();
    let long = "n".repeat(256);
    let e = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG);
    fs::write(m.path(&"n".repeat(255)), b"255").unwrap();
    m.sync();
    let names: Vec<String> = env.remote_tree().into_keys().collect();
    assert_eq!(names, vec!["n".repeat(255), "r".to_string()]);
});

// Hard links: one inode under several names, each name a full object on the remote whose
// `stratus_link` metadata lets a fresh mount join them again.
every_backend!(hard_links, |env: &Env| {
    let m = env.mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("a"), b"first").unwrap();
    fs::hard_link(m.path("a"), m.path("d/b")).unwrap();
    fs::hard_link(m.path("d/b"), m.path("c")).unwrap();
    let ino = fs::metadata(m.path("a")).unwrap().ino();
    for n in ["a", "d/b", "c"] {
        let md = fs::metadata(m.path(n)).unwrap();
        assert_eq!(
            (md.ino(), md.nlink()),
            (ino, 3),
            "{n}: one inode, three names"
        );
    }
    assert_eq!(
        errno_of(&fs::hard_link(m.path("a"), m.path("c")).unwrap_err()),
        libc::EEXIST
    );
    // A write through one name is read through every other.
    let mut f = OpenOptions::new().append(true).open(m.path("d/b")).unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("a")).unwrap(), b"first and more");
    fs::set_permissions(m.path("c"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().mode() & 0o7777, 0o600);
    // rename(2) between two names of one inode does nothing.
    fs::rename(m.path("a"), m.path("c")).unwrap();
    assert!(m.path("a").exists() && m.path("c").exists());
    // Removing the first name keeps the inode under the others.
    fs::remove_file(m.path("a")).unwrap();
    let md = fs::metadata(m.path("d/b")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (ino, 2));
    assert_eq!(fs::read(m.path("c")).unwrap(), b"first and more");

    m.sync();
    let tree = env.remote_tree();
    assert!(!tree.contains_key("a"), "{:?}", tree.keys());
    for n in ["d/b", "c"] {
        assert_eq!(
            tree[n].data, b"first and more",
            "{n} holds the full content"
        );
        assert_eq!(tree[n].meta.mode, Some(0o600), "{n}'s mode");
    }
    let group = tree["c"].meta.link.clone();
    assert!(group.is_some(), "the names carry their link group");
    assert_eq!(tree["d/b"].meta.link, group);
    // A file already on the remote when it gets a second name: its own object gains the
    // group too. (Regression: the link's commit wrote the row back without the metadata
    // change it had just queued, so the object never said it was linked.)
    fs::write(m.path("solo"), b"synced first").unwrap();
    m.sync();
    fs::hard_link(m.path("solo"), m.path("d/solo2")).unwrap();
    m.sync();
    let tree = env.remote_tree();
    assert!(
        tree["solo"].meta.link.is_some(),
        "solo's object carries the group"
    );
    assert_eq!(tree["solo"].meta.link, tree["d/solo2"].meta.link);
    m.unmount();

    // A fresh state dir over the same remote joins the names into one inode again (once it
    // has read the metadata its listing lacked).
    let m2 = env.mount_read();
    let (b, c) = (
        fs::metadata(m2.path("d/b")).unwrap(),
        fs::metadata(m2.path("c")).unwrap(),
    );
    assert_eq!(b.ino(), c.ino(), "the link is rebuilt");
    assert_eq!((b.nlink(), c.nlink()), (2, 2));
    let (s1, s2) = (
        fs::metadata(m2.path("solo")).unwrap(),
        fs::metadata(m2.path("d/solo2")).unwrap(),
    );
    assert_eq!(
        (s1.ino(), s1.nlink()),
        (s2.ino(), 2),
        "solo's link is rebuilt"
    );
    fs::write(m2.path("c"), b"rewritten").unwrap();
    assert_eq!(fs::read(m2.path("d/b")).unwrap(), b"rewritten");
    // An edit of a linked file goes up under every name.
    m2.sync();
    let tree = env.remote_tree();
    assert_eq!(tree["d/b"].data, b"rewritten");
    assert_eq!(tree["c"].data, b"rewritten");
    fs::remove_file(m2.path("c")).unwrap();
    assert_eq!(fs::metadata(m2.path("d/b")).unwrap().nlink(), 1);
    m2.sync();
    let tree = env.remote_tree();
    assert!(!tree.contains_key("c"));
    assert_eq!(tree["d/b"].data, b"rewritten");
});

// Another tool that writes one name of a hard-linked file (a plain PUT, no stratus
// metadata) splits it off: that name becomes a file of its own with the new content, and
// the inode keeps its content under its other names (docs/semantics.md).
every_backend!(
    a_linked_name_written_elsewhere_becomes_its_own_file,
    |env: &Env| {
        let m = env.mount();
        fs::write(m.path("a"), b"ours").unwrap();
        fs::hard_link(m.path("a"), m.path("b")).unwrap();
        fs::hard_link(m.path("a"), m.path("c")).unwrap();
        m.sync();
        env.put_remote("b", b"theirs");
        // The inode's own name too: it moves to another of its names.
        env.put_remote("a", b"also theirs");
        m.sync();
        assert!(
            eventually(10, || fs::read(m.path("b")).ok().as_deref()
                == Some(b"theirs")),
            "b shows the other tool's version"
        );
        assert!(eventually(10, || fs::read(m.path("a")).ok().as_deref()
            == Some(b"also theirs")));
        assert_eq!(fs::read(m.path("c")).unwrap(), b"ours");
        let (a, b, c) = (
            fs::metadata(m.path("a")).unwrap(),
            fs::metadata(m.path("b")).unwrap(),
            fs::metadata(m.path("c")).unwrap(),
        );
        assert_ne!(a.ino(), c.ino());
        assert_ne!(b.ino(), c.ino());
        assert_eq!((a.nlink(), b.nlink(), c.nlink()), (1, 1, 1));
        // Writes through c no longer reach the others.
        fs::write(m.path("c"), b"ours, later").unwrap();
        m.sync();
        let files = env.remote_files();
        assert_eq!(files["a"], b"also theirs");
        assert_eq!(files["b"], b"theirs");
        assert_eq!(files["c"], b"ours, later");
    }
);

// Two stratus mounts share a hard-linked file: an edit on one goes up under every name and
// the other mount takes it without splitting the link.
every_backend!(linked_file_edited_on_another_mount, |env: &Env| {
    let a = env.mount();
    fs::write(a.path("x"), b"one").unwrap();
    fs::hard_link(a.path("x"), a.path("y")).unwrap();
    a.sync();
    let b = env.mount_read();
    assert_eq!(fs::metadata(b.path("y")).unwrap().nlink(), 2);
    fs::write(b.path("y"), b"two, from the other mount").unwrap();
    b.sync();
    a.sync();
    assert!(
        eventually(10, || fs::read(a.path("x")).ok().as_deref()
            == Some(b"two, from the other mount")),
        "the edit reached the first mount"
    );
    assert_eq!(fs::read(a.path("y")).unwrap(), b"two, from the other mount");
    let (x, y) = (
        fs::metadata(a.path("x")).unwrap(),
        fs::metadata(a.path("y")).unwrap(),
    );
    assert_eq!((x.ino(), x.nlink()), (y.ino(), 2), "still one inode");
    let files = env.remote_files();
    assert_eq!(files["x"], files["y"]);
});

every_backend!(metadata_survives_remount_with_empty_state, |env: &Env| {
    let m = env.mount();
    fs::create_dir_all(m.path("docs/empty")).unwrap();
    fs::write(m.path("docs/a.txt"), b"alpha").unwrap();
    fs::set_permissions(m.path("docs/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.path("docs/a.txt"), Some(42), Some(43)).unwrap();
    let when = UNIX_EPOCH + Duration::from_nanos(1_600_000_000_123_456_789);
    fs::File::options()
        .write(true)
        .open(m.path("docs/a.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    fs::set_permissions(m.path("docs/empty"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("a.txt", m.path("docs/ln")).unwrap();
    fs::write(m.path("big"), data(9, 3_000_000)).unwrap();
    m.sync();
    m.unmount();

    let m2 = env.mount_read();
    let md = fs::metadata(m2.path("docs/a.txt")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (42, 43));
    assert_eq!(md.modified().unwrap(), when);
    assert_eq!(md.len(), 5);
    assert_eq!(fs::read(m2.path("docs/a.txt")).unwrap(), b"alpha");
    assert_eq!(
        fs::read_link(m2.path("docs/ln")).unwrap().to_str(),
        Some("a.txt")
    );
    let d = fs::metadata(m2.path("docs/empty")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.mode() & 0o7777, 0o700);
    assert_eq!(fs::read(m2.path("big")).unwrap(), data(9, 3_000_000));
    let mut names: Vec<String> = fs::read_dir(m2.path("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a.txt", "empty", "ln"]);
});

every_backend!(foreign_objects_get_defaults, |env: &Env| {
    env.put_remote("other/tool.bin", b"made elsewhere");
    let m = env.mount();
    let md = fs::metadata(m.path("other/tool.bin")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 14);
    // No stratus metadata: rw-r--r--, owned by whoever mounted, modified when it was put
    // there (a local folder's file has all of these of its own, the same here).
    assert_eq!(md.mode() & 0o7777, 0o644, "default mode");
    // SAFETY: getuid/getgid cannot fail.
    let me = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!((md.uid(), md.gid()), me, "default owner");
    let age = std::time::SystemTime::now()
        .duration_since(md.modified().unwrap())
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(600),
        "mtime is not the object's: {:?}",
        md.modified()
    );
    let dir = fs::metadata(m.path("other")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.mode() & 0o7777, 0o755, "an implied directory's mode");
    assert_eq!(
        fs::read(m.path("other/tool.bin")).unwrap(),
        b"made elsewhere"
    );
    assert_eq!(m.state_of("other/tool.bin"), "synced");
});

every_backend!(unmount_keeps_the_queue, |env: &Env| {
    let state = env.new_state_dir();
    let m = env.try_mount(&state, &["--write-back", "3600"]).unwrap();
    fs::write(m.path("later.txt"), b"queued").unwrap();
    assert_eq!(m.state_of("later.txt"), "pending");
    assert!(m.status_json()["queue"]["entries"] == 1, "{}", m.status());
    m.unmount();
    assert!(!env.remote_files().contains_key("later.txt"));
    let m2 = env.mount_state(&state);
    assert_eq!(fs::read(m2.path("later.txt")).unwrap(), b"queued");
    m2.sync();
    assert_eq!(env.remote_files()["later.txt"], b"queued");
});

every_backend!(a_chmod_right_after_close_keeps_the_size, |env: &Env| {
    // The kernel sends RELEASE after close(2) returns, so a chmod can race the release that
    // writes the file's size back. (Regression: the chmod wrote its stale copy of the entry,
    // size 0, over it; an executable copied and started at once failed with ENOEXEC.)
    let m = env.mount();
    for i in 0..400 {
        let p = m.path(&format!("f{i}"));
        fs::write(&p, vec![b'x'; 50_000]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), 50_000, "f{i}");
    }
});
