//! The report's charts, drawn once for SVG and once for PNG with plotters, text in
//! an embedded font (DejaVu Sans) so no system font is needed.

use crate::compare::Measurement;
use plotters::coord::Shift;
use plotters::prelude::*;
use slimformer::{Error, Result};
use std::path::Path;

static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const SIZE: (u32, u32) = (800, 500);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::file(path, format!("cannot draw the chart: {e}"))
}

/// One point per model that has an accuracy: (label, x, accuracy).
fn scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    points: &[(String, f64, f64)],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (x_max, (y_min, y_max)) = if points.is_empty() {
        (1.0, (0.0, 1.0))
    } else {
        let xm = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2;
        let lo = points.iter().map(|p| p.2).fold(1.0, f64::min);
        let hi = points.iter().map(|p| p.2).fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.2).max(0.01);
        (xm.max(1e-6), ((lo - pad).max(0.0), (hi + pad).min(1.0)))
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("accuracy")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let mut placed: Vec<LabelBox> = Vec::new();
    for (i, (label, x, y)) in points.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Circle::new((*x, *y), 6, color.filled())))
            .map_err(|e| e.to_string())?;
        let at = chart.backend_coord(&(*x, *y));
        let offset = free_offset(at, label, &placed);
        placed.push(LabelBox::new((at.0 + offset.0, at.1 + offset.1), label));
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, *y))
                    + Text::new(
                        label.clone(),
                        offset,
                        ("sans-serif", 13).into_font().color(&BLACK),
                    ),
            ))
            .map_err(|e| e.to_string())?;
    }
    if points.is_empty() {
        root.draw(&Text::new(
            "no model has an accuracy on the eval data",
            (200, 250),
            ("sans-serif", 16),
        ))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Where a label sits, in pixels (its top-left corner and an estimate of its size
/// at 13 px).
#[derive(Debug, Clone, Copy)]
struct LabelBox {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
}

impl LabelBox {
    fn new((x, y): (i32, i32), label: &str) -> Self {
        Self {
            x,
            y,
            w: 7 * label.chars().count() as i32,
            h: 14,
        }
    }

    fn overlaps(&self, other: &LabelBox) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

/// The first offset from a point (right of it, then further above or below)
/// where its label covers no label drawn before: two models at nearly the same
/// place would otherwise print their names over each other.
fn free_offset(at: (i32, i32), label: &str, placed: &[LabelBox]) -> (i32, i32) {
    const CANDIDATES: [(i32, i32); 9] = [
        (8, -7),
        (8, 9),
        (8, -23),
        (8, 25),
        (8, -39),
        (8, 41),
        (8, -55),
        (8, 57),
        (8, -71),
    ];
    CANDIDATES
        .into_iter()
        .find(|&(dx, dy)| {
            let candidate = LabelBox::new((at.0 + dx, at.1 + dy), label);
            placed.iter().all(|p| !p.overlaps(&candidate))
        })
        .unwrap_or(CANDIDATES[0])
}

/// Stacked bars: embeddings, encoder, heads (millions of parameters).
fn params_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    models: &[&Measurement],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = models.len().max(1);
    let top = models
        .iter()
        .map(|m| m.params.total as f64 / 1e6)
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption("parameters by part (millions)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top.max(1e-6))
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = models.iter().map(|m| m.model.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("parameters (M)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    type Part = (&'static str, fn(&Measurement) -> usize);
    let parts: [Part; 3] = [
        ("embeddings", |m| m.params.embeddings),
        ("encoder", |m| m.params.encoder),
        ("heads", |m| m.params.heads),
    ];
    for (k, (name, get)) in parts.iter().enumerate() {
        let color = COLORS[k];
        chart
            .draw_series(models.iter().enumerate().map(|(i, m)| {
                let below: usize = parts[..k].iter().map(|(_, g)| g(m)).sum();
                let (lo, hi) = (below as f64 / 1e6, (below + get(m)) as f64 / 1e6);
                Rectangle::new([(i as f64 - 0.3, lo), (i as f64 + 0.3, hi)], color.filled())
            }))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

enum Chart<'a> {
    Scatter {
        title: &'static str,
        x_label: String,
        points: Vec<(String, f64, f64)>,
    },
    Params(Vec<&'a Measurement>),
}

impl Chart<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        match self {
            Chart::Scatter {
                title,
                x_label,
                points,
            } => scatter(root, title, x_label, points),
            Chart::Params(models) => params_bars(root, models),
        }
    }
}

/// Writes `NAME.svg` and `NAME.png` for each chart into `dir`; returns the names.
pub fn write_plots(dir: &Path, models: &[Measurement]) -> Result<Vec<String>> {
    register_font();
    let labels = crate::compare::model_labels(models);
    let labelled = || models.iter().zip(&labels);
    let acc = |m: &Measurement| m.metrics.as_ref().and_then(|v| v.get("accuracy").copied());
    // One shape for every point: the longest single sequence all models were timed at.
    let shapes = crate::compare::measured_shapes(models);
    let shape = shapes
        .iter()
        .filter(|s| {
            s.starts_with("1x")
                && models
                    .iter()
                    .all(|m| m.latency.iter().any(|b| &b.shape == *s))
        })
        .max_by_key(|s| s[2..].parse::<usize>().unwrap_or(0))
        .or(shapes.first())
        .cloned()
        .unwrap_or_default();
    let lat = |m: &Measurement| {
        m.latency
            .iter()
            .find(|b| b.shape == shape)
            .map(|b| b.median_ms)
    };
    let charts = [
        (
            "accuracy_vs_latency",
            Chart::Scatter {
                title: "accuracy vs latency",
                x_label: format!("median ms at {shape}"),
                points: labelled()
                    .filter_map(|(m, label)| Some((label.clone(), lat(m)?, acc(m)?)))
                    .collect(),
            },
        ),
        (
            "accuracy_vs_size",
            Chart::Scatter {
                title: "accuracy vs size",
                x_label: "MB on disk".into(),
                points: labelled()
                    .filter_map(|(m, label)| {
                        Some((label.clone(), m.size_bytes as f64 / 1e6, acc(m)?))
                    })
                    .collect(),
            },
        ),
        ("parameters", Chart::Params(models.iter().collect())),
    ];
    let mut names = Vec::new();
    for (name, chart) in &charts {
        let svg_path = dir.join(format!("{name}.svg"));
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
            chart.draw(&root).map_err(err(&svg_path))?;
        }
        slimformer::io::write_atomic(&svg_path, text.as_bytes())?;
        let png_path = dir.join(format!("{name}.png"));
        slimformer::io::replace_file(&png_path, |tmp| {
            // The bitmap backend picks the format from the extension.
            let tmp_png = tmp.with_extension("png");
            {
                let root = BitMapBackend::new(&tmp_png, SIZE).into_drawing_area();
                chart.draw(&root).map_err(err(&png_path))?;
            }
            std::fs::rename(&tmp_png, tmp).map_err(|e| Error::file(&png_path, e))
        })?;
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_tell_models_apart_and_do_not_overlap() {
        let measured = |path: &str| -> Measurement {
            serde_json::from_value(serde_json::json!({
                "model": "slimformer", "path": path, "family": "bert", "hidden_size": 8,
                "layers": 2, "params": {"total": 1, "embeddings": 1, "encoder": 0, "heads": 0},
                "size_bytes": 1, "quantization": null, "load_ms": 1.0, "peak_rss_mib": null,
                "latency": [], "throughput_texts_per_s": 1.0, "eval_texts": 1,
                "metrics": null, "threads": 1
            }))
            .unwrap()
        };
        let models = [
            measured("/no/such/runs/minilm/slimformer"),
            measured("/no/such/runs/student/slimformer"),
            measured("/no/such/runs/student-int8"),
        ];
        assert_eq!(
            crate::compare::model_labels(&models),
            ["minilm/slimformer", "student/slimformer", "student-int8"]
        );
        let first = LabelBox::new((108, 93), "minilm/slimformer");
        let offset = free_offset((101, 100), "student/slimformer", &[first]);
        let second = LabelBox::new((101 + offset.0, 100 + offset.1), "student/slimformer");
        assert!(!first.overlaps(&second), "{first:?} {second:?}");
        assert_eq!(free_offset((500, 500), "far away", &[first]), (8, -7));
    }
}
