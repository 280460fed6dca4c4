//! SentencePiece-style BPE ("llama" vocabularies: Llama 2, Gemma, Mistral v1, TinyLlama), as
//! llama.cpp's `llm_tokenizer_spm` does it.
//!
//! Why not the `tokenizers` crate here: llama.cpp does not use a merge table for these files.
//! It starts from one symbol per UTF-8 character and repeatedly merges the adjacent pair whose
//! concatenation is a vocabulary token with the highest score (ties: leftmost pair), until no
//! adjacent pair forms a token. A merge list derived from scores (HF's LlamaConverter) only
//! approximates that (it ranks pairs, not results, and omits splits whose halves are not
//! tokens), and deriving one for Gemma's 262,144 tokens costs seconds at load. The algorithm
//! itself is thirty lines, so it is reproduced directly, which is what "ids equal llama.cpp's"
//! needs.
//!
//! Cost: O(n log n) in the characters of a text piece; no allocation per candidate pair,
//! since symbols are contiguous spans of the input and a pair is a slice of it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// One symbol of the doubly linked list, a span `start..start + len` of the text.
/// `len == 0` marks a symbol merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and its right neighbour `right`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the pair when queued; a mismatch later means one side changed.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// The vocabulary view the algorithm needs.
pub(crate) struct SpmVocab<'a> {
    pub token_to_id: &'a HashMap<String, u32>,
    pub scores: &'a [f32],
    /// Token for each byte when a character has no token: `<0xNN>` if present, else the
    /// one-byte token text, else the unknown token.
    pub byte_tokens: &'a [Option<u32>; 256],
}

/// Tokenize one text fragment (spaces already escaped to U+2581), appending ids to `out`.
pub(crate) fn tokenize(text: &str, vocab: &SpmVocab<'_>, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let mut start = 0;
    for (i, c) in text.chars().enumerate() {
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
        start += len;
    }
    if let Some(last) = symbols.last_mut() {
        last.next = None;
    }

    let mut queue = BinaryHeap::new();
    let try_add =
        |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
            let (l, r) = (symbols[left], symbols[right]);
            let piece = &text[l.start..r.start + r.len];
            if let Some(&id) = vocab.token_to_id.get(piece) {
                queue.push(Bigram {
                    left,
                    right,
                    score: vocab.scores.get(id as usize).copied().unwrap_or(0.0),
                    size: piece.len(),
                });
            }
        };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, i - 1, i);
    }

    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
        // Stale: one side was merged away or grew since this pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        symbols[bigram.left].len += r.len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(bigram.left);
        }
        if let Some(p) = symbols[bigram.left].prev {
            try_add(&mut queue, &symbols, p, bigram.left);
        }
        if let Some(n) = symbols[bigram.left].next {
            try_add(&mut queue, &symbols, bigram.left, n);
        }
    }

    let mut cursor = Some(0);
    while let Some(i) = cursor {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.token_to_id.get(piece) {
            Some(&id) => out.push(id),
            // Only a single character can be left without a token (every merge formed one):
            // spell it byte by byte.
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_tokens[b as usize])),
        }
        cursor = s.next;
    }
}
