//! Reading the files a host points at without trusting them: only regular files are opened
//! (a FIFO or a device would block or never end), sizes are bounded before anything is
//! read, and weight files are read with positioned reads into owned buffers, never
//! memory-mapped, so that a file truncated or rewritten on disk while a model is loaded
//! cannot fault the host (SIGBUS). Every tensor's bytes are digested when first read; a
//! later read of the same bytes (restoring a weight a LoRA changed) that finds others is an
//! error, not a silently different model.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::limits::MAX_TEXT_BYTES;

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` for reading if it is a regular file (following symlinks). On Unix the file
/// is opened without blocking and checked after opening, so a FIFO swapped in between
/// cannot block the call either.
pub fn open_regular(path: &Path) -> Result<File> {
    let not_regular = || {
        io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a folder, FIFO, socket or device)",
            ),
        )
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    #[cfg(not(unix))]
    if !std::fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .is_file()
    {
        return Err(not_regular());
    }
    let file = options.open(path).map_err(|e| io_error(path, e))?;
    match file.metadata().map_err(|e| io_error(path, e))?.is_file() {
        true => Ok(file),
        false => Err(not_regular()),
    }
}

/// The whole of a regular file of at most `limit` bytes.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len > limit {
        return Err(io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes is more than the {limit} this kind of file may have"),
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read if the file grows meanwhile.
    (&mut file)
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    Ok(bytes)
}

/// The whole of a UTF-8 text file of at most [`MAX_TEXT_BYTES`].
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes(path, MAX_TEXT_BYTES)?).map_err(|_| {
        io_error(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

/// One open weight file, read by byte range.
#[derive(Debug)]
pub(crate) struct WeightFile {
    pub path: PathBuf,
    file: Mutex<File>,
    /// The file's length when opened.
    pub len: u64,
    /// CRC-32 of each range read, by its first byte's offset.
    digests: Mutex<HashMap<u64, u32>>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = open_regular(path)?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            len,
            digests: Mutex::new(HashMap::new()),
        })
    }

    /// The bytes of `range`, which lay inside the file when it was opened. A file that has
    /// since become shorter is an I/O error.
    pub fn read(&self, range: Range<u64>) -> Result<Vec<u8>> {
        let len = range.end.saturating_sub(range.start);
        let mut bytes = Vec::with_capacity(len as usize);
        // A panic elsewhere cannot leave a `File` half-read: every read seeks first.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| io_error(&self.path, e))?;
        (&mut *file)
            .take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(&self.path, e))?;
        if bytes.len() as u64 != len {
            return Err(io_error(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when it was opened (truncated on disk?)",
                ),
            ));
        }
        Ok(bytes)
    }

    /// [`WeightFile::read`] of tensor `name`, checked against the digest of its first read.
    pub fn read_tensor(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let start = range.start;
        let bytes = self.read(range)?;
        let digest = crc32fast::hash(&bytes);
        let mut digests = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        match *digests.entry(start).or_insert(digest) == digest {
            true => Ok(bytes),
            false => Err(Error::FileChanged {
                path: self.path.clone(),
                name: name.to_string(),
            }),
        }
    }
}
