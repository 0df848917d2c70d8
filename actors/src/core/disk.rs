//! Disk operations as effects. Paths are relative to the node's data directory and use `/`.
//!
//! Semantics every driver implements (the simulator adds faults on top, see sim/src/disk.rs):
//! - operations on one node start in the order they were issued; `Fsync` makes every write to that
//!   file that was issued before it durable when it completes successfully;
//! - `Append` writes at the current end of the file (creating it); a write that was not followed by
//!   a successful `Fsync` may be lost or torn by a crash;
//! - `Rename` is atomic and durable once it completes (the driver syncs the directory);
//! - `IndexWrite` writes into an index file that the real driver memory-maps (memmap2).

use bytes::Bytes;

/// Identifies one disk operation's completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoToken(pub u64);

/// A disk operation.
#[derive(Clone, Debug)]
pub enum DiskOp {
    /// Append `data` at the end of `path`, creating the file (and its directory) if needed.
    Append {
        /// File.
        path: String,
        /// Bytes to append.
        data: Bytes,
    },
    /// Write `data` at `position` of `path`, creating it if needed.
    WriteAt {
        /// File.
        path: String,
        /// Byte position.
        position: u64,
        /// Bytes to write.
        data: Bytes,
    },
    /// Write `data` at `position` of an index file (memory-mapped by the real driver).
    IndexWrite {
        /// File.
        path: String,
        /// Byte position.
        position: u64,
        /// Bytes to write.
        data: Bytes,
    },
    /// Read up to `len` bytes at `position`; a short read means end of file.
    Read {
        /// File.
        path: String,
        /// Byte position.
        position: u64,
        /// Maximum number of bytes.
        len: u64,
    },
    /// Make every earlier write to `path` durable.
    Fsync {
        /// File.
        path: String,
    },
    /// Cut `path` to `len` bytes.
    Truncate {
        /// File.
        path: String,
        /// New length.
        len: u64,
    },
    /// Atomically replace `to` with `from`.
    Rename {
        /// Source path.
        from: String,
        /// Destination path.
        to: String,
    },
    /// Delete a file (a missing file is not an error).
    Delete {
        /// File.
        path: String,
    },
    /// Delete a directory and everything in it (a missing directory is not an error).
    DeleteDir {
        /// Directory.
        path: String,
    },
    /// List the entries of a directory (a missing directory lists as empty).
    List {
        /// Directory.
        path: String,
    },
}

/// One directory entry returned by [`DiskOp::List`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    /// File or directory name (no path).
    pub name: String,
    /// Size in bytes (0 for directories).
    pub len: u64,
    /// Whether the entry is a directory.
    pub is_dir: bool,
}

/// What a successful operation returns.
#[derive(Clone, Debug)]
pub enum IoOutput {
    /// The operation completed and has nothing to return.
    Done,
    /// Bytes read.
    Read(Bytes),
    /// Directory entries, sorted by name.
    List(Vec<DirEntry>),
}

/// A failed disk operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The device is full.
    #[error("no space left on device")]
    NoSpace,
    /// Any other failure (EIO, permissions, ...).
    #[error("io error: {0}")]
    Other(String),
}

/// The completion of a disk operation.
#[derive(Clone, Debug)]
pub struct IoDone {
    /// The token returned when the operation was issued.
    pub token: IoToken,
    /// Outcome.
    pub result: Result<IoOutput, IoError>,
}
