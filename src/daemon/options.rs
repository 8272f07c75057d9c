//! The mount options `-o` takes, spelled the way mount(8), fstab and systemd pass them:
//! parsed once at the edge into [`MountOptions`], then trusted.

use std::path::PathBuf;

/// Who besides the mounting user may use the mount (FUSE lets nobody else in by default,
/// root included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    #[default]
    Owner,
    /// `allow_root`: the owner and root.
    OwnerAndRoot,
    /// `allow_other`: every user, subject to the permission bits (`default_permissions`).
    Everyone,
}

/// The FUSE side of a mount, as `-o` asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub access: Access,
    /// `ro`: every change is refused with EROFS and nothing is ever written to the remote.
    pub read_only: bool,
    /// `uid=`/`gid=`: every entry is shown as owned by them (like vfat and rclone).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `umask=`: these permission bits are cleared from every mode shown.
    pub umask: Option<u32>,
    pub dev: bool,
    pub suid: bool,
    pub exec: bool,
    /// `state_dir=PATH`: what `--state-dir` says, for an fstab line, which has no flags.
    pub state_dir: Option<PathBuf>,
    /// `passthrough` turns on FUSE passthrough (reads and writes of cached files going
    /// straight to their data files) where the kernel allows it; `nopassthrough` (the
    /// default in this release: a write-through's size reaches `stratus status` only at
    /// release, and the cache budget is checked at open only) leaves it off.
    pub passthrough: bool,
}

impl Default for MountOptions {
    /// nodev and nosuid as every FUSE filesystem mounts by default: files from a remote
    /// must not become device nodes or set-uid programs on this machine unless asked.
    fn default() -> Self {
        MountOptions {
            access: Access::Owner,
            read_only: false,
            uid: None,
            gid: None,
            umask: None,
            dev: false,
            suid: false,
            exec: true,
            state_dir: None,
            passthrough: false,
        }
    }
}

/// What `-o` held: the mount options, and object_store settings given the old way.
#[derive(Debug, Default)]
pub struct Parsed {
    pub mount: MountOptions,
    /// `KEY=VALUE` pairs the backend recognized as its own settings (deprecated in `-o`).
    pub store: Vec<(String, String)>,
}

