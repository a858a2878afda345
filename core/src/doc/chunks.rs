//! The strict decoder of Automerge chunks (changes and saved documents) that loading, raw
//! changes and sync messages share: every byte must belong to a valid chunk.

use std::panic::{catch_unwind, UnwindSafe};

use automerge::{Automerge, Change, LoadOptions};

use crate::error::{Error, Result};
use crate::reconcile::ENCODING;

/// The first bytes of every Automerge storage chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Decodes bytes holding one or more Automerge chunks: changes (plain or compressed) or
/// saved documents. Every byte must belong to a valid chunk, so a garbage or torn tail is an
/// error rather than silently ignored (as `load_incremental` would).
pub fn parse_changes(bytes: &[u8]) -> Result<Vec<Change>> {
    let invalid =
        |offset: usize, what: &str| Error::InvalidChanges(format!("at byte {offset}: {what}"));
    if bytes.is_empty() {
        return Err(Error::InvalidChanges("no bytes".into()));
    }
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < 9 || rest[..4] != MAGIC {
            return Err(invalid(offset, "not an Automerge chunk"));
        }
        let chunk_type = rest[8];
        let (len, len_size) =
            read_uleb(&rest[9..]).ok_or_else(|| invalid(offset, "malformed chunk length"))?;
        let end = 9usize
            .checked_add(len_size)
            .and_then(|h| h.checked_add(usize::try_from(len).ok()?))
            .filter(|end| *end <= rest.len())
            .ok_or_else(|| invalid(offset, "chunk runs past the end of the bytes"))?;
        let chunk = &rest[..end];
        match chunk_type {
            1 | 2 => {
                let change = guarded(|| Change::try_from(chunk).map_err(|e| e.to_string()))
                    .map_err(|e| invalid(offset, &e))?;
                // `Change::try_from` does not check the chunk's checksum (Automerge checks it
                // only when loading a document), so damaged bytes would decode as another
                // change. The checksum is the first four bytes of the change's hash.
                if change.hash().0[..4] != chunk[4..8] {
                    return Err(invalid(offset, "checksum mismatch: the change is damaged"));
                }
                out.push(change)
            }
            0 => {
                let doc = guarded(|| {
                    Automerge::load_with_options(chunk, LoadOptions::new().text_encoding(ENCODING))
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| invalid(offset, &e))?;
                out.extend(doc.get_changes(&[]));
            }
            other => return Err(invalid(offset, &format!("unsupported chunk type {other}"))),
        }
        offset += end;
    }
    Ok(out)
}

/// Runs one of Automerge's decoders on untrusted bytes. They answer most malformed input
/// with an error but panic on some: an operation counter past `u32::MAX` in a change's
/// columns unwraps a failed conversion (found by fuzzing, see
/// `tests/fuzz-regressions/sync_message/`). A decoder builds a new value from a byte slice
/// and touches nothing else, so its panic is caught and answered as the malformed input it
/// is.
fn guarded<T>(decode: impl FnOnce() -> Result<T, String> + UnwindSafe) -> Result<T, String> {
    catch_unwind(decode).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(format!("the Automerge decoder failed ({why})"))
    })
}

/// An unsigned LEB128 number and how many bytes it took.
pub(crate) fn read_uleb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}
