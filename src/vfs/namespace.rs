//! The namespace: lookup, creating, listing, removing and renaming entries, each one
//! transaction that commits the tree's change with its journal rows.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::{lock, Attr, DirEntry, Live, Opened, Vfs, VfsError, VfsResult};
use crate::store::{dirty, now_ms, now_ns, Db, Entry, NewEntry, Synced};
use crate::types::{EntryId, Kind, Special};

/// What a removal does after its transaction commits.
#[derive(Default)]
struct Removal {
    files: Vec<EntryId>,
    unlinked: Vec<EntryId>,
    /// Removed directories that a handle holds open, with their last attributes.
    open_dirs: Vec<(EntryId, Attr)>,
}

impl Vfs {
    /// Checks a new name against POSIX and the remote's key rules.
    pub(super) fn check_new_name(
        &self,
        db: &Db<'_>,
        parent: EntryId,
        name: &[u8],
    ) -> VfsResult<()> {
        if name.len() > crate::remote::NAME_MAX {
            return Err(VfsError::NameTooLong(format!("{} bytes", name.len())));
        }
        if let Err(reason) = self.remote.check_name(name) {
            tracing::warn!(name = %String::from_utf8_lossy(name), %reason, "refusing a name the remote cannot store");
            return Err(VfsError::Invalid(reason));
        }
        let parent_path = db.path_of(parent)?.ok_or(VfsError::NotFound)?;
        let key_len = parent_path.len() + usize::from(!parent_path.is_empty()) + name.len();
        if key_len > self.remote.max_key_len() {
            tracing::warn!(
                key_len,
                max = self.remote.max_key_len(),
                "refusing a path longer than the remote's key limit"
            );
            return Err(VfsError::NameTooLong(format!(
                "path of {key_len} bytes exceeds the remote's {}-byte key limit",
                self.remote.max_key_len()
            )));
        }
        Ok(())
    }

    pub(super) fn dir(&self, db: &Db<'_>, id: EntryId) -> VfsResult<Entry> {
        let e = db.get(id)?.ok_or(VfsError::NotFound)?;
        if e.kind != Kind::Dir {
            return Err(VfsError::NotDir);
        }
        Ok(e)
    }

    pub(super) fn touch_dir(&self, db: &Db<'_>, dir: &Entry) -> VfsResult<()> {
        let mut d = dir.clone();
        let now = now_ns();
        d.mtime_ns = now;
        d.ctime_ns = now;
        db.update(&d)?;
        Ok(())
    }

    /// A directory that exists on the remote only because keys lie below it (no marker, no
    /// base) would vanish with its last child there, and the next poll would take it away
    /// here too: one that loses a child gets its own marker. (Found by the sync model: a
    /// file another tool wrote at `f/g`, unlinked here, took `f` with it.)
    pub(super) fn keep_dir(&self, db: &Db<'_>, dir: &Entry) -> VfsResult<()> {
        if dir.id != EntryId::ROOT && dir.synced.key.is_none() && db.job_for(dir.id)?.is_none() {
            db.enqueue_sync(dir.id, dirty::META, Some(now_ms()))?;
        }
        Ok(())
    }

    pub fn lookup(&self, parent: EntryId, name: &OsStr) -> VfsResult<Attr> {
        let name = name.as_bytes();
        if name.len() > crate::remote::NAME_MAX {
            return Err(VfsError::NameTooLong(format!("{} bytes", name.len())));
        }
        self.fresh_attr(|db| db.lookup_inode(parent, name))
    }

