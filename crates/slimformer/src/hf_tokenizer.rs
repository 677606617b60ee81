//! Each family's special tokens, and the tokenizer files of a Hugging Face model
//! folder (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`)
//! that `transformers` reads back.

use crate::io::write_atomic;
use crate::models::Family;
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use tokenizers::Tokenizer;

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// One special token and its (fixed) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialToken {
    pub token: &'static str,
    pub id: u32,
}

/// The special tokens a family's trained tokenizer has, at fixed ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub pad: SpecialToken,
    pub unk: SpecialToken,
    pub cls: SpecialToken,
    pub sep: SpecialToken,
    pub mask: SpecialToken,
    /// Every special token, in id order (id = index).
    pub all: &'static [&'static str],
}

const BERT_SPECIALS: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const ROBERTA_SPECIALS: &[&str] = &["<s>", "<pad>", "</s>", "<unk>", "<mask>"];
const ALBERT_SPECIALS: &[&str] = &["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"];
const XLNET_SPECIALS: &[&str] = &["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"];

/// The special tokens of `family`'s trained tokenizers (pad, unk, cls, sep, mask).
pub fn special_tokens(family: Family) -> SpecialTokens {
    let all = match family {
        Family::Bert | Family::DistilBert => BERT_SPECIALS,
        Family::Roberta => ROBERTA_SPECIALS,
        Family::Albert => ALBERT_SPECIALS,
        Family::XLNet => XLNET_SPECIALS,
    };
    let find = |token: &'static str| SpecialToken {
        token,
        id: all.iter().position(|t| *t == token).expect("special token") as u32,
    };
    match family {
        Family::Bert | Family::DistilBert => SpecialTokens {
            pad: find("[PAD]"),
            unk: find("[UNK]"),
            cls: find("[CLS]"),
            sep: find("[SEP]"),
            mask: find("[MASK]"),
            all,
        },
        Family::Roberta => SpecialTokens {
            pad: find("<pad>"),
            unk: find("<unk>"),
            cls: find("<s>"),
            sep: find("</s>"),
            mask: find("<mask>"),
            all,
        },
        Family::Albert => SpecialTokens {
            pad: find("<pad>"),
            unk: find("<unk>"),
            cls: find("[CLS]"),
            sep: find("[SEP]"),
            mask: find("[MASK]"),
            all,
        },
        Family::XLNet => SpecialTokens {
            pad: find("<pad>"),
            unk: find("<unk>"),
            cls: find("<cls>"),
            sep: find("<sep>"),
            mask: find("<mask>"),
            all,
        },
    }
}

/// Writes `dir/tokenizer.json` (without padding or truncation), `tokenizer_config.json`
/// and `special_tokens_map.json`, each atomically, creating `dir` if needed.
pub fn save_tokenizer(
    tok: &Tokenizer,
    family: Family,
    dir: &Path,
    model_max_length: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut plain = tok.clone();
    plain.with_padding(None);
    plain.with_truncation(None).map_err(tok_err)?;
    let json = plain.to_string(true).map_err(tok_err)?;
    write_atomic(&dir.join(crate::tokenize::TOKENIZER_FILE), json.as_bytes())?;

    let (config, map) = hf_configs(family, model_max_length);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("json") + "\n";
    write_atomic(&dir.join(TOKENIZER_CONFIG_FILE), pretty(&config).as_bytes())?;
    write_atomic(&dir.join(SPECIAL_TOKENS_MAP_FILE), pretty(&map).as_bytes())?;
    Ok(())
}

/// `tokenizer_config.json` and `special_tokens_map.json` for `transformers`.
fn hf_configs(family: Family, model_max_length: usize) -> (Value, Value) {
    let sp = special_tokens(family);
    let mut map = Map::new();
    map.insert("unk_token".into(), sp.unk.token.into());
    map.insert("pad_token".into(), sp.pad.token.into());
    map.insert("cls_token".into(), sp.cls.token.into());
    map.insert("sep_token".into(), sp.sep.token.into());
    map.insert("mask_token".into(), sp.mask.token.into());
    let mut config = Map::new();
    let class = match family {
        Family::Bert => "BertTokenizer",
        Family::DistilBert => "DistilBertTokenizer",
        Family::Roberta => "RobertaTokenizer",
        Family::Albert => "AlbertTokenizer",
        Family::XLNet => "XLNetTokenizer",
    };
    config.insert("tokenizer_class".into(), class.into());
    match family {
        Family::Bert | Family::DistilBert => {
            config.insert("do_lower_case".into(), true.into());
            config.insert("tokenize_chinese_chars".into(), true.into());
            config.insert("strip_accents".into(), Value::Null);
        }
        Family::Roberta => {
            map.insert("bos_token".into(), "<s>".into());
            map.insert("eos_token".into(), "</s>".into());
            config.insert("add_prefix_space".into(), false.into());
            config.insert("trim_offsets".into(), true.into());
            config.insert("errors".into(), "replace".into());
        }
        Family::Albert => {
            map.insert("bos_token".into(), "[CLS]".into());
            map.insert("eos_token".into(), "[SEP]".into());
            config.insert("do_lower_case".into(), true.into());
            config.insert("keep_accents".into(), false.into());
            config.insert("remove_space".into(), true.into());
        }
        Family::XLNet => {
            map.insert("bos_token".into(), "<s>".into());
            map.insert("eos_token".into(), "</s>".into());
            config.insert("do_lower_case".into(), false.into());
            config.insert("keep_accents".into(), false.into());
            config.insert("remove_space".into(), true.into());
            // Otherwise transformers adds <eop> and <eod>, outside the model's vocabulary.
            config.insert("additional_special_tokens".into(), json!([]));
        }
    }
    if matches!(family, Family::Albert | Family::XLNet) {
        // The models take segment ids (XLNet: 2 on <cls>, 3 on padding); transformers'
        // classes default to not returning them.
        config.insert(
            "model_input_names".into(),
            json!(["input_ids", "token_type_ids", "attention_mask"]),
        );
    }
    let padding_side = if family == Family::XLNet {
        "left"
    } else {
        "right"
    };
    config.insert("model_max_length".into(), model_max_length.into());
    config.insert("padding_side".into(), padding_side.into());
    config.insert("truncation_side".into(), "right".into());
    config.insert("clean_up_tokenization_spaces".into(), false.into());
    let decoder: Map<String, Value> = sp
        .all
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                i.to_string(),
                json!({
                    "content": t, "lstrip": false, "normalized": false,
                    "rstrip": false, "single_word": false, "special": true
                }),
            )
        })
        .collect();
    config.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (k, v) in &map {
        config.insert(k.clone(), v.clone());
    }
    (Value::Object(config), Value::Object(map))
}
