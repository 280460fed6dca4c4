//! Tokenizer behaviour on tiny vocabularies written in the test: no model file needed.

use backstop_engine::tokenizer::{Tokenizer, TokenizerError, VocabSpec};

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// GPT-2's byte -> character table, written out independently of the crate's.
fn gpt2_byte_chars() -> Vec<char> {
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE vocabulary: the 256 byte characters, a few merges, and specials.
fn bpe_spec(pre: &str) -> VocabSpec {
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    let mut types = vec![CONTROL; 3];
    for c in gpt2_byte_chars() {
        tokens.push(c.to_string());
        types.push(NORMAL);
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(NORMAL);
    }
    VocabSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        token_types: Some(types),
        tokens,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        ..VocabSpec::default()
    }
}

fn id(tk: &Tokenizer, text: &str) -> u32 {
    tk.token_id(text)
        .unwrap_or_else(|| panic!("{text:?} not in the test vocabulary"))
}

#[test]
fn bpe_merges_by_rank_and_marks_spaces() {
    let tk = Tokenizer::from_spec(bpe_spec("gpt-2")).unwrap();
    let ids = tk.encode("hello world", true).unwrap();
    assert_eq!(
        ids,
        vec![id(&tk, "hello"), id(&tk, "Ġworld")],
        "gpt2 adds no BOS by default"
    );
    assert_eq!(tk.decode(&ids, false), b"hello world");
}

#[test]
fn bpe_pre_tokenizer_follows_tokenizer_ggml_pre() {
    // gpt-2 keeps "12" together (so the "1 2" merge applies); smollm splits every digit first.
    let gpt2 = Tokenizer::from_spec(bpe_spec("gpt-2")).unwrap();
    assert_eq!(gpt2.encode("12", false).unwrap(), vec![id(&gpt2, "12")]);
    let smollm = Tokenizer::from_spec(bpe_spec("smollm")).unwrap();
    assert_eq!(
        smollm.encode("12", false).unwrap(),
        vec![id(&smollm, "1"), id(&smollm, "2")]
    );
}

#[test]
fn bpe_special_tokens_are_parsed_unless_disabled() {
    let tk = Tokenizer::from_spec(bpe_spec("gpt-2")).unwrap();
    let ids = tk.encode("<|im_start|>hello<|im_end|>", false).unwrap();
    assert_eq!(ids, vec![1, id(&tk, "hello"), 2]);
    let plain = tk.encode_with("<|im_start|>", false, false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&1), "{plain:?}");
    // Rendering: control tokens show only when asked.
    assert_eq!(tk.decode(&ids, true), b"<|im_start|>hello<|im_end|>");
    assert_eq!(tk.decode(&ids, false), b"hello");
    assert!(tk.is_eog(2) && tk.is_eog(0) && !tk.is_eog(1));
}

#[test]
fn bpe_pieces_are_raw_bytes_even_mid_character() {
    let tk = Tokenizer::from_spec(bpe_spec("gpt-2")).unwrap();
    let ids = tk.encode("é", false).unwrap();
    assert_eq!(ids.len(), 2, "no merge for é: one token per UTF-8 byte");
    assert_eq!(tk.token_piece(ids[0], false), &[0xC3]);
    assert_eq!(tk.token_piece(ids[1], false), &[0xA9]);
}

#[test]
fn bpe_add_bos_follows_metadata() {
    let spec = VocabSpec {
        add_bos: Some(true),
        add_eos: Some(true),
        ..bpe_spec("gpt-2")
    };
    let tk = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(
        tk.encode("hello", true).unwrap(),
        vec![1, id(&tk, "hello"), 2]
    );
    assert_eq!(tk.encode("hello", false).unwrap(), vec![id(&tk, "hello")]);
}

/// A SentencePiece vocabulary: specials, byte tokens, and pieces with chosen scores.
fn spm_spec(pieces: &[(&str, f32)]) -> VocabSpec {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, CONTROL, CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(BYTE);
        scores.push(0.0);
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        types.push(NORMAL);
        scores.push(*s);
    }
    tokens.push("<start_of_turn>".into());
    types.push(CONTROL);
    scores.push(0.0);
    tokens.push("<mark>".into());
    types.push(USER_DEFINED);
    scores.push(0.0);
    VocabSpec {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        ..VocabSpec::default()
    }
}

