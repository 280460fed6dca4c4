//! Token ids from the real test models against llama.cpp's `llama-tokenize`, recorded in
//! tests/data/tokenizer_refs_*.json by tests/data/record_tokenizer_refs.py (each file names
//! the exact command and the model's sha256).
//!
//! The models come from `scripts/fetch-models`; a missing model fails the test with that
//! instruction instead of passing silently.

use std::path::PathBuf;

use backstop_engine::gguf::GgufFile;
use backstop_engine::tokenizer::Tokenizer;
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(model: &str) -> Tokenizer {
    let path = repo_root().join(model);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/fetch-models first",
        path.display()
    );
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer of {}: {e}", path.display()))
}

fn refs(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compare every recorded case; report all mismatches at once, with the count that matched.
fn check(refs_file: &str) {
    let doc = refs(refs_file);
    let model = doc["model"].as_str().expect("model path in refs");
    let tk = load(model);
    let cases = doc["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 30, "{refs_file}: only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tk.encode(text, true).expect("encode");
        if got != want {
            failures.push(format!(
                "  {text:?}\n    llama.cpp: {want:?}\n    backstop:  {got:?}"
            ));
            continue;
        }
        // Decoding the ids (without the added BOS) gives the text back byte for byte.
        let body = if tk.add_bos() { &got[1..] } else { &got[..] };
        let back = tk.decode(body, true);
        if back != text.as_bytes() {
            failures.push(format!(
                "  {text:?}: ids match but decode gives {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    eprintln!(
        "{refs_file}: {}/{} strings tokenize as llama.cpp does",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{refs_file}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_ids_equal_llama_cpp() {
    check("tokenizer_refs_smollm2.json");
}

#[test]
fn gemma3_ids_equal_llama_cpp() {
    check("tokenizer_refs_gemma3.json");
}

/// Extra reference files (same JSON shape; absolute paths, comma-separated) named by
/// `TOKENIZER_REFS`, e.g. random strings tokenized by `llama-server`'s `/tokenize`:
/// `TOKENIZER_REFS=/tmp/a.json cargo test --test tokenizer_llamacpp -- --ignored`.
#[test]
#[ignore = "needs TOKENIZER_REFS pointing at recorded llama.cpp ids"]
fn extra_refs_from_env() {
    let list = std::env::var("TOKENIZER_REFS").expect("set TOKENIZER_REFS");
    for path in list.split(',') {
        check(path);
    }
}

#[test]
fn smollm2_special_ids_and_end_of_generation() {
    // Values as llama.cpp prints them when loading the file (print_info).
    let tk = load("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(tk.vocab_size(), 49152);
    assert_eq!(tk.bos_id(), Some(1));
    assert_eq!(tk.eos_id(), Some(2));
    assert_eq!(tk.eot_id(), Some(0));
    assert!(!tk.add_bos(), "SmolLM2's file says add_bos_token = false");
    assert_eq!(
        tk.eog_ids(),
        &[0, 2, 4],
        "<|endoftext|>, <|im_end|>, <reponame>"
    );
    assert_eq!(tk.token_text(2), Some("<|im_end|>"));
    assert_eq!(tk.token_piece(2, true), b"<|im_end|>");
    assert_eq!(
        tk.token_piece(2, false),
        b"",
        "control tokens are hidden unless asked"
    );
    assert_eq!(
        tk.token_piece(198, false),
        b"\n",
        "byte-level 'Ċ' is a newline"
    );
}

#[test]
fn gemma3_special_ids_and_end_of_generation() {
    let tk = load("models/gemma-3-270m-q4_k_m.gguf");
    assert_eq!(tk.vocab_size(), 262_144);
    assert_eq!(tk.bos_id(), Some(2));
    assert_eq!(tk.eos_id(), Some(1));
    assert_eq!(tk.eot_id(), Some(106));
    assert!(tk.add_bos());
    assert_eq!(tk.eog_ids(), &[1, 106, 212], "<eos>, <end_of_turn>, </s>");
    assert_eq!(
        tk.token_piece(248, false),
        b"\n",
        "<0x0A> is a newline byte"
    );
    let (start, end) = (tk.token_id("<start_of_turn>"), tk.token_id("<end_of_turn>"));
    assert_eq!((start, end), (Some(105), Some(106)));
}

#[test]
fn streaming_pieces_can_split_a_character() {
    // An emoji with no token of its own comes out as bytes; each piece alone is not UTF-8,
    // their concatenation is.
    let tk = load("models/gemma-3-270m-q4_k_m.gguf");
    let ids = tk.encode("\u{1F9EC}", false).expect("encode");
    let pieces: Vec<&[u8]> = ids.iter().map(|&id| tk.token_piece(id, false)).collect();
    let joined: Vec<u8> = pieces.concat();
    assert_eq!(joined, "\u{1F9EC}".as_bytes());
}
