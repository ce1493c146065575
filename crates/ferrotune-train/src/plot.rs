//! The plots written at the end of a run: train and eval loss against the step, and for
//! preference tuning the rewards, as PNGs drawn with plotters and an embedded font (no
//! system font lookup).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// (step, loss) points of one curve.
pub type Curve = Vec<(f64, f64)>;

/// The train and eval loss curves of a metrics.jsonl file.
pub fn read_losses(metrics: &Path) -> (Curve, Curve) {
    (
        read_curve(metrics, "loss"),
        read_curve(metrics, "eval_loss"),
    )
}

/// The (step, value) points of one key of a metrics.jsonl file.
pub fn read_curve(metrics: &Path, key: &str) -> Curve {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
        .collect()
}

/// Draws `train` and `eval` loss curves to `out` (800 x 480 PNG).
pub fn plot_losses(train: &[(f64, f64)], eval: &[(f64, f64)], out: &Path) -> Result<(), String> {
    plot_curves("loss", "loss", &[("train", train), ("eval", eval)], out)
}

/// The preference plot of a metrics.jsonl file, when it has rewards: the reward margin
/// and accuracy, train and eval (DPO), or the rewards of desirable and undesirable
/// answers and the KL term (KTO).
pub fn plot_rewards(metrics: &Path, out: &Path) -> Result<bool, String> {
    let keys: &[(&str, &str)] = if !read_curve(metrics, "kl").is_empty() {
        &[
            ("rewards/chosen", "train: desirable reward"),
            ("rewards/rejected", "train: undesirable reward"),
            ("kl", "train: KL term"),
            ("eval_rewards/margins", "eval: reward margin"),
        ]
    } else {
        &[
            ("rewards/margins", "train: reward margin"),
            ("rewards/accuracies", "train: reward accuracy"),
            ("eval_rewards/margins", "eval: reward margin"),
            ("eval_rewards/accuracies", "eval: reward accuracy"),
        ]
    };
    let curves: Vec<(&str, Curve)> = keys
        .iter()
        .map(|(key, name)| (*name, read_curve(metrics, key)))
        .collect();
    if curves.iter().all(|(_, c)| c.is_empty()) {
        return Ok(false);
    }
    let series: Vec<(&str, &[(f64, f64)])> =
        curves.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    plot_curves("rewards", "value", &series, out).map(|()| true)
}

/// Draws named curves against the step to `out` (800 x 480 PNG).
fn plot_curves(
    title: &str,
    y_desc: &str,
    series: &[(&str, &[(f64, f64)])],
    out: &Path,
) -> Result<(), String> {
    // Registering twice is harmless; the font is needed before any text is drawn.
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let all: Vec<&(f64, f64)> = series.iter().flat_map(|(_, c)| c.iter()).collect();
    if all.is_empty() {
        return Err(format!("no {title} to plot"));
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
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_step, (lo - margin)..(hi + margin))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (&(name, points), color) in series.iter().zip(colors.iter().cycle()) {
        let color = *color;
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
