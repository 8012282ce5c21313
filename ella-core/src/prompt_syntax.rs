//! AUTOMATIC1111's prompt-weighting syntax — `(word)`, `(word:1.3)`, `[word]`, the escapes
//! `\(` `\)` `\[` `\]` `\\`, and `BREAK` — read as A1111 reads it for CLIP ([`parse`]) and
//! removed as ComfyUI-ELLA removes it for T5 ([`strip_for_t5`]). The rules and every edge
//! case are in `docs/prompt-weighting-reference.md`; its section numbers are cited below.

use std::sync::LazyLock;

use regex::Regex;

use crate::error::{Error, Result};

/// How a text encoder reads the weight syntax of a prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromptSyntax {
    /// As the community's tools do: CLIP applies the weights and encodes long prompts in
    /// 75-token chunks (A1111); T5 reads the text with the syntax removed (ComfyUI-ELLA).
    #[default]
    A1111,
    /// The text as it is: CLIP truncates to 77 tokens (diffusers), T5 reads brackets and
    /// weights as words (ELLA's own `inference.py`).
    Literal,
}

/// A1111's `BREAK` marker: a segment with this text and exactly this weight starts a new
/// chunk (§3).
pub const BREAK: (&str, f64) = ("BREAK", -1.0);

/// A1111's `round_bracket_multiplier` and `square_bracket_multiplier` (§2.3: `1/1.1` is
/// multiplied, never divided by).
const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;

/// A1111's `re_attention`, one token of the syntax per match, in its order of preference
/// (§2.1). A weight close is `:NUMBER)` with no spaces; digits are ASCII here (A1111's `\d`
/// also takes other scripts' digits).
static ATTENTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\[()\[\]\\]|\\|\(|\[|:([+-]?[.0-9]+)\)|\)|\]|[^\\()\[\]:]+|:")
        .expect("a valid pattern")
});

/// `BREAK` as a whole word with the whitespace around it (§3).
static BREAK_WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s*\bBREAK\b\s*").expect("a valid pattern"));

/// A1111's `parse_prompt_attention`: the prompt as `(text, weight)` segments, neighbours of
/// equal weight merged, with [`BREAK`] markers between chunks (§2). Weights stay `f64` as
/// A1111 computes them; they reach the states as `f32`. A weight that is no number
/// (`(a:1.2.3)`) is an error, as in A1111.
pub fn parse(prompt: &str) -> Result<Vec<(String, f64)>> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut rounds: Vec<usize> = Vec::new();
    let mut squares: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, by: f64| {
        res[from..].iter_mut().for_each(|(_, w)| *w *= by);
    };
    for m in ATTENTION.captures_iter(prompt) {
        let text = &m[0];
        match (text, m.get(1)) {
            (escaped, _) if escaped.starts_with('\\') => res.push((escaped[1..].into(), 1.0)),
            ("(", _) => rounds.push(res.len()),
            ("[", _) => squares.push(res.len()),
            (_, Some(number)) if !rounds.is_empty() => {
                let weight: f64 = number.as_str().parse().map_err(|_| {
                    Error::InvalidInput(format!(
                        "`{text}` in the prompt: `{}` is not a weight",
                        number.as_str()
                    ))
                })?;
                let from = rounds.pop().expect("not empty");
                multiply(&mut res, from, weight);
            }
            (")", _) if !rounds.is_empty() => {
                let from = rounds.pop().expect("not empty");
                multiply(&mut res, from, ROUND);
            }
            ("]", _) if !squares.is_empty() => {
                let from = squares.pop().expect("not empty");
                multiply(&mut res, from, SQUARE);
            }
            _ => {
                for (i, piece) in BREAK_WORD.split(text).enumerate() {
                    if i > 0 {
                        res.push((BREAK.0.into(), BREAK.1));
                    }
                    res.push((piece.into(), 1.0));
                }
            }
        }
    }
    // Unclosed brackets weigh up to the end, outermost first (§2.2).
    for from in rounds {
        multiply(&mut res, from, ROUND);
    }
    for from in squares {
        multiply(&mut res, from, SQUARE);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some((last, w)) if *w == weight => last.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    Ok(merged)
}

/// Placeholders for the escaped parentheses while the syntax is removed (§8).
const CLOSE: &str = "\0\u{1}";
const OPEN: &str = "\0\u{2}";

/// The text ComfyUI-ELLA gives T5 (`utils.remove_weights`, §8): every top-level `( … )`
/// group replaced by its content, which loses everything from its last `:` on, recursively;
/// `\(` and `\)` become plain parentheses. `[ ]`, `BREAK` and other escapes stay as written.
pub fn strip_for_t5(prompt: &str) -> String {
    let protected = prompt.replace("\\)", CLOSE).replace("\\(", OPEN);
    strip_groups(&protected)
        .replace(CLOSE, ")")
        .replace(OPEN, "(")
}

/// Steps 2 and 3 of §8 on one text.
fn strip_groups(text: &str) -> String {
    top_level_pieces(text)
        .into_iter()
        .map(
            |piece| match piece.strip_prefix('(').and_then(|p| p.strip_suffix(')')) {
                Some(inner) => {
                    let inner = match inner.rfind(':') {
                        Some(colon) if colon > 0 => &inner[..colon],
                        _ => inner,
                    };
                    strip_groups(inner)
                }
                _ => piece,
            },
        )
        .collect()
}

/// ComfyUI's `parse_parentheses`: the text cut into plain runs and top-level `( … )` groups;
/// a stray `)` drives the depth below zero, after which parentheses are text (§8 step 2).
fn top_level_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut depth = 0i64;
    for c in text.chars() {
        match c {
            '(' => {
                if depth == 0 {
                    if !current.is_empty() {
                        pieces.push(std::mem::take(&mut current));
                    }
                    current.push('(');
                } else {
                    current.push('(');
                }
                depth += 1;
            }
            ')' => {
                depth -= 1;
                current.push(')');
                if depth == 0 {
                    pieces.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_multiply_and_merge() {
        let parsed = parse("a (red:1.5) [[x]] ([hat])").unwrap();
        assert_eq!(parsed[0], ("a ".into(), 1.0));
        assert_eq!(parsed[1], ("red".into(), 1.5));
        assert_eq!(parsed[3], ("x".into(), SQUARE * SQUARE));
        // ([hat]) is (1/1.1)·1.1 == 1.0 exactly, merged into its neighbour.
        assert_eq!(parsed[4], (" hat".into(), 1.0));
    }

    #[test]
    fn an_invalid_weight_is_an_error() {
        assert!(parse("(a:1.2.3)").is_err());
        assert!(parse("(a:.)").is_err());
    }
}
