//! Checking an uploaded provider archive without reading it whole: the
//! end of central directory record at its tail, then the central directory
//! it points at, must list the provider's executable.

/// The bytes of a stored object: `read(offset, length)`.
pub trait Ranges {
    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, String>;
}

const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
const ENTRY: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
/// The end record (22 bytes) plus the longest comment.
const TAIL: u64 = 22 + 65_535;
/// Largest central directory read.
const DIRECTORY_LIMIT: u64 = 4 << 20;

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// The names of the entries of the zip archive of `size` bytes.
pub fn entry_names(object: &impl Ranges, size: u64) -> Result<Vec<String>, String> {
    let tail_start = size.saturating_sub(TAIL);
    let tail = object.read(tail_start, size - tail_start)?;
    let end = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD)
        .ok_or("not a zip archive (no end of central directory)")?;
    let record = &tail[end..];
    let entries = u16_at(record, 10);
    let (dir_size, dir_offset) = (u32_at(record, 12), u32_at(record, 16));
    if dir_offset + dir_size > tail_start + end as u64 || dir_size > DIRECTORY_LIMIT {
        return Err("the zip archive's central directory lies outside it".into());
    }
    let directory = object.read(dir_offset, dir_size)?;
    let mut names = Vec::with_capacity(entries);
    let mut at = 0;
    for _ in 0..entries {
        if directory.len() < at + 46 || directory[at..at + 4] != ENTRY {
            return Err("the zip archive's central directory is truncated".into());
        }
        let (name_len, extra, comment) = (
            u16_at(&directory, at + 28),
            u16_at(&directory, at + 30),
            u16_at(&directory, at + 32),
        );
        let name = directory
            .get(at + 46..at + 46 + name_len)
            .ok_or("the zip archive's central directory is truncated")?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 46 + name_len + extra + comment;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Ranges for Vec<u8> {
        fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, String> {
            let start = (offset as usize).min(self.len());
            let end = (start + length as usize).min(self.len());
            Ok(self[start..end].to_vec())
        }
    }

    /// A stored zip with the given entry names (empty files), as Info-ZIP
    /// lays it out.
    fn zip(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for name in names {
            let offset = out.len() as u32;
            out.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04]);
            out.extend_from_slice(&[0u8; 22]);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            directory.extend_from_slice(&ENTRY);
            directory.extend_from_slice(&[0u8; 24]);
            directory.extend_from_slice(&(name.len() as u16).to_le_bytes());
            directory.extend_from_slice(&[0u8; 12]);
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(name.as_bytes());
        }
        let dir_offset = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(&EOCD);
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&dir_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn names_come_from_the_central_directory() {
        let archive = zip(&["terraform-provider-widget_v1.0.0", "README.md"]);
        let size = archive.len() as u64;
        assert_eq!(
            entry_names(&archive, size).unwrap(),
            ["terraform-provider-widget_v1.0.0", "README.md"]
        );
    }

    #[test]
    fn what_is_not_a_zip_is_refused() {
        let text = b"just some text, not an archive".to_vec();
        assert!(entry_names(&text, text.len() as u64).is_err());
        let mut truncated = zip(&["a", "b"]);
        truncated.drain(40..60);
        assert!(entry_names(&truncated, truncated.len() as u64).is_err());
        let empty: Vec<u8> = Vec::new();
        assert!(entry_names(&empty, 0).is_err());
    }
}
