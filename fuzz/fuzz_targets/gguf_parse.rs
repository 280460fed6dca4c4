//! Feed arbitrary bytes to the GGUF parser: it must return Ok or Err, never panic, overflow,
//! or allocate without bound. Whatever it accepts must satisfy the header's invariants.
#![no_main]

use backstop_engine::gguf::GgufHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = GgufHeader::parse(data) {
        for t in &header.tensors {
            assert!(
                header.tensor_data(data, t).is_some(),
                "tensor {} out of bounds",
                t.name
            );
            assert_eq!(t.offset % header.alignment, 0);
        }
    }
});
