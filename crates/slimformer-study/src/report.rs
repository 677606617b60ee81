//! The comparison report: `report.json`, `report.csv`, `report.md`, the charts (SVG
//! and PNG), and one self-contained `report.html` with the tables and charts inline.

use crate::compare::{measured_shapes, Measurement, ModelOutcome};
use slimformer::io::write_atomic;
use slimformer::Result;
use std::path::Path;

fn latency(m: &Measurement, shape: &str) -> Option<(f64, f64)> {
    m.latency
        .iter()
        .find(|b| b.shape == shape)
        .map(|b| (b.median_ms, b.p95_ms))
}

fn metric(m: &Measurement, k: &str) -> Option<f64> {
    m.metrics.as_ref().and_then(|v| v.get(k).copied())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(outcomes: &[ModelOutcome]) -> String {
    let shapes = measured_shapes(outcomes.iter().filter_map(|o| o.measurement.as_ref()));
    let mut header = vec![
        "model",
        "path",
        "family",
        "hidden_size",
        "layers",
        "params_total",
        "params_embeddings",
        "params_encoder",
        "params_heads",
        "size_bytes",
        "quantization",
        "load_ms",
        "peak_rss_mib",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for s in &shapes {
        header.push(format!("p50_ms_{s}"));
        header.push(format!("p95_ms_{s}"));
    }
    for k in [
        "throughput_texts_per_s",
        "accuracy",
        "macro_f1",
        "mcc",
        "error",
    ] {
        header.push(k.into());
    }
    let mut out = header.join(",") + "\n";
    for o in outcomes {
        let path = o.path.display().to_string();
        let row: Vec<String> = match &o.measurement {
            Some(m) => {
                let mut r = vec![
                    m.model.clone(),
                    path,
                    m.family.clone(),
                    m.hidden_size.to_string(),
                    m.layers.map_or(String::new(), |l| l.to_string()),
                    m.params.total.to_string(),
                    m.params.embeddings.to_string(),
                    m.params.encoder.to_string(),
                    m.params.heads.to_string(),
                    m.size_bytes.to_string(),
                    m.quantization.clone().unwrap_or_default(),
                    format!("{:.1}", m.load_ms),
                    m.peak_rss_mib.map_or(String::new(), |v| format!("{v:.1}")),
                ];
                for s in &shapes {
                    let l = latency(m, s);
                    r.push(l.map_or(String::new(), |v| format!("{:.3}", v.0)));
                    r.push(l.map_or(String::new(), |v| format!("{:.3}", v.1)));
                }
                r.push(format!("{:.1}", m.throughput_texts_per_s));
                for k in ["accuracy", "macro_f1", "mcc"] {
                    r.push(metric(m, k).map_or(String::new(), |v| format!("{v:.6}")));
                }
                r.push(String::new());
                r
            }
            None => {
                let mut r = vec![String::new(); header.len()];
                r[0] = o
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                r[1] = path;
                *r.last_mut().expect("columns") = o.error.clone().unwrap_or_default();
                r
            }
        };
        out += &(row
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
            + "\n");
    }
    out
}

fn markdown(outcomes: &[ModelOutcome], eval: &Path) -> String {
    let mut md = String::from("# Model comparison\n\n");
    md += &format!(
        "Eval data: `{}`. Latency: median (p95) ms of the encoder's forward pass on synthetic \
         inputs; throughput: eval texts per second in batches of 32. Each model was measured \
         in a process of its own (peak memory is its own).\n\n",
        eval.display()
    );
    let shapes = measured_shapes(outcomes.iter().filter_map(|o| o.measurement.as_ref()));
    let shape_columns: String = shapes.iter().map(|s| format!(" {s} ms |")).collect();
    md += &format!(
        "| model | family | params (emb / enc / heads) | MB | load ms | peak MiB |{shape_columns} \
         texts/s | accuracy | macro-F1 | MCC |\n"
    );
    md += &"|---".repeat(10 + shapes.len());
    md += "|\n";
    let measured: Vec<Measurement> = outcomes
        .iter()
        .filter_map(|o| o.measurement.clone())
        .collect();
    let mut labels = crate::compare::model_labels(&measured).into_iter();
    for o in outcomes {
        match &o.measurement {
            Some(m) => {
                let label = labels.next().unwrap_or_else(|| m.model.clone());
                let lat = |s| latency(m, s).map_or("-".into(), |(a, b)| format!("{a:.1} ({b:.1})"));
                let q = m
                    .quantization
                    .as_deref()
                    .map(|q| format!(", {q}"))
                    .unwrap_or_default();
                let latencies: String = shapes.iter().map(|s| format!(" {} |", lat(s))).collect();
                md += &format!(
                    "| {} | {}{q} | {} ({} / {} / {}) | {:.1} | {:.0} | {} |{latencies} {:.1} | {} | {} | {} |\n",
                    label, m.family, m.params.total, m.params.embeddings, m.params.encoder, m.params.heads,
                    m.size_bytes as f64 / 1e6, m.load_ms, opt(m.peak_rss_mib, 0),
                    m.throughput_texts_per_s,
                    opt(metric(m, "accuracy"), 4), opt(metric(m, "macro_f1"), 4), opt(metric(m, "mcc"), 4),
                );
            }
            None => {
                md += &format!(
                    "| {} | failed: {} |{}\n",
                    o.path.display(),
                    o.error
                        .as_deref()
                        .unwrap_or("unknown error")
                        .replace('|', "/"),
                    "|".repeat(8 + shapes.len())
                );
            }
        }
    }
    md
}

fn html(md_table: &str, dir: &Path, plots: &[String]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for line in md_table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        let tag = if rows.is_empty() { "th" } else { "td" };
        rows += "<tr>";
        for c in cells {
            rows += &format!("<{tag}>{}</{tag}>", escape(c.trim()));
        }
        rows += "</tr>\n";
    }
    let intro: String = md_table
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ");
    let mut charts = String::new();
    for p in plots {
        if let Ok(svg) = std::fs::read_to_string(dir.join(format!("{p}.svg"))) {
            charts += &format!("<figure>{svg}<figcaption>{p}</figcaption></figure>\n");
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>slimformer compare</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block}}</style>\
         </head><body><h1>Model comparison</h1><p>{}</p><table>{rows}</table>{charts}</body></html>\n",
        escape(&intro)
    )
}

/// Writes every report file into `dir` (created if needed).
pub fn write_report(dir: &Path, outcomes: &[ModelOutcome], eval: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| slimformer::Error::file(dir, e))?;
    let json = serde_json::json!({"eval": eval, "models": outcomes});
    write_atomic(
        &dir.join("report.json"),
        (serde_json::to_string_pretty(&json).expect("json") + "\n").as_bytes(),
    )?;
    write_atomic(&dir.join("report.csv"), csv(outcomes).as_bytes())?;
    let measured: Vec<Measurement> = outcomes
        .iter()
        .filter_map(|o| o.measurement.clone())
        .collect();
    let plots = crate::plots::write_plots(dir, &measured)?;
    let mut md = markdown(outcomes, eval);
    md += "\n";
    for p in &plots {
        md += &format!("![{p}]({p}.svg)\n");
    }
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    write_atomic(&dir.join("report.html"), html(&md, dir, &plots).as_bytes())?;
    Ok(())
}
