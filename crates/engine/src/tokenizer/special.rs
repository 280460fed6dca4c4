//! Splitting special tokens (control, user-defined, unknown) out of input text before the
//! model's own tokenizer runs, as llama.cpp's `tokenizer_st_partition` does.
//!
//! llama.cpp's order matters for ids: it takes the special tokens longest text first and, for
//! each, cuts every non-overlapping occurrence (left to right) out of every text fragment still
//! unprocessed. This differs from a leftmost-longest scan when special tokens overlap, so it
//! is reproduced as is. To keep it cheap with Gemma's ~6,000 special tokens, a byte trie
//! first finds which special tokens occur in the text at all; only those run the cutting loop.

use std::ops::Range;

/// A piece of the input: raw text still to tokenize, or an already-identified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// Whitespace as C's `isspace` in the "C" locale, which llama.cpp's lstrip/rstrip use.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[derive(Default)]
struct Node {
    /// Sorted by byte for binary search.
    children: Vec<(u8, u32)>,
    /// Rank (position in the longest-first order) of the token ending here.
    rank: Option<u32>,
}

/// A token that is cut out of input text before the model's tokenizer runs.
#[derive(Debug, Clone)]
pub(crate) struct SpecialToken {
    pub id: u32,
    pub text: String,
    /// Eat whitespace before / after it.
    pub lstrip: bool,
    pub rstrip: bool,
    /// Control and unknown tokens are only cut when special-token parsing is on;
    /// user-defined tokens always are (llama.cpp follows HF tokenizers here).
    pub control: bool,
}

/// The special tokens in llama.cpp's processing order.
pub(crate) struct SpecialMatcher {
    /// Longest text first; ties by id for determinism (llama.cpp's `std::sort` leaves them
    /// unspecified, which only matters for overlapping same-length tokens).
    order: Vec<SpecialToken>,
    nodes: Vec<Node>,
}

impl SpecialMatcher {
    pub(crate) fn new(mut specials: Vec<SpecialToken>) -> Self {
        specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let mut nodes = vec![Node::default()];
        for (rank, SpecialToken { text, .. }) in specials.iter().enumerate() {
            let mut at = 0usize;
            for &b in text.as_bytes() {
                at = match nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => nodes[at].children[i].1 as usize,
                    Err(i) => {
                        let new = nodes.len();
                        nodes.push(Node::default());
                        nodes[at].children.insert(i, (b, new as u32));
                        new
                    }
                };
            }
            nodes[at].rank = Some(rank as u32);
        }
        Self {
            order: specials,
            nodes,
        }
    }

    /// Ranks of the special tokens that occur anywhere in `text`, in processing order.
    fn present(&self, text: &[u8]) -> Vec<usize> {
        let mut found = vec![false; self.order.len()];
        for start in 0..text.len() {
            let mut at = 0usize;
            for &b in &text[start..] {
                match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => at = self.nodes[at].children[i].1 as usize,
                    Err(_) => break,
                }
                if let Some(rank) = self.nodes[at].rank {
                    found[rank as usize] = true;
                }
            }
        }
        (0..found.len()).filter(|&r| found[r]).collect()
    }

    /// Cut the special tokens out of `text` (control ones only if `parse_special`).
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let bytes = text.as_bytes();
        let mut fragments = vec![Fragment::Text(0..text.len())];
        for rank in self.present(bytes) {
            let tok = &self.order[rank];
            if tok.control && !parse_special {
                continue;
            }
            let (id, lstrip, rstrip) = (tok.id, tok.lstrip, tok.rstrip);
            let needle = tok.text.as_str();
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for frag in fragments {
                let Fragment::Text(range) = frag else {
                    next.push(frag);
                    continue;
                };
                let mut cur = range;
                loop {
                    let Some(pos) = text[cur.clone()].find(needle).map(|p| p + cur.start) else {
                        if !cur.is_empty() {
                            next.push(Fragment::Text(cur));
                        }
                        break;
                    };
                    let mut left_end = pos;
                    if lstrip {
                        while left_end > cur.start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > cur.start {
                        next.push(Fragment::Text(cur.start..left_end));
                    }
                    next.push(Fragment::Token(id));
                    let mut right = pos + needle.len();
                    if rstrip {
                        while right < cur.end && is_c_space(bytes[right]) {
                            right += 1;
                        }
                    }
                    cur = right..cur.end;
                    if cur.is_empty() {
                        break;
                    }
                }
            }
            fragments = next;
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, text: &str, strip: bool, control: bool) -> SpecialToken {
        SpecialToken {
            id,
            text: text.to_owned(),
            lstrip: strip,
            rstrip: strip,
            control,
        }
    }

    fn matcher(specials: &[(u32, &str)]) -> SpecialMatcher {
        SpecialMatcher::new(
            specials
                .iter()
                .map(|&(id, t)| tok(id, t, false, true))
                .collect(),
        )
    }

    #[test]
    fn cuts_tokens_and_keeps_text_between() {
        let m = matcher(&[(1, "<s>"), (2, "<|im_end|>")]);
        let text = "a<s>b<|im_end|><s>";
        assert_eq!(
            m.partition(text, true),
            vec![
                Fragment::Text(0..1),
                Fragment::Token(1),
                Fragment::Text(4..5),
                Fragment::Token(2),
                Fragment::Token(1),
            ]
        );
    }

    #[test]
    fn longest_token_is_cut_first() {
        // "<a><a>b" with tokens "<a>" and "<a>b": llama.cpp cuts the longer one first,
        // wherever it is, then the shorter one in what is left.
        let m = matcher(&[(1, "<a>"), (2, "<a>b")]);
        assert_eq!(
            m.partition("<a><a>b", true),
            vec![Fragment::Token(1), Fragment::Token(2)]
        );
    }

    #[test]
    fn strip_attributes_eat_neighbouring_spaces() {
        let m = SpecialMatcher::new(vec![tok(7, "<x>", true, false)]);
        assert_eq!(
            m.partition("a  <x>  b", false),
            vec![
                Fragment::Text(0..1),
                Fragment::Token(7),
                Fragment::Text(8..9)
            ]
        );
    }

    #[test]
    fn control_tokens_stay_text_without_parse_special() {
        let m = SpecialMatcher::new(vec![
            tok(1, "<c>", false, true),
            tok(2, "<u>", false, false),
        ]);
        assert_eq!(
            m.partition("<c><u>", false),
            vec![Fragment::Text(0..3), Fragment::Token(2)]
        );
    }
}
