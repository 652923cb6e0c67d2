//! Whiteouts: `.wh.NAME` removes NAME as lower layers left it (what this layer wrote
//! stays), `.wh..wh..opq` empties its directory of what lower layers put there, wherever
//! the marker appears in the layer; other `.wh..wh.` names are aufs bookkeeping, skipped.

use std::os::fd::{AsFd, BorrowedFd};

use super::tree::{cstring, join};
use super::{MAX_DEPTH, UnpackError, Unpacker};
use crate::sys::fs::{list_dir, open_dir_at, remove_tree};

impl Unpacker {
    pub(super) fn whiteout(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &[u8],
    ) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        if name == b".wh..wh..opq" {
            let Some(dfd) = self.walk(raw, parent, false)? else {
                return Ok(());
            };
            let key = join(parent);
            self.stack.clear();
            self.opaque(raw, dfd.as_fd(), &key, 0)?;
            self.touch(&key);
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content.
            self.note(raw, "aufs metadata skipped");
            return Ok(());
        }
        let target = &name[4..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.refuse(raw, "a whiteout without a valid name"));
        }
        let Some(dfd) = self.walk(raw, parent, false)? else {
            return Ok(());
        };
        let mut key = join(parent);
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(target);
        if self.touched.contains(&key) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        let cname = cstring(target).map_err(|why| self.refuse(raw, why))?;
        self.stack.clear();
        match remove_tree(dfd.as_fd(), &cname) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.io(raw, "apply whiteout", e)),
        }
    }

    /// Empties `dir` (path `key`) of what lower layers put there, keeping what this
    /// layer wrote.
    fn opaque(
        &self,
        raw: &[u8],
        dir: BorrowedFd,
        key: &[u8],
        depth: usize,
    ) -> Result<(), UnpackError> {
        if depth > MAX_DEPTH {
            return Err(self.refuse(raw, "opaque directory nested too deep"));
        }
        let names = list_dir(dir).map_err(|e| self.io(raw, "list opaque directory", e))?;
        for (child, _) in names {
            let mut ckey = key.to_vec();
            if !ckey.is_empty() {
                ckey.push(b'/');
            }
            ckey.extend_from_slice(child.as_bytes());
            if self.touched.contains(&ckey) {
                if let Ok(sub) = open_dir_at(dir, &child) {
                    self.opaque(raw, sub.as_fd(), &ckey, depth + 1)?;
                }
                continue;
            }
            remove_tree(dir, &child).map_err(|e| self.io(raw, "apply opaque whiteout", e))?;
        }
        Ok(())
    }
}