/// Options mount(8), fstab and systemd hand to every helper, which concern them and not the
/// filesystem, and the access-time options an fstab line often carries (atime is never
/// uploaded, as `noatime` would have it): accepted and ignored.
fn ignored(opt: &str) -> bool {
    matches!(
        opt,
        "_netdev"
            | "nofail"
            | "noauto"
            | "auto"
            | "user"
            | "users"
            | "nouser"
            | "defaults"
            | "atime"
            | "noatime"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "nodiratime"
            | "lazytime"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

fn number(key: &str, v: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(v, radix).map_err(|_| {
        let what = if radix == 8 { "an octal" } else { "a" };
        format!("-o {key}={v}: expected {what} number")
    })
}

/// Parses every `-o` argument (each a comma-separated list). `is_store_key` says whether
/// the backend takes a `KEY` as an object_store setting, which `-o KEY=VALUE` still passes
/// on, with a deprecation warning from the caller.
pub fn parse(raw: &[String], is_store_key: impl Fn(&str) -> bool) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let m = &mut p.mount;
    for opt in raw.iter().flat_map(|o| o.split(',')).map(str::trim) {
        if opt.is_empty() || ignored(opt) {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("allow_other", None) => m.access = Access::Everyone,
            ("allow_root", None) => m.access = Access::OwnerAndRoot,
            // Always on: the kernel checks permissions against the modes shown.
            ("default_permissions", None) => {}
            ("ro", None) => m.read_only = true,
            ("rw", None) => m.read_only = false,
            ("dev", None) => m.dev = true,
            ("nodev", None) => m.dev = false,
            ("suid", None) => m.suid = true,
            ("nosuid", None) => m.suid = false,
            ("exec", None) => m.exec = true,
            ("noexec", None) => m.exec = false,
            ("passthrough", None) => m.passthrough = true,
            ("nopassthrough", None) => m.passthrough = false,
            ("uid", Some(v)) => m.uid = Some(number(key, v, 10)?),
            ("gid", Some(v)) => m.gid = Some(number(key, v, 10)?),
            ("umask", Some(v)) => m.umask = Some(number(key, v, 8)? & 0o7777),
            ("state_dir", Some(v)) if !v.is_empty() => m.state_dir = Some(PathBuf::from(v)),
            (k, Some(v)) if is_store_key(k) => p.store.push((k.to_string(), v.to_string())),
            _ => {
                return Err(format!(
                    "-o {opt}: unknown mount option (object_store settings go in --store-opt KEY=VALUE)"
                ))
            }
        }
    }
    Ok(p)
}

impl MountOptions {
    /// The options as one `-o` argument that parses back to the same value (what the
    /// background daemon is started with).
    pub fn to_arg(&self) -> String {
        let mut o = vec![match self.access {
            Access::Owner => None,
            Access::OwnerAndRoot => Some("allow_root".to_string()),
            Access::Everyone => Some("allow_other".to_string()),
        }];
        o.push(Some(if self.read_only { "ro" } else { "rw" }.into()));
        o.push(Some(if self.dev { "dev" } else { "nodev" }.into()));
        o.push(Some(if self.suid { "suid" } else { "nosuid" }.into()));
        o.push(Some(if self.exec { "exec" } else { "noexec" }.into()));
        o.push(self.uid.map(|v| format!("uid={v}")));
        o.push(self.gid.map(|v| format!("gid={v}")));
        o.push(self.umask.map(|v| format!("umask={v:o}")));
        o.push(self.passthrough.then(|| "passthrough".to_string()));
        o.into_iter().flatten().collect::<Vec<_>>().join(",")
    }

    /// Refuses, before anything is mounted, what fusermount3 would refuse with a message
    /// that does not say what to do: a user other than root asking to let others in without
    /// `user_allow_other` in /etc/fuse.conf.
    pub fn check_allowed(&self, euid: u32, fuse_conf: Option<&str>) -> Result<(), String> {
        if euid == 0 || self.access == Access::Owner {
            return Ok(());
        }
        let allowed = fuse_conf.is_some_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"));
        if allowed {
            return Ok(());
        }
        let opt = match self.access {
            Access::Everyone => "allow_other",
            _ => "allow_root",
        };
        Err(format!(
            "-o {opt} needs the line user_allow_other in /etc/fuse.conf when not mounting as root (ask root to add it)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_s3(o: &[&str]) -> Result<Parsed, String> {
        let raw: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        parse(&raw, |k| k.starts_with("aws_"))
    }

    #[test]
    fn mount8_lists() {
        let p = parse_s3(&[
            "ro,allow_other,uid=1000,gid=100,umask=022,_netdev,nofail,x-systemd.automount",
            "comment=fstab,defaults,noexec,dev,noatime,relatime,nopassthrough",
        ])
        .unwrap();
        assert!(!p.mount.passthrough);
        assert!(parse_s3(&["passthrough"]).unwrap().mount.passthrough);
        assert!(!parse_s3(&["defaults"]).unwrap().mount.passthrough);
        assert_eq!(p.mount.access, Access::Everyone);
        assert!(p.mount.read_only && p.mount.dev && !p.mount.exec && !p.mount.suid);
        assert_eq!(
            (p.mount.uid, p.mount.gid, p.mount.umask),
            (Some(1000), Some(100), Some(0o22))
        );
        assert!(p.store.is_empty());
        assert_eq!(parse_s3(&[&p.mount.to_arg()]).unwrap().mount, p.mount);
        let d = parse_s3(&[]).unwrap().mount;
        assert_eq!(d, MountOptions::default());
        assert_eq!(
            d.access,
            Access::Owner,
            "nobody else is let in unless asked"
        );
    }

    #[test]
    fn store_keys_and_unknown_options() {
        let p = parse_s3(&["aws_unsigned_payload=true,rw"]).unwrap();
        assert_eq!(
            p.store,
            vec![("aws_unsigned_payload".into(), "true".into())]
        );
        let e = parse_s3(&["ro,frobnicate"]).unwrap_err();
        assert!(e.contains("frobnicate") && !e.contains('\n'), "{e}");
        assert!(parse_s3(&["ro=1"]).unwrap_err().contains("ro=1"));
        assert!(parse_s3(&["uid=bob"]).unwrap_err().contains("uid=bob"));
        assert!(parse_s3(&["umask=9"]).is_err());
    }

    #[test]
    fn allow_other_needs_user_allow_other_for_users() {
        let m = parse_s3(&["allow_other"]).unwrap().mount;
        assert!(m.check_allowed(0, None).is_ok());
        let e = m
            .check_allowed(1000, Some("#user_allow_other\n"))
            .unwrap_err();
        assert!(
            e.contains("user_allow_other") && e.contains("/etc/fuse.conf"),
            "{e}"
        );
        assert!(m.check_allowed(1000, Some("user_allow_other\n")).is_ok());
        assert!(MountOptions::default().check_allowed(1000, None).is_ok());
    }
}
