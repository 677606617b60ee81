//! Token-labelled data for token classification: sentences as words, one tag per
//! word. Formats, chosen by the file's extension:
//!
//! - CoNLL (`.conll`, `.iob`, `.bio`, `.txt`, `.tsv`): one word per line, the word in
//!   the first field and its tag in the last (tab- or space-separated, so CoNLL-2003's
//!   `word POS chunk NER` lines work), a blank line between sentences,
//!   `-DOCSTART-` lines skipped;
//! - CoNLL-U (`.conllu`): Universal Dependencies treebanks, the word from FORM and
//!   the tag from UPOS; comments, multiword-token ranges and empty nodes skipped;
//! - JSON Lines (`.jsonl`, `.json`): `{"tokens": [...], "tags": [...]}` per line.
//!
//! Every error names the file and the line at fault.

use slimformer::{Error, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// One sentence: its words, their tags, the line it started on (1-based) and the
/// line of each word (all the same in JSON Lines).
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub line: usize,
    pub word_lines: Vec<usize>,
}

fn at(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::file(path, format!("line {line}: {message}"))
}

/// Reads a token-labelled data file.
pub fn read_tagged(path: &Path) -> Result<Vec<TaggedSentence>> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "missing"),
        _ => Error::file(path, e),
    })?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let sentences = match ext.as_str() {
        "conll" | "iob" | "bio" | "txt" | "tsv" => read_conll(path, &bytes, Columns::FirstLast)?,
        "conllu" => read_conll(path, &bytes, Columns::Conllu)?,
        "jsonl" | "json" => read_jsonl(path, &bytes)?,
        _ => {
            return Err(Error::file(
                path,
                "unknown data format for token classification: the file name must end in \
                 .conll, .iob, .bio, .txt, .tsv (word and tag per line), .conllu or .jsonl",
            ))
        }
    };
    if sentences.is_empty() {
        return Err(Error::file(path, "no sentences"));
    }
    check_scheme(path, &sentences)?;
    Ok(sentences)
}

/// Where the word and the tag are on a line.
#[derive(Clone, Copy)]
enum Columns {
    /// The first field and the last.
    FirstLast,
    /// CoNLL-U: FORM (2nd of 10) and UPOS (4th).
    Conllu,
}

fn utf8<'a>(path: &Path, line: usize, raw: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(raw).map_err(|_| at(path, line, "not valid UTF-8 (save the file as UTF-8)"))
}

fn read_conll(path: &Path, bytes: &[u8], columns: Columns) -> Result<Vec<TaggedSentence>> {
    let mut sentences = Vec::new();
    let mut current: Option<TaggedSentence> = None;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = utf8(path, line, raw)?.trim_end_matches('\r');
        if text.trim().is_empty() {
            sentences.extend(current.take());
            continue;
        }
        let word_and_tag = match columns {
            Columns::FirstLast => conll_fields(path, line, text)?,
            Columns::Conllu => match conllu_fields(path, line, text)? {
                Some(fields) => fields,
                None => continue,
            },
        };
        let Some((word, tag)) = word_and_tag else {
            continue;
        };
        let sentence = current.get_or_insert_with(|| TaggedSentence {
            words: Vec::new(),
            tags: Vec::new(),
            line,
            word_lines: Vec::new(),
        });
        sentence.word_lines.push(line);
        sentence.words.push(word.to_string());
        sentence.tags.push(tag.to_string());
    }
    sentences.extend(current);
    Ok(sentences)
}

/// The word and the tag of a CoNLL line; `None` for a `-DOCSTART-` line.
fn conll_fields<'a>(path: &Path, line: usize, text: &'a str) -> Result<Option<(&'a str, &'a str)>> {
    let fields: Vec<&str> = if text.contains('\t') {
        text.split('\t').map(str::trim).collect()
    } else {
        text.split_whitespace().collect()
    };
    if fields[0] == "-DOCSTART-" {
        return Ok(None);
    }
    if fields.len() < 2 || fields.iter().any(|f| f.is_empty()) {
        return Err(at(
            path,
            line,
            format!(
                "expected a word and its tag separated by a tab or spaces, found {text:?} \
                 (sentences are separated by blank lines)"
            ),
        ));
    }
    Ok(Some((fields[0], fields[fields.len() - 1])))
}

/// FORM and UPOS of a CoNLL-U word line; `Ok(None)` for comments, multiword-token
/// ranges (`3-4`) and empty nodes (`5.1`), which carry no tag of their own.
fn conllu_fields<'a>(
    path: &Path,
    line: usize,
    text: &'a str,
) -> Result<Option<Option<(&'a str, &'a str)>>> {
    if text.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = text.split('\t').collect();
    if fields.len() != 10 {
        return Err(at(
            path,
            line,
            format!(
                "a CoNLL-U word line has 10 tab-separated fields, this one {}",
                fields.len()
            ),
        ));
    }
    if fields[0].contains(['-', '.']) {
        return Ok(None);
    }
    if fields[1].is_empty() || fields[3].is_empty() || fields[3] == "_" {
        return Err(at(path, line, "empty FORM or UPOS"));
    }
    Ok(Some(Some((fields[1], fields[3]))))
}

