//! The binary called as `mount.fuse.stratus` or `mount.stratus` (a symlink to it): what
//! mount(8) runs for `mount -t fuse.stratus REMOTE MNT -o OPTS` and for an fstab line,
//! turned into `stratus mount REMOTE MNT -o OPTS`.

use std::ffi::OsString;

/// The names mount(8) looks for in /sbin: `mount.TYPE` for `-t fuse.stratus` and
/// `-t stratus` (util-linux 2.38 on Debian 12 looks for `mount.fuse.stratus` first, then
/// falls back to `mount.fuse`, which would need `stratus` to take `REMOTE MNT` itself).
const NAMES: [&str; 2] = ["mount.fuse.stratus", "mount.stratus"];

/// The `stratus mount` command line for a helper call, `None` when called as `stratus`.
/// A fake mount (`-f`: mount(8) asks the helper to do everything but mount) exits here.
pub(super) fn args() -> Option<Vec<OsString>> {
    let mut argv = std::env::args_os();
    let name = argv.next()?;
    let base = std::path::Path::new(&name).file_name()?.to_str()?;
    if !NAMES.contains(&base) {
        return None;
    }
    match translate(argv.collect()) {
        Ok(Some(a)) => Some(a),
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("{base}: {e}");
            std::process::exit(1)
        }
    }
}

/// `SOURCE MNT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`, the helper convention of mount(8),
/// as `stratus mount` arguments; `None` for a fake mount.
fn translate(args: Vec<OsString>) -> Result<Option<Vec<OsString>>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        match s.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs a value")?),
            // The type (fuse.stratus) and a mount namespace: nothing for us to do with them.
            "-t" | "-N" => {
                it.next();
            }
            _ if s.starts_with("-o") => options.push(OsString::from(&s[2..])),
            _ if s.starts_with('-') && s.len() > 1 => {
                // -s sloppy, -n no mtab, -v verbose: accepted; -f fake: do everything but mount.
                for c in s[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' | 'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{c}")),
                    }
                }
            }
            _ => positional.push(a),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.stratus REMOTE MOUNTPOINT [-o OPTIONS]".to_string())?;
    if fake {
        return Ok(None);
    }
    // Quiet: a helper prints nothing on success (xfstests compares a test's whole output,
    // and mount(8) itself says nothing).
    let mut out: Vec<OsString> = vec![
        "stratus".into(),
        "--quiet".into(),
        "mount".into(),
        source,
        mountpoint,
    ];
    for o in options {
        out.push("-o".into());
        out.push(o);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn t(a: &[&str]) -> Result<Option<Vec<String>>, String> {
        translate(a.iter().map(Into::into).collect())
            .map(|o| o.map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect()))
    }

    #[test]
    fn mount8_calls() {
        assert_eq!(
            t(&[
                "s3://b/p",
                "/mnt/x",
                "-o",
                "ro,_netdev",
                "-n",
                "-t",
                "fuse.stratus"
            ])
            .unwrap(),
            Some(
                [
                    "stratus",
                    "--quiet",
                    "mount",
                    "s3://b/p",
                    "/mnt/x",
                    "-o",
                    "ro,_netdev"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(
            t(&["/r", "/m", "-sv", "-oallow_other"]).unwrap().unwrap()[6],
            "allow_other"
        );
        assert_eq!(t(&["/r", "/m", "-f"]).unwrap(), None);
        assert!(t(&["/r"]).is_err());
        assert!(t(&["/r", "/m", "-x"]).is_err());
    }
}
