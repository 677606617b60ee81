//! Where texts come from: repeated `--text`, `--input FILE` (streamed line by
//! line) or standard input; with `--pairs`, two tab-separated fields each.

use anyhow::{bail, Context};
use slimformer::tokenize::TextInput;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct InputArgs {
    /// A text to process (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// A file with one text per line.
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    pub input: Option<PathBuf>,
    /// Each text is a pair: two fields separated by a tab.
    #[arg(long)]
    pub pairs: bool,
}

/// One input line: the text as given, and either the parsed input or why it is unusable.
pub struct Line {
    pub text: String,
    pub input: Result<TextInput, String>,
}

/// Streams the inputs, so memory stays bounded however long the file.
pub fn lines(args: &InputArgs) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Line>>>> {
    let pairs = args.pairs;
    if !args.texts.is_empty() {
        let texts = args.texts.clone();
        return Ok(Box::new(
            texts
                .into_iter()
                .map(move |t| Ok(parse(t.into_bytes(), pairs, None))),
        ));
    }
    let (reader, source): (Box<dyn Read>, String) = match &args.input {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            (Box::new(file), path.display().to_string())
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no input: give --text TEXT, --input FILE, or texts on standard input");
            }
            (Box::new(std::io::stdin()), "standard input".into())
        }
    };
    let mut reader = BufReader::new(reader);
    let mut number = 0usize;
    Ok(Box::new(std::iter::from_fn(move || {
        let mut bytes = Vec::new();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => None,
            Ok(_) => {
                number += 1;
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(Ok(parse(bytes, pairs, Some((&source, number)))))
            }
            Err(e) => Some(Err(anyhow::anyhow!(
                "{source}: read failed after line {number}: {e}"
            ))),
        }
    })))
}

fn parse(bytes: Vec<u8>, pairs: bool, place: Option<(&str, usize)>) -> Line {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let where_ = place
                .map(|(s, n)| format!("{s} line {n}: "))
                .unwrap_or_default();
            return Line {
                text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                input: Err(format!("{where_}not valid UTF-8")),
            };
        }
    };
    let input = if pairs {
        match text.split_once('\t') {
            Some((a, b)) => Ok(TextInput::Pair(a.to_string(), b.to_string())),
            None => Err("--pairs: expected two fields separated by a tab".to_string()),
        }
    } else {
        Ok(TextInput::Single(text.clone()))
    };
    Line { text, input }
}