fn read_jsonl(path: &Path, bytes: &[u8]) -> Result<Vec<TaggedSentence>> {
    let mut sentences = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = utf8(path, line, raw)?;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| at(path, line, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| at(path, line, "expected a JSON object"))?;
        let strings = |key: &str| -> Result<Vec<String>> {
            let keys = || {
                obj.keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let list = obj
                .get(key)
                .ok_or_else(|| at(path, line, format!("no key {key:?} (keys: {})", keys())))?
                .as_array()
                .ok_or_else(|| at(path, line, format!("{key:?} is not a list")))?;
            list.iter()
                .enumerate()
                .map(|(j, v)| match v.as_str() {
                    Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                    Some(_) => Err(at(path, line, format!("{key:?}[{j}] is empty"))),
                    None => Err(at(path, line, format!("{key:?}[{j}] is not a string"))),
                })
                .collect()
        };
        let words = strings("tokens")?;
        let tags = strings("tags")?;
        if words.len() != tags.len() {
            return Err(at(
                path,
                line,
                format!("{} tokens but {} tags", words.len(), tags.len()),
            ));
        }
        if words.is_empty() {
            return Err(at(path, line, "no tokens"));
        }
        let word_lines = vec![line; words.len()];
        sentences.push(TaggedSentence {
            words,
            tags,
            line,
            word_lines,
        });
    }
    Ok(sentences)
}

/// Whether a tag names a part of an entity span (`B-PER`, `I-LOC`, IOBES's `E-`
/// and `S-`), as opposed to a plain tag (`NOUN`) or `O`.
fn is_span_tag(tag: &str) -> bool {
    matches!(tag.split_once('-'), Some((p, t)) if matches!(p, "B" | "I" | "E" | "S") && !t.is_empty())
}

/// Whether the tag set is an entity-span scheme (BIO, IOB2, IOBES): then every tag is
/// `O` or a span tag, and entity-level scores apply.
pub fn is_span_scheme<'a>(tags: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any_span = false;
    for tag in tags {
        if is_span_tag(tag) {
            any_span = true;
        } else if tag != "O" {
            return false;
        }
    }
    any_span
}

/// A file that uses span tags uses only them and `O`: a stray `PER` among `B-PER`s is
/// a typo that would silently become its own class.
fn check_scheme(path: &Path, sentences: &[TaggedSentence]) -> Result<()> {
    let spans = sentences
        .iter()
        .flat_map(|s| &s.tags)
        .any(|t| is_span_tag(t));
    if !spans {
        return Ok(());
    }
    for sentence in sentences {
        for (k, tag) in sentence.tags.iter().enumerate() {
            if tag != "O" && !is_span_tag(tag) {
                return Err(at(
                    path,
                    sentence.word_lines[k],
                    format!(
                        "tag {tag:?} of {:?} is neither O nor B-/I-TYPE, while the file uses \
                         entity spans",
                        sentence.words[k]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The tag set: the model's own labels when its `id2label` names exactly the tags of
/// the data (in the model's order), else the data's tags sorted (as transformers'
/// token-classification example does).
pub fn tag_names(train: &[TaggedSentence], model_labels: Option<&[String]>) -> Vec<String> {
    let set: BTreeSet<&str> = train
        .iter()
        .flat_map(|s| &s.tags)
        .map(|t| t.as_str())
        .collect();
    if let Some(own) = model_labels {
        let own_set: BTreeSet<&str> = own.iter().map(|s| s.as_str()).collect();
        if own_set == set && own.len() == own_set.len() {
            return own.to_vec();
        }
    }
    set.into_iter().map(String::from).collect()
}

/// Each sentence's tag ids; a tag outside `names` is an error naming the file and line.
pub fn tag_ids(
    path: &Path,
    sentences: &[TaggedSentence],
    names: &[String],
) -> Result<Vec<Vec<u32>>> {
    sentences
        .iter()
        .map(|s| {
            s.tags
                .iter()
                .zip(&s.word_lines)
                .map(|(t, &line)| {
                    names
                        .iter()
                        .position(|n| n == t)
                        .map(|i| i as u32)
                        .ok_or_else(|| {
                            at(
                                path,
                                line,
                                format!("unknown tag {t:?}: the tags are {}", names.join(", ")),
                            )
                        })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("slimformer-tagged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_conll_2003_lines_and_tab_separated_pairs() {
        let path = write(
            "a.conll",
            "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter\tB-PER\nBlackburn\tI-PER\n",
        );
        let s = read_tagged(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].words, ["EU", "rejects"]);
        assert_eq!(s[0].tags, ["B-ORG", "O"]);
        assert_eq!(s[0].line, 3);
        assert_eq!(s[1].tags, ["B-PER", "I-PER"]);
    }

    #[test]
    fn reads_conllu_upos_skipping_ranges_and_comments() {
        let path = write(
            "a.conllu",
            "# text = Don't go\n1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tDo\tdo\tAUX\t_\t_\t3\taux\t_\t_\n2\tn't\tnot\tPART\t_\t_\t3\tadvmod\t_\t_\n3\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n",
        );
        let s = read_tagged(&path).unwrap();
        assert_eq!(s[0].words, ["Do", "n't", "go"]);
        assert_eq!(s[0].tags, ["AUX", "PART", "VERB"]);
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let path = write("bad.conll", "EU B-ORG\nrejects\n");
        let e = read_tagged(&path).unwrap_err().to_string();
        assert!(e.contains("bad.conll") && e.contains("line 2"), "{e}");
        let path = write("stray.conll", "EU B-ORG\nrejects PER\n");
        let e = read_tagged(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"PER\""), "{e}");
        let path = write(
            "bad.jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n",
        );
        let e = read_tagged(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("2 tokens but 1 tags"),
            "{e}"
        );
    }
}