    pub fn readlink(&self, ino: EntryId) -> VfsResult<Vec<u8>> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        match (e.kind, e.target) {
            (Kind::Symlink, Some(t)) => Ok(t),
            _ => Err(VfsError::Invalid("not a symlink".into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_child(
        &self,
        parent: EntryId,
        name: &[u8],
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        target: Option<Vec<u8>>,
        ready: Option<i64>,
        passthrough: bool,
    ) -> VfsResult<(Entry, Option<File>)> {
        self.w(|db| {
            let p = self.dir(db, parent)?;
            self.check_new_name(db, parent, name)?;
            if db.lookup(parent, name)?.is_some() {
                return Err(VfsError::Exists);
            }
            // setgid directories hand their group down, as on a local disk.
            let gid = if p.mode & 0o2000 != 0 { p.gid } else { gid };
            let mode = if kind == Kind::Dir && p.mode & 0o2000 != 0 {
                mode | 0o2000
            } else {
                mode
            };
            let e = db.insert(&NewEntry {
                parent,
                name: name.to_vec(),
                kind,
                mode: mode & 0o7777,
                uid,
                gid,
                size: target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                mtime_ns: now_ns(),
                target: target.clone(),
                local: true,
                synced: Synced::default(),
                dirty: 0,
                conflict_of: None,
                unread: false,
            })?;
            // The file stays open for `create`: a second open would walk the path again.
            let file = if kind == Kind::File {
                Some(self.cache.create_empty(e.id)?)
            } else {
                None
            };
            let pass = if passthrough { dirty::PASSTHROUGH } else { 0 };
            db.enqueue_sync(e.id, dirty::CONTENT | dirty::META | pass, ready)?;
            self.touch_dir(db, &p)?;
            Ok((e, file))
        })
    }

    pub fn mkdir(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<Attr> {
        let (e, _) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::Dir,
            mode,
            uid,
            gid,
            None,
            Some(now_ms()),
            false,
        )?;
        Ok(self.attr(&e))
    }

    pub fn symlink(
        &self,
        parent: EntryId,
        name: &OsStr,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> VfsResult<Attr> {
        if std::str::from_utf8(target).is_err() {
            return Err(VfsError::Invalid(
                "symlink target is not valid UTF-8".into(),
            ));
        }
        let (e, _) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::Symlink,
            0o777,
            uid,
            gid,
            Some(target.to_vec()),
            Some(now_ms()),
            false,
        )?;
        Ok(self.attr(&e))
    }

    /// Creates and opens a regular file. The journal row is held until the handle is released.
    pub fn create(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<(Attr, u64)> {
        let (a, o) = self.create_with(parent, name, mode, uid, gid, false)?;
        Ok((a, o.fh))
    }

    /// `create` for the kernel: a new file is written from scratch, so its handle may pass
    /// through to the data file (`passthrough`, when the mount uses it; see
    /// [`Vfs::open_with`]).
    pub fn create_with(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
        passthrough: bool,
    ) -> VfsResult<(Attr, Opened)> {
        let pass = passthrough && self.may_pass_write();
        if pass {
            // The kernel's writes will not wait for the uploader one by one (`write`):
            // a writer given the data file waits here while the cache is over its budget.
            self.blocks.throttle_direct_writer()?;
        }
        let mut live = lock(&self.live);
        let (e, file) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::File,
            mode,
            uid,
            gid,
            None,
            None,
            pass,
        )?;
        let mut file = file.expect("insert_child opens a file it creates");
        // The kernel writes through a file of its own; ours is read-only (see `Handle::file`).
        let backing = if pass {
            match File::open(self.cache.path(e.id)).and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((ours, kernels)) => {
                    file = ours;
                    Some(kernels)
                }
                Err(err) => {
                    tracing::debug!(id = e.id.0, error = %err, "no passthrough for a new file");
                    None
                }
            }
        } else {
            None
        };
        let pass = backing.is_some();
        live.insert(
            e.id,
            Live {
                writers: 1,
                pass: pass as u32,
                pass_writers: pass as u32,
                plain: !pass as u32,
                armed: true,
                size: 0,
                mtime_ns: e.mtime_ns,
                unlinked: false,
            },
        );
        self.blocks.opened(e.id);
        drop(live);
        let fh = self.add_handle(e.id, Some(file), true, pass);
        if pass {
            self.passthrough.count_open();
        }
        Ok((
            self.attr(&e),
            Opened {
                fh,
                keep_cache: false,
                backing,
            },
        ))
    }

    pub fn opendir(&self, ino: EntryId) -> VfsResult<u64> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        if e.kind != Kind::Dir {
            return Err(VfsError::NotDir);
        }
        Ok(self.add_handle(e.id, None, false, false))
    }

    pub fn readdir(&self, fh: u64, ino: EntryId, offset: u64) -> VfsResult<Arc<Vec<DirEntry>>> {
        let h = self.handle(fh)?;
        let mut listing = lock(&h.listing);
        if offset == 0 || listing.is_none() {
            let (me, children) = self.r(|db| {
                let me = db.get(ino)?.ok_or(VfsError::NotFound)?;
                Ok((me.clone(), db.children(ino)?))
            })?;
            let mut v = Vec::with_capacity(children.len() + 2);
            v.push(DirEntry {
                ino: me.id.0,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
            v.push(DirEntry {
                ino: me.parent.map(|p| p.0).unwrap_or(EntryId::ROOT.0),
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
            v.extend(children.into_iter().map(|c| DirEntry {
                ino: c.link_of.unwrap_or(c.id).0,
                kind: c.kind,
                name: c.name,
            }));
            *listing = Some(Arc::new(v));
        }
        Ok(listing.clone().expect("set above"))
    }

    /// Removes `e` from the tree: its remote copy is queued for deletion, and an open file
    /// lives on, unnamed, until its last handle is released.
    fn remove_entry(
        &self,
        db: &Db<'_>,
        live: &HashMap<EntryId, Live>,
        e: &Entry,
        rm: &mut Removal,
    ) -> VfsResult<()> {
        if let Some(key) = &e.synced.key {
            db.enqueue_delete(key, e.kind == Kind::Dir, e.synced.etag.as_deref())?;
        }
        if e.kind == Kind::Dir {
            // A directory may exist remotely without its own upload having run: a file below
            // it, uploaded first, created it (a local-folder remote makes parents). Deleting a
            // key that is not there costs one request and is harmless.
            if let Some(path) = db.path_of(e.id)? {
                let path = String::from_utf8_lossy(&path).into_owned();
                if e.synced.key.as_deref() != Some(path.as_str()) {
                    db.enqueue_delete(&path, true, None)?;
                }
            }
        }
        match live.get(&e.id) {
            Some(_) => {
                rm.unlinked.push(e.id);
                let mut gone = e.clone();
                gone.parent = None;
                gone.ctime_ns = now_ns();
                db.update(&gone)?;
                db.set_synced(e.id, &Synced::default())?;
                if let Some(job) = db.job_for(e.id)? {
                    db.remove_job(job.seq)?;
                }
            }
            _ => {
                db.delete_entry(e.id)?;
                if e.kind == Kind::File {
                    rm.files.push(e.id);
                }
                if e.kind == Kind::Dir && self.dir_is_open(e.id) {
                    let mut a = self.attr_of(e, None);
                    a.nlink = 0;
                    a.ctime = std::time::SystemTime::now();
                    rm.open_dirs.push((e.id, a));
                }
            }
        }
        Ok(())
    }

    /// Carries out what a removal may only do once its transaction has committed: drop the
    /// data files, mark open files unlinked. (Regression: the data file went inside the
    /// transaction, so a crash before the commit kept the entry but lost its content.)
    fn finish_removal(&self, rm: Removal, live: &mut HashMap<EntryId, Live>) {
        if !rm.open_dirs.is_empty() {
            lock(&self.gone_dirs).extend(rm.open_dirs);
        }
        for id in rm.unlinked {
            if let Some(l) = live.get_mut(&id) {
                l.unlinked = true;
            }
        }
        for id in rm.files {
            if self.reaper.send(id).is_err() {
                let _ = self.cache.remove(id);
            }
        }
    }

    pub fn unlink(&self, parent: EntryId, name: &OsStr) -> VfsResult<()> {
        let mut live = lock(&self.live);
        let mut rm = Removal::default();
        self.w(|db| {
            let p = self.dir(db, parent)?;
            let e = db
                .lookup(parent, name.as_bytes())?
                .ok_or(VfsError::NotFound)?;
            if e.kind == Kind::Dir {
                return Err(VfsError::IsDir);
            }
            if let Some(c) = db.open_conflict_for(e.id)? {
                if c.copy_id == e.id.0 {
                    // Deleting the `.conflict` copy keeps the version at the path; the copy's
                    // object goes like any other, which settles it on every mount.
                    db.resolve_conflict(c.id, "path")?;
                } else {
                    // The original is gone; the copy stays, as an ordinary file (without its
                    // mark once it has gone up again).
                    db.set_conflict_of(EntryId(c.copy_id), None)?;
                    db.enqueue_sync(EntryId(c.copy_id), dirty::META, Some(now_ms()))?;
                    db.resolve_conflict(c.id, "original deleted")?;
                }
            }
            self.remove_name(db, &live, &e, &mut rm)?;
            self.keep_dir(db, &p)?;
            self.touch_dir(db, &p)
        })?;
        self.finish_removal(rm, &mut live);
        Ok(())
    }

    pub fn rmdir(&self, parent: EntryId, name: &OsStr) -> VfsResult<()> {
        if name.as_bytes() == b"." {
            return Err(VfsError::Invalid("rmdir of '.'".into()));
        }
        let mut live = lock(&self.live);
        let mut rm = Removal::default();
        self.w(|db| {
            let p = self.dir(db, parent)?;
            let e = db
                .lookup(parent, name.as_bytes())?
                .ok_or(VfsError::NotFound)?;
            if e.kind != Kind::Dir {
                return Err(VfsError::NotDir);
            }
            if db.has_children(e.id)? {
                return Err(VfsError::NotEmpty);
            }
            self.remove_entry(db, &live, &e, &mut rm)?;
            self.keep_dir(db, &p)?;
            self.touch_dir(db, &p)
        })?;
        self.finish_removal(rm, &mut live);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: EntryId,
        name: &OsStr,
        newparent: EntryId,
        newname: &OsStr,
        noreplace: bool,
    ) -> VfsResult<()> {
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        let mut live = lock(&self.live);
        let ready_now = Some(now_ms());
        let mut rm = Removal::default();
        let r = self.w(|db| {
            let p = self.dir(db, parent)?;
            let np = self.dir(db, newparent)?;
            let src = db.lookup(parent, name)?.ok_or(VfsError::NotFound)?;
            if parent == newparent && name == newname {
                return Ok(());
            }
            self.check_new_name(db, newparent, newname)?;
            if src.kind == Kind::Dir {
                // A directory cannot move below itself.
                let mut cur = Some(newparent);
                while let Some(c) = cur {
                    if c == src.id {
                        return Err(VfsError::Invalid(
                            "cannot move a directory inside itself".into(),
                        ));
                    }
                    cur = db.get(c)?.and_then(|e| e.parent);
                }
            }
            // A party to an open conflict that moves settles it: the copy renamed over its
            // original keeps the copy's version (an ordinary replacing rename, conditioned on
            // the version it replaces); any other move keeps both.
            for id in [src.id].into_iter().chain(
                db.lookup(newparent, newname)?
                    .filter(|d| d.id != src.id)
                    .map(|d| d.id),
            ) {
                if let Some(c) = db.open_conflict_for(id)? {
                    let over_original = c.copy_id == src.id.0
                        && db.lookup(newparent, newname)?.map(|d| d.id.0) == Some(c.entry_id);
                    db.set_conflict_of(EntryId(c.copy_id), None)?;
                    if c.copy_id != src.id.0 {
                        // The copy stays where it is: it goes up again without its mark.
                        db.enqueue_sync(EntryId(c.copy_id), dirty::META, ready_now)?;
                    }
                    db.resolve_conflict(c.id, if over_original { "copy" } else { "both" })?;
                }
            }
            if let Some(dst) = db.lookup(newparent, newname)? {
                // Two names of one inode: rename(2) does nothing and succeeds.
                if dst.link_of.unwrap_or(dst.id) == src.link_of.unwrap_or(src.id) {
                    return Ok(());
                }
                if noreplace {
                    return Err(VfsError::Exists);
                }
                match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                    (true, true) => {
                        if db.has_children(dst.id)? {
                            return Err(VfsError::NotEmpty);
                        }
                    }
                    (true, false) => return Err(VfsError::NotDir),
                    (false, true) => return Err(VfsError::IsDir),
                    (false, false) => {}
                }
                self.remove_name(db, &live, &dst, &mut rm)?;
            }
            // Directory keys to delete once the children have moved.
            let below = if src.kind == Kind::Dir {
                db.descendants(src.id)?
            } else {
                Vec::new()
            };
            let mut old_dirs: Vec<String> = Vec::new();
            for d in std::iter::once(&src)
                .chain(below.iter())
                .filter(|d| d.kind == Kind::Dir)
            {
                // The synced key, and the current path too: an upload in flight or a file
                // below may have created the directory there already (see remove_entry).
                old_dirs.extend(d.synced.key.clone());
                if let Some(p) = db.path_of(d.id)? {
                    let p = String::from_utf8_lossy(&p).into_owned();
                    if d.synced.key.as_deref() != Some(p.as_str()) {
                        old_dirs.push(p);
                    }
                }
            }
            let mut moved = src.clone();
            moved.parent = Some(newparent);
            moved.name = newname.to_vec();
            moved.ctime_ns = now_ns();
            db.update(&moved)?;
            let held = |id: EntryId| matches!(live.get(&id), Some(l) if l.armed);
            db.enqueue_sync(src.id, 0, if held(src.id) { None } else { ready_now })?;
            for d in &below {
                db.enqueue_sync(d.id, 0, if held(d.id) { None } else { ready_now })?;
            }
            // Behind the children's moves in the queue, deepest first.
            old_dirs.sort_by_key(|k| std::cmp::Reverse(k.matches('/').count()));
            for k in old_dirs {
                db.enqueue_delete(&k, true, None)?;
            }
            self.touch_dir(db, &p)?;
            if newparent != parent {
                self.keep_dir(db, &p)?;
                self.touch_dir(db, &np)?;
            }
            Ok(())
        });
        if r.is_ok() {
            self.finish_removal(rm, &mut live);
            drop(live);
            if newparent != parent && self.store.read(|db| db.any_pinned())? {
                // Moved into or out of a pinned directory.
                if let Some(e) = self.store.read(|db| db.lookup(newparent, newname))? {
                    self.blocks.release_to_eviction(&e)?;
                    self.blocks.pins_changed();
                }
            }
        }
        r
    }

    /// A further name of the inode `ino`: a row of its own (its own key and base on the
    /// remote, where it is a full copy of the inode's object) pointing at the inode's row,
    /// which keeps the attributes and the data. The inode gets a link group, which every
    /// name's object carries as `stratus_link`, so that another mount joins the names again.
    pub fn link(&self, ino: EntryId, newparent: EntryId, newname: &OsStr) -> VfsResult<Attr> {
        // The new name is a copy of the inode's object with its hash and attributes.
        self.read_meta_first(ino)?;
        let name = newname.as_bytes();
        let now = Some(now_ms());
        self.w(|db| {
            let p = self.dir(db, newparent)?;
            self.check_new_name(db, newparent, name)?;
            if db.lookup(newparent, name)?.is_some() {
                return Err(VfsError::Exists);
            }
            let mut inode = db.get(ino)?.ok_or(VfsError::NotFound)?;
            if inode.kind == Kind::Dir {
                return Err(VfsError::Invalid("hard link to a directory".into()));
            }
            if inode.parent.is_none() {
                // Unlinked while open: no name to add to.
                return Err(VfsError::NotFound);
            }
            // Before the job below: `update` writes the row's dirty bits back as read.
            inode.ctime_ns = now_ns();
            db.update(&inode)?;
            if inode.link_group.is_none() {
                let group = new_link_group();
                db.set_link_group(ino, Some(&group))?;
                // Its own object must say which group it is in.
                db.enqueue_sync(ino, dirty::META, now)?;
            }
            let e = db.insert(&NewEntry {
                parent: newparent,
                name: name.to_vec(),
                kind: inode.kind,
                mode: inode.mode,
                uid: inode.uid,
                gid: inode.gid,
                size: inode.size,
                mtime_ns: inode.mtime_ns,
                target: inode.target.clone(),
                local: false,
                synced: Synced::default(),
                dirty: 0,
                conflict_of: None,
                unread: false,
            })?;
            db.set_link_of(e.id, Some(ino))?;
            db.enqueue_sync(e.id, dirty::CONTENT | dirty::META, now)?;
            self.touch_dir(db, &p)
        })?;
        self.getattr(ino)
    }

    /// Removes the name `e`. A further hard link goes alone (its object with it); the inode's
    /// own name, while the inode has other names, is handed one of them (the inode keeps its
    /// id, data and attributes); anything else is removed whole.
    fn remove_name(
        &self,
        db: &Db<'_>,
        live: &HashMap<EntryId, Live>,
        e: &Entry,
        rm: &mut Removal,
    ) -> VfsResult<()> {
        if let Some(of) = e.link_of {
            if let Some(key) = &e.synced.key {
                db.enqueue_delete(key, false, e.synced.etag.as_deref())?;
            }
            db.delete_entry(e.id)?;
            return self.touch_inode(db, of);
        }
        let other = match e.link_group {
            Some(_) => db.links_of(e.id)?.into_iter().next(),
            None => None,
        };
        let Some(other) = other else {
            return self.remove_entry(db, live, e, rm);
        };
        if let Some(key) = &e.synced.key {
            db.enqueue_delete(key, false, e.synced.etag.as_deref())?;
        }
        db.take_name_of_link(e.id, &other)?;
        // The inode's object is now the one at that name (or goes there, if the link's copy
        // had not run yet); its links copy from it.
        db.enqueue_sync(e.id, 0, Some(now_ms()))?;
        self.touch_inode(db, e.id)
    }

    fn touch_inode(&self, db: &Db<'_>, id: EntryId) -> VfsResult<()> {
        if let Some(mut inode) = db.get(id)? {
            inode.ctime_ns = now_ns();
            db.update(&inode)?;
        }
        Ok(())
    }

    /// A regular file, or a fifo, socket or device node: a name with attributes and no data
    /// file (the kernel serves a special file's traffic itself), uploaded as an empty object
    /// whose metadata carries its type and device number.
    pub fn mknod(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> VfsResult<Attr> {
        let fmt = mode & libc::S_IFMT;
        if fmt == libc::S_IFREG || fmt == 0 {
            let (attr, fh) = self.create(parent, name, mode & 0o7777, uid, gid)?;
            self.release(fh)?;
            return Ok(attr);
        }
        let Some(special) = Special::from_mode(mode, rdev) else {
            // S_IFDIR and S_IFLNK have their own calls; anything else is no type at all.
            return Err(VfsError::Invalid(format!("mknod of file type {fmt:o}")));
        };
        let (e, _) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::Special(special),
            mode,
            uid,
            gid,
            None,
            Some(now_ms()),
            false,
        )?;
        Ok(self.attr(&e))
    }
}

/// A new hard-link group id: 128 random bits in hex. Unique across mounts, which may each
/// link files at the same moment.
fn new_link_group() -> String {
    let mut b = [0u8; 16];
    // SAFETY: `b` is writable for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Never on Linux for 16 bytes once booted; the time and pid are still unique here.
        b[..8].copy_from_slice(&now_ns().to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}