#[test]
fn spm_merges_the_highest_scoring_pair_first() {
    let base = [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("c", -2.0),
        ("▁a", -1.5),
    ];
    let with = |ab: f32, bc: f32| {
        let mut p = base.to_vec();
        p.extend([("ab", ab), ("bc", bc)]);
        Tokenizer::from_spec(VocabSpec {
            add_space_prefix: Some(false),
            ..spm_spec(&p)
        })
        .unwrap()
    };
    let tk = with(-5.0, -3.0);
    assert_eq!(
        tk.encode("abc", false).unwrap(),
        vec![id(&tk, "a"), id(&tk, "bc")]
    );
    let tk = with(-3.0, -5.0);
    assert_eq!(
        tk.encode("abc", false).unwrap(),
        vec![id(&tk, "ab"), id(&tk, "c")]
    );
    // A tie goes to the leftmost pair.
    let tk = with(-4.0, -4.0);
    assert_eq!(
        tk.encode("abc", false).unwrap(),
        vec![id(&tk, "ab"), id(&tk, "c")]
    );
}

#[test]
fn spm_defaults_add_bos_and_space_prefix_and_falls_back_to_bytes() {
    let tk = Tokenizer::from_spec(spm_spec(&[("▁", -1.0), ("a", -2.0), ("▁a", -1.5)])).unwrap();
    assert!(
        tk.add_bos(),
        "SentencePiece vocabularies add BOS unless the file says not to"
    );
    assert_eq!(tk.bos_id(), Some(1), "llama.cpp's default BOS id");
    let ids = tk.encode("a é", true).unwrap();
    let byte = |b: u8| id(&tk, &format!("<0x{b:02X}>"));
    assert_eq!(
        ids,
        vec![1, id(&tk, "▁a"), id(&tk, "▁"), byte(0xC3), byte(0xA9)]
    );
    // The added space prefix is removed again when decoding.
    assert_eq!(tk.decode(&ids[1..], false), "a é".as_bytes());
}

#[test]
fn spm_space_prefix_after_special_tokens_only_where_llama_cpp_puts_it() {
    let tk = Tokenizer::from_spec(spm_spec(&[("▁", -1.0), ("a", -2.0), ("▁a", -1.5)])).unwrap();
    let sot = id(&tk, "<start_of_turn>");
    let mark = id(&tk, "<mark>");
    // Text after a special token gets the prefix again; user-defined tokens are matched even
    // without special-token parsing.
    assert_eq!(
        tk.encode("<start_of_turn>a", false).unwrap(),
        vec![sot, id(&tk, "▁a")]
    );
    assert_eq!(
        tk.encode_with("a<mark>", false, false).unwrap(),
        vec![id(&tk, "▁a"), mark]
    );
}

#[test]
fn bad_metadata_is_a_clear_error() {
    let err = |spec: VocabSpec| Tokenizer::from_spec(spec).unwrap_err();

    let mut spec = bpe_spec("gpt-2");
    spec.merges.push("zz qq".into());
    let e = err(spec);
    assert!(
        matches!(e, TokenizerError::MergeUnknownToken { ref token, .. } if token == "zz"),
        "{e}"
    );

    let mut spec = bpe_spec("gpt-2");
    spec.merges.push("nospace".into());
    assert!(matches!(err(spec), TokenizerError::MalformedMerge { .. }));

    let mut spec = bpe_spec("gpt-2");
    spec.token_types.as_mut().unwrap().pop();
    assert!(matches!(err(spec), TokenizerError::LengthMismatch { .. }));

    let mut spec = spm_spec(&[("a", -1.0)]);
    spec.scores.as_mut().unwrap().push(0.0);
    assert!(matches!(err(spec), TokenizerError::LengthMismatch { .. }));

    let mut spec = bpe_spec("gpt-2");
    spec.tokens.push("<|im_end|>".into());
    spec.token_types.as_mut().unwrap().push(CONTROL);
    assert!(matches!(
        err(spec),
        TokenizerError::DuplicateToken { first: 2, .. }
    ));

    let e = err(bpe_spec("no-such-pre"));
    assert!(
        e.to_string().contains("no-such-pre") && e.to_string().contains("smollm"),
        "{e}"
    );

    let e = err(VocabSpec {
        model: "bert".into(),
        ..bpe_spec("gpt-2")
    });
    assert!(matches!(e, TokenizerError::UnsupportedModel(_)));

    let e = err(VocabSpec {
        merges: Vec::new(),
        ..bpe_spec("gpt-2")
    });
    assert!(matches!(e, TokenizerError::MissingMerges));

    assert!(matches!(
        err(VocabSpec::default()),
        TokenizerError::UnsupportedModel(_)
    ));
    let e = err(VocabSpec {
        model: "llama".into(),
        ..VocabSpec::default()
    });
    assert!(matches!(e, TokenizerError::EmptyVocab));
}
