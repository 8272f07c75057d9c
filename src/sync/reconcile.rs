//! The decision for one path from three versions: the base (what both sides last agreed on),
//! the local side and the remote side. Pure: every side effect lives in the poller and the
//! uploader, and the whole table is tested below.

/// The local side of a path, relative to its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Local {
    /// There is a base and the mount still holds exactly it.
    Unchanged,
    /// There is a base and the mount holds something newer (content, metadata or a pending
    /// move away from this path).
    Modified,
    /// There is a base and the mount deleted it.
    Deleted,
    /// No base: the mount created something at this path.
    Created,
    /// No base and nothing in the mount.
    Absent,
}

/// The remote side of a path, relative to its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remote {
    Unchanged,
    Modified,
    Deleted,
    /// No base: the remote has an object here that we never synced.
    Created,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing to do (or the journal already holds it).
    Nothing,
    /// Upload with a conditional write: `PutMode::Update` on the base, `Create` without one.
    Upload,
    /// Delete the remote copy.
    DeleteRemote,
    /// Take the remote version into the mount.
    TakeRemote,
    /// Remove the entry from the mount.
    DeleteLocal,
    /// Both sides changed to the same content: record the remote version as the new base.
    AdoptBase,
    /// Both sides changed, differently: keep both versions, as the conflict policy says.
    Conflict,
    /// Deleted here, modified there: the edit wins over the delete, the remote version comes
    /// back and the pending delete is dropped.
    Restore,
    /// Modified here, deleted there: the local version stays and is uploaded again, with
    /// `PutMode::Create`.
    Reupload,
}

