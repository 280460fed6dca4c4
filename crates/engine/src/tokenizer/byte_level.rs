//! GPT-2's byte <-> character table: byte-level BPE vocabularies spell every byte as a printable
//! character (printable Latin-1 bytes as themselves, the other 68 bytes as U+0100 onwards), so
//! a token's text must be mapped back to raw bytes to print it.

/// The character that stands for each byte.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            let cp = next;
            next += 1;
            cp
        };
        // Every value here is below 0x144, so always a valid scalar value.
        *slot = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// Inverse of [`byte_to_char`]: every table character is below U+0144.
pub(crate) struct ByteDecoder {
    byte_of: [Option<u8>; 0x144],
}

impl ByteDecoder {
    pub(crate) fn new() -> Self {
        let mut byte_of = [None; 0x144];
        for (b, c) in byte_to_char().iter().enumerate() {
            if let Some(slot) = byte_of.get_mut(*c as usize) {
                *slot = Some(b as u8);
            }
        }
        Self { byte_of }
    }

    /// Raw bytes of a byte-level token text. A character outside the table (only in a
    /// malformed vocabulary) is kept as its own UTF-8 rather than dropped, so nothing
    /// vanishes silently.
    pub(crate) fn decode_token(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.byte_of.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let table = byte_to_char();
        let dec = ByteDecoder::new();
        for b in 0..=255u8 {
            let mut out = Vec::new();
            dec.decode_token(&table[b as usize].to_string(), &mut out);
            assert_eq!(out, vec![b]);
        }
        // The well-known spellings: space is 'Ġ', newline is 'Ċ'.
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }
}
