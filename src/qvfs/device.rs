//! The one small I/O trait every QVFS file goes through.
//!
//! Both the internal container and plain images read and write their `.qfi`
//! and `.qfd` files only through [`Device`], so tests can put an in-memory
//! device (or one that fails on purpose) in place of a real file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Positional I/O on one file. Implementations must be safe to call from
/// several threads at once.
pub trait Device: Send + Sync {
    /// Fills `buf` from `offset`. Bytes past the end of the device read as
    /// zeros (a crash can leave the data file shorter than the FAT says).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the device if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the device holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes every completed write durable (fdatasync for files).
    fn sync(&self) -> io::Result<()>;
}

impl Device for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// A device in memory, for fast unit tests.
#[derive(Default)]
pub struct MemDevice {
    bytes: Mutex<Vec<u8>>,
}

impl MemDevice {
    /// A device holding `bytes`.
    pub fn with_bytes(bytes: Vec<u8>) -> Self {
        MemDevice {
            bytes: Mutex::new(bytes),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

/// Fills `buf` from `offset` of an in-memory image (zeros past its end).
pub fn read_image(image: &[u8], buf: &mut [u8], offset: u64) {
    let start = (offset as usize).min(image.len());
    let end = (offset as usize + buf.len()).min(image.len());
    let n = end - start;
    buf[..n].copy_from_slice(&image[start..end]);
    buf[n..].fill(0);
}

/// Writes `buf` at `offset` of an in-memory image, growing it if needed.
pub fn write_image(image: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let end = offset as usize + buf.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(buf);
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_image(&self.bytes.lock().unwrap(), buf, offset);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_image(&mut self.bytes.lock().unwrap(), buf, offset);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
