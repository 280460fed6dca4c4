//! Reading the tokenizer (and chat template) from GGUF metadata, on tiny files written by the
//! test with the project's GGUF writer.

use backstop_engine::chat::{ChatMessage, ChatTemplate, TemplateSource};
use backstop_engine::gguf::writer::GgufWriter;
use backstop_engine::gguf::{keys, GgufError, GgufHeader};
use backstop_engine::tokenizer::{Tokenizer, TokenizerError, VocabSpec};

const TOKENS: [&str; 8] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "▁",
    "a",
    "▁a",
    "<end_of_turn>",
];

/// A Gemma-shaped SentencePiece vocabulary, without the byte tokens.
fn writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add(keys::GENERAL_ARCHITECTURE, "gemma3")
        .add(keys::TOKENIZER_MODEL, "llama")
        .add(keys::TOKENIZER_PRE, "default")
        .add(keys::TOKENIZER_TOKENS, TOKENS.to_vec())
        .add(
            keys::TOKENIZER_SCORES,
            vec![0.0f32, 0.0, 0.0, 0.0, -1.0, -2.0, -1.5, 0.0],
        )
        .add(keys::TOKENIZER_TOKEN_TYPE, vec![3i32, 3, 3, 2, 1, 1, 1, 3])
        .add(keys::TOKENIZER_BOS_ID, 2u32)
        .add(keys::TOKENIZER_EOS_ID, 1u32)
        .add(keys::TOKENIZER_UNK_ID, 3u32)
        .add(keys::TOKENIZER_ADD_BOS, true)
        .add(keys::TOKENIZER_ADD_SPACE_PREFIX, false);
    w
}

fn header(w: &GgufWriter) -> GgufHeader {
    GgufHeader::parse(&w.to_bytes().expect("write")).expect("parse")
}

#[test]
fn reads_every_tokenizer_key() {
    let spec = VocabSpec::from_gguf(&header(&writer())).unwrap();
    assert_eq!(spec.model, "llama");
    assert_eq!(spec.pre.as_deref(), Some("default"));
    assert_eq!(spec.tokens.len(), 8);
    assert_eq!(spec.scores.as_ref().map(Vec::len), Some(8));
    assert_eq!(
        spec.token_types.as_deref(),
        Some(&[3, 3, 3, 2, 1, 1, 1, 3][..])
    );
    assert_eq!(
        (spec.bos_id, spec.eos_id, spec.unk_id),
        (Some(2), Some(1), Some(3))
    );
    assert_eq!((spec.eot_id, spec.pad_id), (None, None));
    assert_eq!(spec.add_bos, Some(true));
    assert_eq!(spec.add_eos, None);
    assert_eq!(spec.add_space_prefix, Some(false));

    let tk = Tokenizer::from_gguf(&header(&writer())).unwrap();
    assert_eq!(tk.encode("a a", true).unwrap(), vec![2, 5, 6]);
    assert_eq!(tk.eot_id(), Some(7), "found by its text, as llama.cpp does");
    assert!(tk.is_eog(1) && tk.is_eog(7) && !tk.is_eog(2));
}

#[test]
fn integer_scores_are_accepted() {
    let mut w = writer();
    w.add(keys::TOKENIZER_SCORES, vec![0i32, 0, 0, 0, -1, -2, -1, 0]);
    let spec = VocabSpec::from_gguf(&header(&w)).unwrap();
    assert_eq!(spec.scores.unwrap()[5], -2.0);
}

#[test]
fn wrongly_typed_keys_are_errors() {
    let mut w = writer();
    w.add(keys::TOKENIZER_TOKEN_TYPE, vec![1.0f32; 8]);
    let e = VocabSpec::from_gguf(&header(&w)).unwrap_err();
    assert!(matches!(e, TokenizerError::WrongArrayType { .. }), "{e}");
    assert!(e.to_string().contains("tokenizer.ggml.token_type"), "{e}");

    let mut w = writer();
    w.add(keys::TOKENIZER_ADD_BOS, 1.5f32);
    let e = VocabSpec::from_gguf(&header(&w)).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Gguf(GgufError::WrongType { .. })),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.add(keys::TOKENIZER_TOKENS, vec!["a"]);
    let e = VocabSpec::from_gguf(&header(&w)).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Gguf(GgufError::MissingKey(_))),
        "{e}"
    );
}

#[test]
fn chat_template_comes_from_the_file_or_the_architecture() {
    let h = header(&writer());
    let tk = Tokenizer::from_gguf(&h).unwrap();
    let t = ChatTemplate::from_gguf(&h, &tk).unwrap();
    assert_eq!(t.source(), &TemplateSource::BuiltIn("gemma"));

    let mut w = writer();
    w.add(keys::GENERAL_ARCHITECTURE, "llama");
    let t = ChatTemplate::from_gguf(&header(&w), &tk).unwrap();
    assert_eq!(t.source(), &TemplateSource::BuiltIn("chatml"));
    let out = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );

    let mut w = writer();
    w.add(
        keys::TOKENIZER_CHAT_TEMPLATE,
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let t = ChatTemplate::from_gguf(&header(&w), &tk).unwrap();
    assert_eq!(t.source(), &TemplateSource::File);
    assert_eq!(
        t.render(&[ChatMessage::new("user", "x")], false).unwrap(),
        "<bos>x"
    );
}
