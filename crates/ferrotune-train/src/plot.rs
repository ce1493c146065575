//! The loss plot written at the end of a run: train and eval loss against the step, as a
//! PNG, drawn with plotters and an embedded font (no system font lookup).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// (step, loss) points of one curve.
pub type Curve = Vec<(f64, f64)>;

/// The train and eval loss curves of a metrics.jsonl file.
pub fn read_losses(metrics: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(l) = v["eval_loss"].as_f64() {
            eval.push((step, l));
        }
    }
    (train, eval)
}

/// Draws `train` and `eval` loss curves to `out` (800 x 480 PNG).
pub fn plot_losses(train: &[(f64, f64)], eval: &[(f64, f64)], out: &Path) -> Result<(), String> {
    // Registering twice is harmless; the font is needed before any text is drawn.
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let all: Vec<&(f64, f64)> = train.iter().chain(eval).collect();
    if all.is_empty() {
        return Err("no losses to plot".into());
    }
    let max_step = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let margin = ((hi - lo) * 0.08).max(1e-3);
    let root = BitMapBackend::new(out, (800, 480)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_step, (lo - margin)..(hi + margin))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let series = [("train", train, BLUE), ("eval", eval, RED)];
    for (name, points, color) in series {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
