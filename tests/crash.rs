//! SIGKILL of the daemon in the middle of a write-heavy workload: every write the workload
//! was told had succeeded is there after a remount, and reaches the remote.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mount::{data, Env};

every_backend!(sigkill_loses_nothing_acknowledged, |env: &Env| {
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::create_dir(m.path("w")).unwrap();
    let acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    let gone: Arc<Mutex<Vec<String>>> = Arc::default();
    let log_lines: Arc<Mutex<usize>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let root = m.dir.clone();
    let worker = {
        let (acked, gone, log_lines, stop) =
            (acked.clone(), gone.clone(), log_lines.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut log = match fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("w/log"))
            {
                Ok(f) => f,
                Err(_) => return,
            };
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("w/f{i}");
                let body = data(i, 1 + (i as usize * 7919) % 70_000);
                if fs::write(root.join(&name), &body).is_err() {
                    break;
                }
                acked.lock().unwrap().insert(name.clone(), body);
                // An fsync'd append log: each line acknowledged once fsync returns.
                if writeln!(log, "line {i}")
                    .and_then(|_| log.sync_data())
                    .is_err()
                {
                    break;
                }
                *log_lines.lock().unwrap() = i as usize + 1;
                // Some metadata changes too: renames and deletes must survive as well.
                if i % 5 == 4 {
                    let from = format!("w/f{}", i - 1);
                    let to = format!("w/r{}", i - 1);
                    if fs::rename(root.join(&from), root.join(&to)).is_err() {
                        break;
                    }
                    let mut a = acked.lock().unwrap();
                    let v = a.remove(&from).unwrap();
                    a.insert(to, v);
                }
                if i % 7 == 6 {
                    let victim = format!("w/f{}", i - 2);
                    if acked.lock().unwrap().contains_key(&victim) {
                        if fs::remove_file(root.join(&victim)).is_err() {
                            break;
                        }
                        acked.lock().unwrap().remove(&victim);
                        gone.lock().unwrap().push(victim);
                    }
                }
            }
        })
    };
    // At least 1.5 s of work, and enough acknowledged writes to mean something even on a
    // loaded machine (under a load of 20 on 2 cores, 1.5 s gave 11), within a minute.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500)
        || (acked.lock().unwrap().len() <= 40 && start.elapsed() < Duration::from_secs(60))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let log_lines = *log_lines.lock().unwrap();
    assert!(
        acked.len() > 20,
        "workload too small to mean anything: {}",
        acked.len()
    );

    let m2 = env.mount_state(&state);
    for (name, body) in &acked {
        let got =
            fs::read(m2.path(name)).unwrap_or_else(|e| panic!("{name} lost after SIGKILL: {e}"));
        assert!(got == *body, "{name} differs after SIGKILL");
    }
    for name in gone.lock().unwrap().iter() {
        assert!(!m2.path(name).exists(), "{name} was deleted but came back");
    }
    let log = fs::read_to_string(m2.path("w/log")).unwrap();
    assert!(log.lines().count() >= log_lines, "fsync'd log lines lost");
    m2.sync();
    let remote = env.remote_files();
    for (name, body) in &acked {
        assert!(
            remote.get(name) == Some(body),
            "{name} not on the remote after the queue drained"
        );
    }
    for name in gone.lock().unwrap().iter() {
        assert!(
            !remote.contains_key(name),
            "{name} deleted but still on the remote"
        );
    }
    println!("acknowledged files: {}, losses: 0", acked.len());
});

#[test]
fn a_crash_between_unlink_and_its_data_removal_leaves_no_litter() {
    // Data files of deleted entries are removed in the background after the delete commits;
    // a SIGKILL in between leaves them behind, and the next mount sweeps them.
    let env = Env::new(common::mount::Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("kept"), b"kept").unwrap();
    fs::write(m.path("gone"), b"gone").unwrap();
    m.sync();
    fs::remove_file(m.path("gone")).unwrap();
    m.kill9();
    let data_dir = state.join("data");
    // As if the background removal had not run yet: a data file no entry owns.
    fs::write(data_dir.join("987654321"), b"litter").unwrap();
    let m = env.mount_state(&state);
    assert!(!data_dir.join("987654321").exists(), "litter was not swept");
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"kept");
    assert!(!m.path("gone").exists());
    let files = fs::read_dir(&data_dir).unwrap().count();
    assert!(files <= 1, "{files} data files for one file");
}