/// Decides one path. `same_content` says whether the two sides hold identical bytes (by
/// SHA-256), which only matters where both changed.
pub fn decide(local: Local, remote: Remote, same_content: bool) -> Action {
    use Action as A;
    match (local, remote) {
        // A base exists on both sides.
        (Local::Unchanged, Remote::Unchanged) => A::Nothing,
        (Local::Unchanged, Remote::Modified) => A::TakeRemote,
        (Local::Unchanged, Remote::Deleted) => A::DeleteLocal,
        (Local::Modified, Remote::Unchanged) => A::Upload,
        (Local::Modified, Remote::Modified) if same_content => A::AdoptBase,
        (Local::Modified, Remote::Modified) => A::Conflict,
        (Local::Modified, Remote::Deleted) => A::Reupload,
        (Local::Deleted, Remote::Unchanged) => A::DeleteRemote,
        (Local::Deleted, Remote::Modified) => A::Restore,
        (Local::Deleted, Remote::Deleted) => A::Nothing,
        // No base on either side.
        (Local::Created, Remote::Created) if same_content => A::AdoptBase,
        (Local::Created, Remote::Created) => A::Conflict,
        (Local::Created, Remote::Absent) => A::Upload,
        (Local::Absent, Remote::Created) => A::TakeRemote,
        (Local::Absent, Remote::Absent) => A::Nothing,
        // One side remembers a base the other does not: the base was lost (a state dir
        // rebuilt, a key renamed out from under us). Never guess which side is stale: keep
        // both where both exist, otherwise keep what exists.
        (Local::Unchanged | Local::Modified, Remote::Created) if same_content => A::AdoptBase,
        (Local::Unchanged | Local::Modified, Remote::Created) => A::Conflict,
        (Local::Unchanged | Local::Modified, Remote::Absent) => A::Reupload,
        (Local::Deleted, Remote::Created) => A::Restore,
        (Local::Deleted, Remote::Absent) => A::Nothing,
        (Local::Created, Remote::Unchanged | Remote::Modified) if same_content => A::AdoptBase,
        (Local::Created, Remote::Unchanged | Remote::Modified) => A::Conflict,
        (Local::Created, Remote::Deleted) => A::Upload,
        (Local::Absent, Remote::Unchanged | Remote::Modified) => A::TakeRemote,
        (Local::Absent, Remote::Deleted) => A::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;

    const LOCALS: [Local; 5] = [
        Local::Unchanged,
        Local::Modified,
        Local::Deleted,
        Local::Created,
        Local::Absent,
    ];
    const REMOTES: [Remote; 5] = [
        Remote::Unchanged,
        Remote::Modified,
        Remote::Deleted,
        Remote::Created,
        Remote::Absent,
    ];

    /// The table the issue states, row by row.
    #[test]
    fn the_contract() {
        // Only the local side changed: upload (conditionally).
        assert_eq!(decide(Local::Modified, Remote::Unchanged, false), A::Upload);
        assert_eq!(decide(Local::Created, Remote::Absent, false), A::Upload);
        assert_eq!(
            decide(Local::Deleted, Remote::Unchanged, false),
            A::DeleteRemote
        );
        // Only the remote side changed: take it.
        assert_eq!(
            decide(Local::Unchanged, Remote::Modified, false),
            A::TakeRemote
        );
        assert_eq!(decide(Local::Absent, Remote::Created, false), A::TakeRemote);
        assert_eq!(
            decide(Local::Unchanged, Remote::Deleted, false),
            A::DeleteLocal
        );
        // Both changed: a conflict unless the contents are identical.
        assert_eq!(
            decide(Local::Modified, Remote::Modified, false),
            A::Conflict
        );
        assert_eq!(
            decide(Local::Modified, Remote::Modified, true),
            A::AdoptBase
        );
        assert_eq!(decide(Local::Created, Remote::Created, false), A::Conflict);
        assert_eq!(decide(Local::Created, Remote::Created, true), A::AdoptBase);
        // The edit wins over the delete, on either side.
        assert_eq!(decide(Local::Deleted, Remote::Modified, false), A::Restore);
        assert_eq!(decide(Local::Modified, Remote::Deleted, false), A::Reupload);
        // Nothing happened, or both deleted.
        assert_eq!(
            decide(Local::Unchanged, Remote::Unchanged, false),
            A::Nothing
        );
        assert_eq!(decide(Local::Deleted, Remote::Deleted, false), A::Nothing);
        assert_eq!(decide(Local::Absent, Remote::Absent, false), A::Nothing);
    }

    /// Every cell of the table: no action ever drops a version that only one side holds.
    #[test]
    fn no_cell_loses_a_version() {
        for l in LOCALS {
            for r in REMOTES {
                for same in [false, true] {
                    let a = decide(l, r, same);
                    let local_has_version = matches!(l, Local::Modified | Local::Created);
                    let remote_has_version = matches!(r, Remote::Modified | Remote::Created);
                    if local_has_version && !same {
                        // The local version must survive: uploaded, or kept in a conflict.
                        assert!(
                            matches!(a, A::Upload | A::Reupload | A::Conflict),
                            "{l:?}/{r:?}/{same}: {a:?} would lose the local version"
                        );
                    }
                    if remote_has_version && !same {
                        assert!(
                            matches!(a, A::TakeRemote | A::Restore | A::Conflict),
                            "{l:?}/{r:?}/{same}: {a:?} would lose the remote version"
                        );
                    }
                    if a == A::DeleteLocal {
                        assert_eq!(l, Local::Unchanged, "only an unchanged local copy may go");
                    }
                    if a == A::DeleteRemote {
                        assert_eq!(r, Remote::Unchanged, "only an unchanged remote copy may go");
                    }
                }
            }
        }
    }

    /// Identical contents only ever soften a conflict; elsewhere they change nothing.
    #[test]
    fn same_content_matters_only_where_both_changed() {
        for l in LOCALS {
            for r in REMOTES {
                let (a, b) = (decide(l, r, false), decide(l, r, true));
                if a != b {
                    assert_eq!((a, b), (A::Conflict, A::AdoptBase), "{l:?}/{r:?}");
                }
            }
        }
    }
}
